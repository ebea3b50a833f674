"""Which passes run: the default pipeline per target, and the user's ``passes=`` option on top of it.

``passes`` (a compile option, also ``--passes`` on the CLI) is a list of pass names or a comma-separated
string, in one of two forms:

- **edits of the default**, every entry prefixed: ``"+name"`` appends a pass after the built-ins (in the
  order given; plugins go here), ``"-name"`` drops a built-in. ``passes=["+myplugin"]`` runs the default
  pipeline, then ``myplugin``;
- **an explicit pipeline**, no entry prefixed: exactly these passes, in this order
  (``passes=["dce", "myplugin", "dce"]``).

Mixing the two forms is an OptionError. Names are checked when the PassManager is built (unknown name:
PassError listing the available passes).
"""

from __future__ import annotations

from typing import Any, Iterable

from ..errors import OptionError


def default_pipeline(target: str = "llvm", options: dict[str, Any] | None = None) -> list[str]:
    """The built-in passes for ``target`` and ``options`` (precision, devices, ...), in order."""
    options = options or {}
    # BatchNorm folding before CSE: CSE may merge identical convolutions, whose outputs then have several
    # readers and no longer fold. DCE after the simplifications sweeps what they left unread.
    simplify = ["constant_folding", "noop_elimination", "batchnorm_folding", "cse", "dce"]
    # Later issues extend this: precision (options["precision"]), quantize, memory planning, partitioning
    # (when options["devices"] has several entries).
    return simplify + ["fusion"]


def resolve_pipeline(target: str = "llvm", options: dict[str, Any] | None = None) -> list[str]:
    """The pipeline to run: :func:`default_pipeline` edited (or replaced) by ``options["passes"]``."""
    options = options or {}
    base = default_pipeline(target, options)
    spec = options.get("passes")
    if spec is None:
        return base
    entries = _entries(spec)
    prefixed = [e for e in entries if e[0] in "+-"]
    if prefixed and len(prefixed) != len(entries):
        raise OptionError(f"passes={spec!r} mixes edits ('+name', '-name') with plain names; use either edits "
                          "of the default pipeline or a full explicit list of pass names")
    if not prefixed:
        return entries
    pipeline = list(base)
    for entry in entries:
        name = entry[1:].strip()
        if not name:
            raise OptionError(f"passes={spec!r}: {entry!r} names no pass")
        if entry[0] == "+":
            pipeline.append(name)
        elif name in pipeline:
            pipeline = [p for p in pipeline if p != name]
        else:
            raise OptionError(f"passes={spec!r}: cannot drop {name!r}, the default pipeline for target "
                              f"{target!r} is {base}")
    return pipeline


def _entries(spec: Any) -> list[str]:
    if isinstance(spec, str):
        items: Iterable[Any] = spec.split(",")
    elif isinstance(spec, (list, tuple)):
        items = spec
    else:
        raise OptionError(f"passes= must be a list of pass names or a comma-separated string, not {spec!r}")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise OptionError(f"passes= entries must be pass names (strings), not {item!r}")
        if item.strip():
            out.append(item.strip())
    return out
