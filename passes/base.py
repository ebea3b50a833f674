"""The two things every pass deals with: the :class:`Pass` base class and the :class:`PassContext`.

A pass is a small object with a ``name``, a docstring stating its rules, and three sets of *property names*:

- ``requires``: properties the graph must have before the pass runs (``"shapes_inferred"``, ...);
- ``ensures``: properties the pass establishes (DCE ensures ``"no_dead_code"``);
- ``invalidates``: properties the pass may break *when it changes the graph* (a pass that adds nodes
  without types invalidates ``"shapes_inferred"``). Everything not listed is assumed preserved.

Property names are plain strings; the well-known ones are listed in :data:`PROPERTIES`, and plugins may
invent their own (prefix them with the plugin name to avoid clashes).

``run(graph, ctx)`` mutates the graph in place through the IR's mutation helpers and returns whether it
changed anything. Why it changed something goes into the decision log, ``ctx.log(...)``, which the
compile report and ``graphc inspect`` show: the user must be able to see why graphc fused, placed and
allocated.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..ir.graph import Graph

#: Well-known property names and what they promise.
PROPERTIES: dict[str, str] = {
    "shapes_inferred": "every value has a TensorType with dtype and (possibly symbolic) shape",
    "no_dead_code": "every node contributes to a graph output (DCE has run, nothing was orphaned since)",
    "simplified": "constant folding, CSE and identity elimination have reached a fixed point",
    "fused": "nodes carry their fusion group in node.meta['fusion_group'] (or are FusedKernel nodes)",
    "precision_lowered": "the graph uses the requested precision (fp16/bf16/int8) where it applies",
    "memory_planned": "every value has (arena, offset, size) in its producer's meta",
    "partitioned": "every node has a device in node.meta['device']; Send/Recv pairs cross devices",
}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Decision:
    """One entry of the decision log: which pass decided what, and the data behind it."""

    pass_name: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_name, "message": self.message, "data": dict(self.data)}

    def __str__(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self.data.items())
        return f"[{self.pass_name}] {self.message}" + (f" ({extra})" if extra else "")


@dataclass
class PassContext:
    """Options every pass may read, the properties established so far, and the decision log.

    ``verify``: run the IR verifier after every pass. None (the default) means "if ``debug`` is set or the
    environment variable ``GRAPHC_VERIFY=1``". ``options`` holds the remaining compile options
    (``threads``, pass-specific knobs); read them with :meth:`option`.
    """

    target: str = "llvm"
    precision: str = "fp32"
    devices: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    debug: bool = False
    verify: bool | None = None
    properties: set[str] = field(default_factory=set)
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.properties = set(self.properties)
        if self.verify is None:
            self.verify = bool(self.debug or _env_flag("GRAPHC_VERIFY") or _env_flag("GRAPHC_DEBUG"))

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)

    def log(self, pass_name: str, message: str, **data: Any) -> Decision:
        """Record a decision (``ctx.log("fuse", "fused Conv+Relu", group=3, nodes=["conv1", "relu1"])``)."""
        entry = Decision(pass_name, message, data)
        self.decisions.append(entry)
        return entry

    def decisions_of(self, pass_name: str) -> list[Decision]:
        return [d for d in self.decisions if d.pass_name == pass_name]

    def format_log(self) -> str:
        """The decision log as text, one decision a line (what ``graphc inspect`` prints)."""
        return "\n".join(str(d) for d in self.decisions)


class Pass:
    """Base class of graph passes. Subclasses set ``name`` and the property sets, and override :meth:`run`.

    The docstring of a subclass is its documentation: state what it requires, what it guarantees and the
    rules it applies. Passes should keep no state between runs (one instance may run on many graphs).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    ensures: ClassVar[frozenset[str]] = frozenset()
    invalidates: ClassVar[frozenset[str]] = frozenset()
    #: compile options this pass reads with ``ctx.option(name)``, with their defaults; ``graphc.compile``
    #: accepts exactly these (of every registered pass) besides its own options
    options: ClassVar[dict[str, Any]] = {}

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        """Transform ``graph`` in place; return True when anything changed."""
        raise NotImplementedError(f"pass {self.name or type(self).__name__!r} does not implement run()")

    def log(self, ctx: PassContext, message: str, **data: Any) -> Decision:
        """Shorthand for ``ctx.log(self.name, message, **data)``."""
        return ctx.log(self.name, message, **data)

    @classmethod
    def describe(cls) -> str:
        """The first paragraph of the docstring (used by ``available_passes`` listings)."""
        doc = (cls.__doc__ or "").strip()
        return doc.split("\n\n", 1)[0].replace("\n", " ") if doc else ""

    def __repr__(self) -> str:
        return f"<Pass {self.name or type(self).__name__}>"

