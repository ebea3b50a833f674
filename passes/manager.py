"""The :class:`PassManager`: runs an ordered pipeline of passes over a graph, and checks them.

For each pass, in order, the manager

1. checks that its ``requires`` are among the properties established so far (the context's initial
   ``properties`` plus the ``ensures`` of the passes before it), failing with a PassError that says which
   property is missing and which known pass would establish it. The whole pipeline is checked this way
   before the first pass runs, so a misordered pipeline fails fast;
2. runs it, wrapping any unexpected exception into a PassError that names the pass (the original exception
   is chained as ``__cause__``; graphc's own user-facing errors pass through untouched);
3. records its ``ensures`` and, when it changed the graph, drops its ``invalidates``;
4. with verification on (``verify=True``, or ``ctx.verify``: debug mode / ``GRAPHC_VERIFY=1``), runs
   :func:`graphc.ir.verify` and turns a failure into a PassError naming the pass that broke the IR. It also
   checks that a pass which returned False really left the graph's structure untouched.

Per-pass timings and changed flags are kept in :attr:`PassManager.records` and returned by :meth:`run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import GraphcError, PassError
from ..ir.graph import Graph
from ..ir.verify import verify as verify_graph
from .base import Pass, PassContext
from .registry import get_pass, instantiate

@dataclass
class PassRecord:
    """What one pass did in one run."""

    name: str
    changed: bool
    seconds: float
    verify_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "changed": self.changed, "seconds": self.seconds,
                "verify_seconds": self.verify_seconds}


@dataclass
class PipelineResult:
    """The outcome of :meth:`PassManager.run`: per-pass records and the properties that now hold."""

    records: list[PassRecord] = field(default_factory=list)
    properties: set[str] = field(default_factory=set)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    @property
    def seconds(self) -> float:
        return sum(r.seconds + r.verify_seconds for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        return {"passes": [r.to_dict() for r in self.records], "properties": sorted(self.properties),
                "changed": self.changed, "seconds": self.seconds}


class PassManager:
    """Run ``pipeline`` (pass names, Pass instances or Pass subclasses) in order.

    ``verify``: True/False forces the IR verifier after every pass on/off; None follows ``ctx.verify``.
    ``check_ops``: whether verification also checks that every op is known to the op registry.
    """

    def __init__(self, pipeline: Sequence[Any], *, verify: bool | None = None, check_ops: bool = True):
        self.passes: list[Pass] = [self._resolve(p) for p in pipeline]
        self.verify = verify
        self.check_ops = check_ops
        self.records: list[PassRecord] = []

    @staticmethod
    def _resolve(spec: Any) -> Pass:
        if isinstance(spec, str):
            return get_pass(spec)
        if isinstance(spec, Pass):
            return spec
        if isinstance(spec, type) and issubclass(spec, Pass):
            return instantiate(spec, spec.name or spec.__name__, f"pass class {spec.__name__}")
        raise PassError(f"pipeline entry {spec!r} is neither a pass name, a Pass instance nor a Pass subclass")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def check(self, properties: set[str] | frozenset[str] = frozenset()) -> None:
        """Check statically that every pass's ``requires`` is met by ``properties`` plus earlier ensures."""
        have = set(properties)
        for i, p in enumerate(self.passes):
            self._check_requires(p, have, i)
            have |= p.ensures

    def _check_requires(self, p: Pass, have: set[str], index: int) -> None:
        missing = sorted(set(p.requires) - have)
        if not missing:
            return
        hints = []
        for prop in missing:
            providers = _providers(prop)
            hints.append(f"{prop!r} (established by: {', '.join(providers)})" if providers
                         else f"{prop!r} (no known pass establishes it)")
        raise PassError(f"pass {p.name!r} (position {index} in pipeline {self.names}) requires "
                        f"{'; '.join(hints)}, which neither the input graph nor an earlier pass established (or a pass "
                        "since invalidated it) "
                        f"(properties so far: {sorted(have) or 'none'})")

    def run(self, graph: Graph, ctx: PassContext | None = None) -> PipelineResult:
        """Run every pass on ``graph`` in place. ``ctx.properties`` is updated as passes establish them."""
        ctx = ctx if ctx is not None else PassContext()
        do_verify = ctx.verify if self.verify is None else self.verify
        self.check(ctx.properties)
        self.records = []
        if do_verify:
            self._verify(graph, None)
        for index, p in enumerate(self.passes):
            self._check_requires(p, ctx.properties, index)
            before = _fingerprint(graph) if do_verify else None
            start = time.perf_counter()
            try:
                changed = p.run(graph, ctx)
            except GraphcError as exc:
                if hasattr(exc, "add_note"):
                    exc.add_note(f"(raised by graphc pass {p.name!r})")
                raise
            except Exception as exc:
                raise PassError(f"pass {p.name!r} failed on graph {graph.name!r}: "
                                f"{type(exc).__name__}: {exc}") from exc
            seconds = time.perf_counter() - start
            if not isinstance(changed, bool):
                raise PassError(f"pass {p.name!r} returned {changed!r}; run() must return True (changed the "
                                "graph) or False")
            record = PassRecord(p.name, changed, seconds)
            if do_verify:
                start = time.perf_counter()
                self._verify(graph, p)
                if not changed and _fingerprint(graph) != before:
                    raise PassError(f"pass {p.name!r} returned False (no change) but modified the graph "
                                    f"{graph.name!r}; it must return True when it changes anything")
                record.verify_seconds = time.perf_counter() - start
            if changed:
                ctx.properties -= set(p.invalidates)
            ctx.properties |= set(p.ensures)
            self.records.append(record)
        return PipelineResult(list(self.records), set(ctx.properties))

    def _verify(self, graph: Graph, p: Pass | None) -> None:
        try:
            verify_graph(graph, check_ops=self.check_ops)
        except PassError as exc:  # VerificationError is a PassError
            if p is None:
                raise PassError(f"the IR was already invalid before the pass pipeline started: {exc}") from exc
            raise PassError(f"pass {p.name!r} left the IR invalid: {exc}") from exc

    def __repr__(self) -> str:
        return f"PassManager({self.names})"


def _providers(prop: str) -> list[str]:
    """Names of known passes whose ``ensures`` include ``prop`` (for error messages; imports nothing new)."""
    from .registry import _REGISTRY

    return sorted(n for n, f in _REGISTRY.items() if prop in getattr(f, "ensures", ()))


def _fingerprint(graph: Graph) -> tuple:
    """A cheap structural summary: which nodes exist, in which order, wired to which values.

    It holds the objects themselves (compared by identity), so a freed node's id cannot be reused.
    """
    parts: list = [tuple(graph.inputs), tuple(graph.outputs), tuple(graph.initializers.values())]
    for node in graph.nodes:
        parts.append((node, node.op_type, node.domain, tuple(node.inputs), tuple(node.outputs), tuple(node.attrs)))
        parts.extend(_fingerprint(sub) for sub in node.subgraphs())
    return tuple(parts)


__all__ = ["PassManager", "PassRecord", "PipelineResult"]
