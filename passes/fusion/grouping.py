"""The grouping algorithm of the fusion pass (see the package docstring for the rules).

Groups start as one node each. Every producer -> consumer edge of the root graph is a merge candidate; edges are
tried in topological order of the consumer (for one consumer: edges from groups with an anchor first, then the
most recent producer first), and a merge of the producer's group A with the consumer's group B happens when
every rule accepts the union. Refused edges are retried until a sweep merges nothing (a value read twice by a
GELU is refused until both readers sit in one group). Groups stay convex (acyclic) after each merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...ir.graph import Graph, Node, node_reads
from .rules import (COMPLEX, ELEMENTWISE, INJECTIVE, OPAQUE, REDUCTION, describe, fusion_class, numel,
                    reread_factor, row_signature)


@dataclass(eq=False)
class Group:
    members: set[Node]
    first: Node
    rules: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class Verdict:
    ok: bool
    code: str  # the accepting rule, or the refusal reason code
    text: str = ""


@dataclass
class Grouping:
    groups: list[Group]
    group_of: dict[Node, Group]
    reasons: dict[tuple[Node, Node, int], Verdict]  # (producer, consumer, id(value)) -> last verdict
    classes: dict[Node, str]
    order: list[Node]


class Grouper:
    def __init__(self, graph: Graph, flops: dict[Node, int], max_inputs: int = 8, max_reread: float = 4.0):
        self.graph = graph
        self.order = list(graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.order)}
        self.cls = {n: fusion_class(n) for n in self.order}
        self.flops = flops
        self.max_inputs = max_inputs
        self.max_reread = max_reread
        self.succ: dict[Node, set[Node]] = {n: set() for n in self.order}
        self.edges: list[tuple[Node, Node, Any]] = []
        for n in self.order:
            seen: set[tuple[int, int]] = set()
            for v in node_reads(n):
                p = v.producer
                if p is not None and p.graph is graph and p in self.pos and (id(p), id(v)) not in seen:
                    seen.add((id(p), id(v)))
                    self.succ[p].add(n)
                    self.edges.append((p, n, v))
        # values that must be written: graph outputs, and outer values a subgraph returns directly
        self.pinned = {id(v) for v in graph.outputs}
        for node in graph.walk():
            for sub in node.subgraphs():
                self.pinned.update(id(v) for v in sub.outputs)
        self.group_of: dict[Node, Group] = {n: Group({n}, n) for n in self.order}
        self.rows = {n: row_signature(n) for n in self.order if self.cls[n] == REDUCTION}
        self.reasons: dict[tuple[Node, Node, int], Verdict] = {}

    # -- driver -----------------------------------------------------------------------------------------------
    def run(self) -> Grouping:
        pending = sorted(self.edges, key=self._priority)
        while pending:
            refused = []
            merged = False
            for p, n, v in pending:
                a, b = self.group_of[p], self.group_of[n]
                if a is b:
                    self.reasons[(p, n, id(v))] = Verdict(True, "same group")
                    continue
                verdict = self.check(a, b, p, n, v)
                self.reasons[(p, n, id(v))] = verdict
                if verdict.ok:
                    self._merge(a, b, verdict.code)
                    merged = True
                else:
                    refused.append((p, n, v))
            if not merged:
                break
            pending = refused
        groups = []
        seen: set[int] = set()
        for n in self.order:
            g = self.group_of[n]
            if id(g) not in seen:
                seen.add(id(g))
                groups.append(g)
        return Grouping(groups, self.group_of, self.reasons, self.cls, self.order)

    def _priority(self, edge) -> tuple:
        p, n, _ = edge
        anchored = self.cls[p] in (COMPLEX, REDUCTION)
        return (self.pos[n], 0 if anchored else 1, -self.pos[p])

    def _merge(self, a: Group, b: Group, rule: str) -> None:
        a.members |= b.members
        a.first = min(a.first, b.first, key=self.pos.__getitem__)
        for r in b.rules + [rule]:
            if r not in a.rules:
                a.rules.append(r)
        for m in b.members:
            self.group_of[m] = a

    # -- the rules --------------------------------------------------------------------------------------------
    def check(self, a: Group, b: Group, p: Node, n: Node, v) -> Verdict:
        """May group ``a`` (holding producer ``p``) and group ``b`` (holding consumer ``n``) become one kernel?"""
        cls = self.cls
        members = a.members | b.members
        for node in (p, n):
            if cls[node] == OPAQUE:
                return Verdict(False, "opaque", f"{describe(node)} is opaque to fusion (control flow, data-dependent "
                                                 "shape, side effects or already fused)")
        # every value crossing between the two groups must be read only inside the union, and not be an output
        for src, dst in ((a, b), (b, a)):
            for m in dst.members:
                for x in m.inputs:
                    if x is None or x.producer not in src.members:
                        continue
                    if id(x) in self.pinned:
                        return Verdict(False, "graph_output", f"{x.name} is a graph output and must be written")
                    outside = [u for u, _ in x.uses if u not in members]
                    if outside:
                        return Verdict(False, "multi_consumer",
                                       f"{x.name} is also read by {describe(outside[0])} outside the group"
                                       + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""))
        complexes = [m for m in members if cls[m] == COMPLEX]
        reductions = [m for m in members if cls[m] == REDUCTION]
        if len(complexes) > 1:
            c1, c2 = sorted(complexes, key=self.pos.__getitem__)[:2]
            return Verdict(False, "complex_complex", f"{describe(c1)} and {describe(c2)} are both complex ops "
                                                     "(Conv/MatMul/Gemm); one kernel holds at most one")
        rule = None
        if complexes:
            c = complexes[0]
            verdict = self._check_complex(c, members, reductions)
            if not verdict.ok:
                return verdict
            downstream = self._reachable_within(c, members)
            joining = b.members if c in a.members else a.members
            rule = "complex+epilogue" if joining & downstream else "epilogue-operand"

        if len(reductions) > 1:
            sigs = {self.rows.get(r) for r in reductions}
            if None in sigs or len(sigs) > 1:
                r1, r2 = sorted(reductions, key=self.pos.__getitem__)[:2]
                return Verdict(False, "reduction_mismatch",
                               f"{describe(r1)} and {describe(r2)} do not reduce the same axes of same-shaped "
                               "tensors (only such reductions share a row-wise kernel)")
        for r in reductions:
            verdict = self._check_reread(r, members)
            if not verdict.ok:
                return verdict
        verdict = self._check_broadcast(a, b, members)
        if not verdict.ok:
            return verdict
        inputs = self.external_inputs(members)
        if len(inputs) > self.max_inputs:
            return Verdict(False, "arity_cap", f"the kernel would read {len(inputs)} inputs "
                                               f"(> fusion_max_inputs={self.max_inputs})")
        through = self._path_outside(a, b, members) or self._path_outside(b, a, members)
        if through is not None:
            return Verdict(False, "cycle", f"would create a cycle: a path leaves the group through "
                                           f"{describe(through)} and comes back")
        if rule is None:
            ra = any(cls[m] == REDUCTION for m in a.members)
            rb = any(cls[m] == REDUCTION for m in b.members)
            if ra and rb:
                rule = "row-reduction"
            elif ra:
                rule = "reduction+epilogue"
            elif rb:
                rule = "reduction+prologue"
            elif all(cls[m] == ELEMENTWISE for m in members):
                rule = "elementwise-chain"
            else:
                rule = "injective-chain"
        return Verdict(True, rule)

    def _check_complex(self, c: Node, members: set[Node], reductions: list[Node]) -> Verdict:
        """A complex op takes an elementwise epilogue (and data-movement ops preparing its operands), nothing else."""
        cls = self.cls
        for x in c.inputs:
            if x is not None and x.producer in members:
                return Verdict(False, "complex_prologue", f"{describe(x.producer)} would run before "
                                                          f"{describe(c)} in its kernel; complex ops take no prologue")
        if reductions:
            return Verdict(False, "complex_reduction", f"{describe(reductions[0])} is a reduction; "
                                                       f"{describe(c)} takes only an elementwise epilogue")
        downstream = self._reachable_within(c, members)
        for m in members:
            if m is c:
                continue
            if m in downstream:
                if cls[m] != ELEMENTWISE:
                    return Verdict(False, "complex_epilogue",
                                   f"{describe(m)} is {cls[m]}; {describe(c)} takes only an elementwise epilogue")
            elif cls[m] != INJECTIVE or self.flops.get(m, 0) > 0:
                return Verdict(False, "complex_side", f"{describe(m)} computes an epilogue operand of {describe(c)}; "
                                                      "only data-movement ops may join a complex kernel that way")
        return Verdict(True, "complex+epilogue")

    def _check_reread(self, r: Node, members: set[Node]) -> Verdict:
        factor = reread_factor(r)
        if factor <= 1:
            return Verdict(True, "")
        for x in r.inputs:
            if x is None or x.producer not in members:
                continue
            upstream = self._reachable_within(x.producer, members, backwards=True)
            cost = sum(self.flops.get(m, 0) for m in upstream)
            if cost > 0:
                return Verdict(False, "recompute", f"{describe(r)} reads each input element {factor:g} times, "
                                                   f"so {describe(x.producer)} would be recomputed {factor:g} times")
            if factor > self.max_reread:
                return Verdict(False, "reread", f"{describe(r)} reads each input element {factor:g} times "
                                                f"(> fusion_max_reread={self.max_reread:g})")
        return Verdict(True, "")

    def _check_broadcast(self, a: Group, b: Group, members: set[Node]) -> Verdict:
        """A flop-bearing producer broadcast into a larger consumer would be recomputed per output element.

        Values computed after a reduction in a row-wise kernel are per-row values and are exempt.
        """
        for src, dst in ((a, b), (b, a)):
            if any(self.cls[m] == REDUCTION for m in src.members):
                continue
            for m in dst.members:
                if self.cls[m] == REDUCTION:
                    continue
                out = numel(m.outputs[0]) if m.outputs else None
                for x in m.inputs:
                    if x is None or x.producer not in src.members:
                        continue
                    size = numel(x)
                    if out is None or size is None or size >= out:
                        continue
                    upstream = self._reachable_within(x.producer, src.members, backwards=True)
                    if sum(self.flops.get(u, 0) for u in upstream) > 0:
                        return Verdict(False, "recompute",
                                       f"{describe(m)} broadcasts {x.name} ({size} elements) to {out}; "
                                       f"{describe(x.producer)} would be recomputed {out // max(size, 1)} times")
        return Verdict(True, "")

    # -- graph helpers ----------------------------------------------------------------------------------------
    def external_inputs(self, members) -> list:
        out: dict[int, Any] = {}
        for m in sorted(members, key=self.pos.__getitem__):
            for x in m.inputs:
                if x is not None and x.producer not in members:
                    out.setdefault(id(x), x)
        return list(out.values())

    def _reachable_within(self, start: Node, members: set[Node], backwards: bool = False) -> set[Node]:
        seen = {start}
        stack = [start]
        while stack:
            node = stack.pop()
            nxt = ([x.producer for x in node.inputs if x is not None] if backwards else self.succ[node])
            for m in nxt:
                if m in members and m not in seen:
                    seen.add(m)
                    stack.append(m)
        return seen

    def _path_outside(self, src: Group, dst: Group, members: set[Node]) -> Node | None:
        """A node outside ``members`` on a path from ``src`` to ``dst``, or None."""
        limit = max(self.pos[m] for m in dst.members)
        stack = [s for m in src.members for s in self.succ[m] if s not in members]
        seen: set[Node] = set()
        while stack:
            node = stack.pop()
            if node in seen or self.pos[node] > limit:
                continue
            seen.add(node)
            for s in self.succ[node]:
                if s in dst.members:
                    return node
                if s not in members:
                    stack.append(s)
        return None
