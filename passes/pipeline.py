"""Which passes run: the default pipeline per target, and the user's ``passes=`` option on top of it.

``passes`` (a compile option, also ``--passes`` on the CLI) is a list of pass names or a comma-separated
string, in one of two forms:

- **edits of the default**, every entry prefixed: ``"+name"`` adds a pass after the built-in rewrites (in
  the order given; plugins go here) and before the lowering passes (memory planning), ``"-name"`` drops a
  built-in. ``passes=["+myplugin"]`` runs the default rewrites, then ``myplugin``, then memory planning;
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
    # Precision marks the dot-product nodes before fusion, so the fused kernels carry the marks. Partitioning
    # runs when several devices are given, on the fused kernels. Memory planning stays last: it plans the
    # kernels that will run.
    precision = ["precision"] if options.get("precision", "fp32") != "fp32" else []
    # Tensor splitting runs just before: it cuts a kernel too big for a device (or unbalancing the stages).
    partition = ["tensor_split", "partitioning"] if len(options.get("devices") or []) > 1 else []
    return simplify + precision + ["fusion"] + partition + ["memory_planning"]


#: passes that plan the final program rather than rewrite the graph; they run after everything else
LOWERING_PASSES = ("tensor_split", "partitioning", "memory_planning")


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
            # added passes transform the graph: they go before the lowering passes that plan what will run
            lowering = [i for i, p in enumerate(pipeline) if p in LOWERING_PASSES]
            pipeline.insert(lowering[0] if lowering else len(pipeline), name)
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
