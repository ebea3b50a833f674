"""Memory planning: every intermediate of the kernel schedule gets an offset in one arena.

Requires: ``shapes_inferred``. Ensures: ``memory_planned``. Invalidates: nothing (it may reorder
``graph.nodes``, always into another topological order). Runs last in the default pipeline, after fusion, so
that it plans the kernels that will run (a fused kernel's intermediates live inside the kernel).

Rules:

- **schedule** = ``graph.nodes``, one step per top-level node (a FusedKernel, an If/Loop, a plain op);
- **planned values**: outputs of top-level nodes whose type is a tensor with a known dtype and a shape whose
  dims are ints or symbols of the graph inputs' shapes. Not planned: graph inputs, graph outputs, weights
  (they have buffers of their own), values inside subgraphs (If/Loop bodies, FusedKernel bodies: they live
  inside their kernel), values of unknown or data-dependent size (listed in the log as ``unplanned``);
- **liveness**: a value lives from its producer's step to its last reader's step (a read inside a subgraph or
  a fused kernel's body counts for the owning node); a value nobody reads lives at its producer's step;
- **in place**: a node whose op is ELEMENTWISE (or a FusedKernel of kind ``elementwise``) may write an
  output into the buffer of an input that dies at this step, is planned, has the output's dtype and shape,
  and is not already taken by another output of the node. Element *i* of the output depends only on element
  *i* of that input, so overwriting it is safe for any kernel that reads before it writes each element;
- **LOAD** (lower bound) = the most bytes live at one step (in-place pairs counted once); the plan also
  records the LOAD without in-place reuse and the naive total (no reuse at all);
- **placement**: several greedy heuristics (by size descending, by start step, by size x lifetime, by
  lifetime), each placing buffers one by one best-fit into the gaps between the already-placed buffers whose
  lifetimes meet it; the smallest arena wins; it stops early once a heuristic reaches LOAD;
- **schedule choice**: besides the given order, two memory-aware list schedulers (ready node that grows the
  live bytes least; ready node that continues the most recent value: depth-first, which finishes a branch
  before starting the next) are measured too; a new order is kept only if it lowers LOAD, and it is checked
  to be topological before ``graph.nodes`` is replaced;
- **alignment**: 64 bytes (every offset; sizes are rounded up for LOAD and placement);
- **symbolic dims** are bound to 1 for planning; each buffer records its size as a monomial of the symbols,
  so ``MemoryPlan.at({"N": 8})`` rescales exactly when all sizes share one monomial and re-plans (cheap, no
  recompile) otherwise (see graphc/plan/memory.py).

Output: ``node.meta["buffers"] = {value name: {"arena": 0, "offset", "size", "start", "end", "in_place_of",
...}}`` (a :class:`~graphc.plan.memory.Buffer` as a dict) on every producer, and one decision with
``summary=True`` holding the plan's totals (arena, LOAD, naive, heuristic, ...).
:func:`graphc.plan.memory.memory_plan_of` rebuilds the :class:`MemoryPlan` from the two (``report()["memory"]``,
``graphc inspect --html`` and the arena execution of the reference backend use it); the buffers stay out of
the decision log so that the log stays readable. Returns True only when it reordered the schedule.
"""

from __future__ import annotations

from typing import Any

from ..ir.graph import Graph, Node, node_reads
from ..ir.types import TensorType
from ..plan.memory import ALIGNMENT, Buffer, MemoryPlan, _slots, load_of, place_buffers
from .base import Pass, PassContext
from .registry import register_pass


MAX_LOGGED_IN_PLACE = 20  # in-place reuses logged one by one; the rest are counted in one decision


def _size_monomial(t: Any, symbols: set[str]) -> tuple[int, dict[str, int]] | None:
    """(bytes per unit, {symbol: power}) of a tensor type, or None when it cannot be planned."""
    if not isinstance(t, TensorType) or t.shape is None or t.dtype is None:
        return None
    n, mono = int(t.dtype.itemsize), {}
    for d in t.shape:
        if isinstance(d, int):
            n *= d
        elif isinstance(d, str) and d in symbols:
            mono[d] = mono.get(d, 0) + 1
        else:
            return None
    return n, mono


def _elementwise(node: Node) -> bool:
    if node.domain == "graphc" and node.op_type == "FusedKernel":
        return node.attrs.get("kind") == "elementwise"
    from ..ops import FusionClass, lookup

    opdef = lookup(node.domain, node.op_type)
    return opdef is not None and getattr(opdef, "fusion", None) == FusionClass.ELEMENTWISE


def _input_symbols(graph: Graph) -> set[str]:
    return {d for v in graph.inputs if isinstance(v.type, TensorType) and v.type.shape
            for d in v.type.shape if isinstance(d, str)}


class _Problem:
    """The graph facts planning needs, independent of the order: which values are planned and their sizes."""

    def __init__(self, graph: Graph, bindings: dict[str, int] | None = None):
        self.graph = graph
        symbols = _input_symbols(graph)
        excluded = {id(v) for v in graph.outputs} | {id(v) for v in graph.inputs}
        excluded |= {id(v) for v in graph.initializers.values()}
        self.sizes: dict[int, tuple[int, dict[str, int]]] = {}
        self.values: dict[int, Any] = {}
        self.unplanned: list[str] = []
        for node in graph.nodes:
            for out in node.outputs:
                if out is None or id(out) in excluded:
                    continue
                sm = _size_monomial(out.type, symbols)
                if sm is None:
                    self.unplanned.append(out.name)
                    continue
                self.sizes[id(out)] = sm
                self.values[id(out)] = out
        self.bindings = dict(bindings or {})
        self.reads = {node: [v for v in node_reads(node)] for node in graph.nodes}

    def nbytes(self, vid: int) -> int:
        n, mono = self.sizes[vid]
        for s, p in mono.items():
            n *= int(self.bindings.get(s, 1)) ** p
        return n

    def plan(self, order: list[Node]) -> MemoryPlan:
        plan = place_buffers(self.buffers(order), len(order), ALIGNMENT)
        plan.bindings = dict(self.bindings)
        return plan

    def load(self, order: list[Node]) -> int:
        """LOAD of ``order`` without placing anything (in-place pairs counted once)."""
        slots = _slots(self.buffers(order), ALIGNMENT)
        return load_of(((s.size, s.start, s.end) for s in slots), len(order))

    def buffers(self, order: list[Node]) -> list[Buffer]:
        step = {node: i for i, node in enumerate(order)}
        last: dict[int, int] = {}
        for node in order:
            for v in self.reads[node]:
                if id(v) in self.sizes:
                    last[id(v)] = max(last.get(id(v), -1), step[node])
        buffers: list[Buffer] = []
        for i, node in enumerate(order):
            taken: set[int] = set()
            kind = node.attrs.get("kind") if node.op_type == "FusedKernel" else None
            op = f"{node.op_type}:{kind}" if kind else node.op_type
            for out in node.outputs:
                if out is None or id(out) not in self.sizes:
                    continue
                n, mono = self.sizes[id(out)]
                in_place = None
                if _elementwise(node):
                    for v in node.inputs:
                        if (v is not None and id(v) in self.sizes and id(v) not in taken and last.get(id(v)) == i
                                and v.type.dtype == out.type.dtype and v.type.shape == out.type.shape):
                            in_place = v
                            taken.add(id(v))
                            break
                buffers.append(Buffer(out.name, self.nbytes(id(out)), i, max(last.get(id(out), i), i),
                                      in_place_of=in_place.name if in_place is not None else None,
                                      bytes_per_unit=n, symbols=dict(mono), op=op, dtype=str(out.type.dtype)))
        return buffers

    # -- schedule candidates ----------------------------------------------------------------------------------
    def list_schedule(self, mode: str) -> list[Node]:
        """A topological order chosen greedily: ``"min_growth"`` runs the ready node that grows the live bytes
        least; ``"depth_first"`` the one reading the most recently produced value. Ties: the given order."""
        nodes = self.graph.nodes
        pos = {n: i for i, n in enumerate(nodes)}
        producer_of = {id(o): n for n in nodes for o in n.outputs if o is not None}
        preds: dict[Node, set[Node]] = {n: set() for n in nodes}
        succs: dict[Node, set[Node]] = {n: set() for n in nodes}
        readers: dict[int, int] = {}
        for n in nodes:
            for v in set(map(id, self.reads[n])):
                p = producer_of.get(v)
                if p is not None and p is not n:
                    preds[n].add(p)
                    succs[p].add(n)
                if v in self.sizes:
                    readers[v] = readers.get(v, 0) + 1
        remaining = dict(readers)
        produced_at: dict[int, int] = {}
        indeg = {n: len(preds[n]) for n in nodes}
        ready = [n for n in nodes if indeg[n] == 0]
        order: list[Node] = []

        def growth(n: Node) -> int:
            alloc = sum(self.nbytes(id(o)) for o in n.outputs if o is not None and id(o) in self.sizes)
            freed = sum(self.nbytes(v) for v in set(map(id, self.reads[n])) if remaining.get(v) == 1)
            return alloc - freed

        def recency(n: Node) -> int:
            return max((produced_at.get(id(v), -1) for v in self.reads[n]), default=-1)

        while ready:
            if mode == "min_growth":
                best = min(ready, key=lambda n: (growth(n), pos[n]))
            else:
                best = min(ready, key=lambda n: (-recency(n), pos[n]))
            ready.remove(best)
            order.append(best)
            t = len(order) - 1
            for o in best.outputs:
                if o is not None:
                    produced_at[id(o)] = t
            for v in set(map(id, self.reads[best])):
                if v in remaining:
                    remaining[v] -= 1
            for s in succs[best]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    ready.append(s)
        if len(order) != len(nodes):  # a cycle cannot happen in a verified graph; keep the given order
            return list(nodes)
        return order


def is_topological(graph: Graph, order: list[Node]) -> bool:
    if len(order) != len(graph.nodes) or set(map(id, order)) != set(map(id, graph.nodes)):
        return False
    step = {id(n): i for i, n in enumerate(order)}
    for n in order:
        for v in node_reads(n):
            p = v.producer
            if p is not None and id(p) in step and p is not n and step[id(p)] > step[id(n)]:
                return False
    return True


def plan_memory(graph: Graph, bindings: dict[str, int] | None = None,
                reorder: bool = True) -> tuple[MemoryPlan, list[Node], dict[str, Any]]:
    """Plan ``graph``'s top-level intermediates; returns (plan, chosen order, info about the candidates)."""
    problem = _Problem(graph, bindings)
    original = list(graph.nodes)
    candidates = [("given", original)]
    if reorder and len(original) > 2:
        for mode in ("min_growth", "depth_first"):
            order = problem.list_schedule(mode)
            if order != original and is_topological(graph, order):
                candidates.append((mode, order))
    # choose the order by LOAD (cheap: no placement); a new order must lower it strictly
    loads = [(problem.load(order), i) for i, (_, order) in enumerate(candidates)]
    best = min(loads)[1]
    name, order = candidates[best]
    plan = problem.plan(order)
    info = {"schedule": name, "unplanned": problem.unplanned,
            "candidates": {n: {"lower_bound_bytes": load} for (n, _), (load, _) in zip(candidates, loads)}}
    return plan, order, info


@register_pass
class MemoryPlanning(Pass):
    """Memory planning: liveness over the schedule, in-place reuse, and an arena offset for every intermediate.

    Requires ``shapes_inferred``; ensures ``memory_planned``. See the module docstring for the rules.
    """

    name = "memory_planning"
    requires = frozenset({"shapes_inferred"})
    ensures = frozenset({"memory_planned"})
    options = {"memory_reorder": True, "execute_in_arena": False}

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        plan, order, info = plan_memory(graph, reorder=bool(ctx.option("memory_reorder", True)))
        changed = order != graph.nodes
        if changed:
            if not is_topological(graph, order):  # never expected: list_schedule only emits ready nodes
                order, changed = list(graph.nodes), False
                plan, _, info = plan_memory(graph, reorder=False)
            else:
                before = info["candidates"]["given"]
                graph.nodes = order
                self.log(ctx, f"reordered the schedule ({info['schedule']}): LOAD "
                              f"{before['lower_bound_bytes']:,} -> {plan.lower_bound_bytes:,} bytes",
                         schedule=info["schedule"], candidates=info["candidates"])
        problems = plan.check()
        if problems:  # a bug in the placement; refuse to hand a wrong plan to a backend
            from ..errors import PassError

            raise PassError("memory plan has overlapping buffers: " + "; ".join(problems[:5]))
        by_value = plan.by_value()
        for node in graph.nodes:
            slots = {o.name: {"arena": 0, **by_value[o.name].to_dict()}
                     for o in node.outputs if o is not None and o.name in by_value}
            if slots:
                node.meta["buffers"] = slots
            else:
                node.meta.pop("buffers", None)
        in_place = [b for b in plan.buffers if b.in_place_of]
        for b in in_place[:MAX_LOGGED_IN_PLACE]:
            self.log(ctx, f"{b.value} reuses the buffer of {b.in_place_of} in place ({b.op})",
                     value=b.value, in_place_of=b.in_place_of, bytes=b.size)
        if len(in_place) > MAX_LOGGED_IN_PLACE:
            self.log(ctx, f"... and {len(in_place) - MAX_LOGGED_IN_PLACE} more in-place reuses",
                     more_in_place=len(in_place) - MAX_LOGGED_IN_PLACE)
        ratio = plan.arena_bytes / plan.lower_bound_bytes if plan.lower_bound_bytes else 1.0
        self.log(ctx, f"arena {plan.arena_bytes:,} bytes for {len(plan.buffers)} buffers; LOAD "
                      f"{plan.lower_bound_bytes:,} (ratio {ratio:.3f}); naive {plan.naive_bytes:,}; "
                      f"{plan.heuristic}; {plan.in_place_count} in place",
                 summary=True, arena_bytes=plan.arena_bytes, lower_bound_bytes=plan.lower_bound_bytes,
                 naive_bytes=plan.naive_bytes, heuristic=plan.heuristic, in_place=plan.in_place_count,
                 schedule=info["schedule"], unplanned=info["unplanned"], tried=plan.tried,
                 rescale=plan.rescale, alignment=plan.alignment, steps=plan.steps,
                 load_without_inplace_bytes=plan.load_without_inplace_bytes)
        return changed


__all__ = ["MemoryPlanning", "plan_memory", "is_topological"]
