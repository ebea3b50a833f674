"""Buffer placement: where every intermediate of the schedule lives in the arena.

A :class:`MemoryPlan` is what the ``memory_planning`` pass decides (passes/memory_planning.py) and what a
backend reads: one :class:`Buffer` per planned value (its size, its lifetime in schedule steps, its offset in
the single arena of the device), the arena size, and the lower bound LOAD it is measured against.

Terms:

- **step**: the index of a kernel in the schedule (``graph.nodes``). A buffer lives over the closed interval
  ``[start, end]``: from its producer's step to its last reader's step. Two buffers whose intervals share a
  step must not overlap in the arena; a buffer *in place of* another (``in_place_of``) takes its memory at
  the step where the other dies (an elementwise kernel overwriting a dead input), so the two form one *slot*.
- **LOAD** (``lower_bound_bytes``): the most bytes of slots live at one step, each size rounded up to the
  alignment. No placement of these slots can use a smaller arena. ``load_without_inplace_bytes`` is the same
  measure counting an in-place output and its input separately (the textbook LOAD of the schedule).
- **naive** (``naive_bytes``): every planned value in its own buffer, nothing reused.

Only intermediates are planned: graph inputs, graph outputs and weights live in buffers of their own (the
caller owns inputs and outputs; weights are read-only and shared by runs). Values whose size cannot be
written as a monomial of the graph inputs' symbolic dims (data-dependent shapes, sequences) are not planned
either; the pass lists them.

**Symbolic dims.** The plan is made with every symbolic dim bound to 1, and each buffer records its size as
``bytes_per_unit`` x a monomial of the symbols (``symbols={"N": 1}`` means ``bytes_per_unit * N``).
:meth:`MemoryPlan.at` gives the plan for concrete bindings (``plan.at({"N": 8})``):

- when every planned buffer scales with the *same* monomial (the usual batch case: every intermediate is a
  multiple of ``N``), offsets, sizes, arena and LOAD are multiplied by that monomial's value. This is exact:
  every pair of buffers that did not overlap still does not, and the ratio arena/LOAD is unchanged;
  ``rescale == "exact"``;
- otherwise (mixed monomials, e.g. ``N*S*S`` attention scores next to ``N*S*D`` activations, or small
  constant-size shape tensors next to batch-sized activations) scaling would make buffers collide, so
  :meth:`at` **re-plans** the same slots and lifetimes with the bound sizes (``rescale == "replanned"``). This
  runs the placement heuristics again (milliseconds for hundreds of buffers) and needs no recompile: the
  schedule, lifetimes and in-place decisions do not depend on the sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable

ALIGNMENT = 64
LARGE = 3000  # slots beyond which place_buffers tries only the first two heuristics


def align(n: int, alignment: int = ALIGNMENT) -> int:
    return -(-int(n) // alignment) * alignment


def monomial_value(symbols: dict[str, int], bindings: dict[str, int]) -> int:
    """The value of ``prod(sym ** power)`` under ``bindings`` (every symbol must be bound)."""
    out = 1
    for sym, power in symbols.items():
        if sym not in bindings:
            raise KeyError(sym)
        out *= int(bindings[sym]) ** int(power)
    return out


@dataclass
class Buffer:
    """One planned value: ``size`` bytes at ``offset`` in the arena, live over steps ``[start, end]``."""

    value: str
    size: int
    start: int
    end: int
    offset: int = -1
    in_place_of: str | None = None  # the value whose (dead) buffer this one reuses at step ``start``
    bytes_per_unit: int = 0  # size = bytes_per_unit * prod(bindings[s] ** p for s, p in symbols.items())
    symbols: dict[str, int] = field(default_factory=dict)
    op: str = ""  # producer op type (or fused kernel kind), for pictures
    dtype: str = ""

    def __post_init__(self) -> None:
        if not self.bytes_per_unit and not self.symbols:
            self.bytes_per_unit = self.size

    def size_at(self, bindings: dict[str, int]) -> int:
        return self.bytes_per_unit * monomial_value(self.symbols, bindings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Buffer":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    arena_bytes: int
    lower_bound_bytes: int
    naive_bytes: int
    heuristic: str
    alignment: int = ALIGNMENT
    steps: int = 0  # length of the schedule
    load_without_inplace_bytes: int = 0
    bindings: dict[str, int] = field(default_factory=dict)  # {} = every symbolic dim taken as 1
    rescale: str = "static"  # "static" (no symbols), "exact" (one monomial), "replan" (mixed: at() re-plans)
    tried: dict[str, int] = field(default_factory=dict)  # arena bytes per heuristic tried

    # -- queries -------------------------------------------------------------------------------------------
    def buffer(self, value: str) -> Buffer | None:
        for b in self.buffers:
            if b.value == value:
                return b
        return None

    def by_value(self) -> dict[str, Buffer]:
        return {b.value: b for b in self.buffers}

    @property
    def in_place_count(self) -> int:
        return sum(1 for b in self.buffers if b.in_place_of)

    @property
    def symbols(self) -> list[str]:
        return sorted({s for b in self.buffers for s in b.symbols})

    def check(self) -> list[str]:
        """Overlaps between buffers live at the same step (empty when the plan is valid)."""
        problems = []
        slots = _slots(self.buffers)
        for i, a in enumerate(slots):
            for b in slots[i + 1:]:
                if a.start <= b.end and b.start <= a.end and \
                        a.offset < b.offset + b.size and b.offset < a.offset + a.size:
                    problems.append(f"{a.members[0]} [{a.offset}, {a.offset + a.size}) steps {a.start}..{a.end} "
                                    f"overlaps {b.members[0]} [{b.offset}, {b.offset + b.size}) "
                                    f"steps {b.start}..{b.end}")
        for b in self.buffers:
            if b.offset < 0 or b.offset % self.alignment or b.offset + b.size > self.arena_bytes:
                problems.append(f"{b.value}: offset {b.offset} size {b.size} outside the arena "
                                f"({self.arena_bytes} bytes, alignment {self.alignment})")
        return problems

    # -- symbolic dims -------------------------------------------------------------------------------------
    def at(self, bindings: dict[str, int]) -> "MemoryPlan":
        """The plan for concrete values of the symbolic dims (see the module docstring for when it re-plans).

        Raises KeyError naming a symbol that ``bindings`` leaves unbound.
        """
        bindings = {k: int(v) for k, v in bindings.items()}
        if not self.symbols:
            return self
        monomials = {tuple(sorted(b.symbols.items())) for b in self.buffers}
        if len(monomials) == 1:
            factor = monomial_value(dict(next(iter(monomials))), bindings)
            buffers = [replace(b, size=b.size_at(bindings), offset=b.offset * factor) for b in self.buffers]
            return replace(self, buffers=buffers, arena_bytes=self.arena_bytes * factor,
                           lower_bound_bytes=self.lower_bound_bytes * factor, naive_bytes=self.naive_bytes * factor,
                           load_without_inplace_bytes=self.load_without_inplace_bytes * factor,
                           bindings=dict(bindings), rescale="exact", tried={})
        buffers = [replace(b, size=b.size_at(bindings), offset=-1) for b in self.buffers]
        plan = place_buffers(buffers, self.steps, self.alignment)
        plan.bindings = dict(bindings)
        plan.rescale = "replanned"
        plan.heuristic = f"{plan.heuristic} (re-planned for {_fmt_bindings(bindings)})"
        return plan

    # -- JSON ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["in_place_count"] = self.in_place_count
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MemoryPlan":
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "buffers"}
        return cls(buffers=[Buffer.from_dict(b) for b in d.get("buffers", [])], **fields)


def _fmt_bindings(bindings: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(bindings.items()))


# -- placement -------------------------------------------------------------------------------------------------

@dataclass
class _Slot:
    """An in-place chain of buffers sharing one offset: placed as one unit."""

    members: list[str]
    size: int  # aligned
    start: int
    end: int
    offset: int = -1


def _slots(buffers: Iterable[Buffer], alignment: int = 1) -> list[_Slot]:
    by_value = {b.value: b for b in buffers}
    root: dict[str, str] = {}

    def find(v: str) -> str:
        while v in root:
            v = root[v]
        return v

    for b in by_value.values():
        if b.in_place_of and b.in_place_of in by_value:
            root[b.value] = find(b.in_place_of)
    slots: dict[str, _Slot] = {}
    for b in by_value.values():
        r = find(b.value)
        s = slots.get(r)
        size = align(b.size, alignment) if alignment > 1 else b.size
        if s is None:
            slots[r] = _Slot([b.value], size, b.start, b.end, b.offset)
        else:
            s.members.append(b.value)
            s.size = max(s.size, size)
            s.start, s.end = min(s.start, b.start), max(s.end, b.end)
    return list(slots.values())


def load_of(intervals: Iterable[tuple[int, int, int]], steps: int) -> int:
    """LOAD: the most bytes live at one step, for ``(size, start, end)`` intervals (inclusive ends)."""
    diff = [0] * (steps + 2)
    for size, start, end in intervals:
        diff[max(start, 0)] += size
        diff[min(end, steps) + 1] -= size
    best = live = 0
    for d in diff:
        live += d
        best = max(best, live)
    return best


def _best_fit(slot: _Slot, placed: list[_Slot]) -> int:
    """The lowest-waste offset for ``slot`` among the placed slots whose lifetimes meet it: the smallest gap
    between them that fits (best fit), else the top of the highest one."""
    conflicts = sorted((p for p in placed if p.start <= slot.end and slot.start <= p.end), key=lambda p: p.offset)
    best_off, best_gap = -1, None
    top = 0
    for p in conflicts:
        gap = p.offset - top
        if gap >= slot.size and (best_gap is None or gap < best_gap):
            best_off, best_gap = top, gap
        top = max(top, p.offset + p.size)
    return best_off if best_off >= 0 else top


def _greedy(slots: list[_Slot], key: Callable[[_Slot], Any]) -> int:
    placed: list[_Slot] = []
    for s in sorted(slots, key=key):
        s.offset = _best_fit(s, placed)
        placed.append(s)
    return max((s.offset + s.size for s in slots), default=0)


def _breadths(slots: list[_Slot], steps: int) -> dict[int, int]:
    """Per slot: the most bytes live at one step of its lifetime (the *breadth* of its busiest step)."""
    diff = [0] * (steps + 2)
    for s in slots:
        diff[max(s.start, 0)] += s.size
        diff[min(s.end, steps) + 1] -= s.size
    live, acc = [], 0
    for d in diff:
        acc += d
        live.append(acc)
    return {id(s): max(live[s.start:s.end + 1], default=0) for s in slots}


#: placement heuristics, tried in this order; each orders the slots (the key sees the slot and its breadth,
#: the most bytes live at one step of its lifetime) and places them best-fit one by one. "by breadth" is
#: Pisarchyk & Lee's greedy by breadth: the buffers of the busiest steps first, where the arena is tightest.
HEURISTICS: dict[str, Callable[[_Slot, int], Any]] = {
    "greedy_by_size": lambda s, b: (-s.size, s.start, s.members[0]),
    "greedy_by_breadth": lambda s, b: (-b, s.start, -s.size, s.members[0]),
    "greedy_by_breadth_size": lambda s, b: (-b, -s.size, s.start, s.members[0]),
    "greedy_by_area": lambda s, b: (-s.size * (s.end - s.start + 1), s.start, s.members[0]),
    "greedy_by_start": lambda s, b: (s.start, -s.size, s.members[0]),
    "greedy_by_lifetime": lambda s, b: (-(s.end - s.start), -s.size, s.members[0]),
}


def place_buffers(buffers: list[Buffer], steps: int, alignment: int = ALIGNMENT) -> MemoryPlan:
    """Place ``buffers`` (sizes, lifetimes and in-place links set) with each heuristic; keep the smallest arena.

    Stops as soon as a heuristic reaches LOAD (no placement can do better). Returns a plan whose buffers are
    copies with offsets set.
    """
    buffers = [replace(b) for b in buffers]
    slots = _slots(buffers, alignment)
    lower = load_of(((s.size, s.start, s.end) for s in slots), steps)
    no_inplace = load_of(((align(b.size, alignment), b.start, b.end) for b in buffers), steps)
    naive = sum(align(b.size, alignment) for b in buffers)
    best_name, best_arena, best_offsets = "none", 0, {}
    tried: dict[str, int] = {}
    breadth = _breadths(slots, steps)
    # each heuristic costs O(n^2) in the number of slots; on very large graphs try the first two only
    heuristics = list(HEURISTICS.items())[:2] if len(slots) > LARGE else HEURISTICS.items()
    for name, key in heuristics:
        arena = _greedy(slots, lambda s, key=key: key(s, breadth[id(s)]))
        tried[name] = arena
        if not best_offsets or arena < best_arena:
            best_name, best_arena = name, arena
            best_offsets = {m: s.offset for s in slots for m in s.members}
        if best_arena <= lower:
            break
    for b in buffers:
        b.offset = best_offsets.get(b.value, 0)
    monomials = {tuple(sorted(b.symbols.items())) for b in buffers}
    rescale = "static" if not any(b.symbols for b in buffers) else ("exact" if len(monomials) == 1 else "replan")
    return MemoryPlan(buffers=buffers, arena_bytes=best_arena, lower_bound_bytes=lower, naive_bytes=naive,
                      heuristic=best_name, alignment=alignment, steps=steps, load_without_inplace_bytes=no_inplace,
                      rescale=rescale, tried=tried)


def memory_plan_of(plan) -> MemoryPlan | None:
    """The MemoryPlan the ``memory_planning`` pass made for a :class:`~graphc.plan.Plan` (None if it did not run).

    The totals come from the pass's summary decision, the buffers from ``node.meta["buffers"]`` of the
    schedule's nodes (see passes/memory_planning.py).
    """
    summary = None
    for decision in reversed(getattr(plan, "decisions", None) or []):
        data = decision.get("data") or {}
        if decision.get("pass") == "memory_planning" and data.get("summary"):
            summary = data
            break
    if summary is None:
        return None
    buffers = [Buffer.from_dict(b) for node in plan.graph.nodes
               for b in (node.meta.get("buffers") or {}).values()]
    return MemoryPlan(buffers=buffers, arena_bytes=summary["arena_bytes"],
                      lower_bound_bytes=summary["lower_bound_bytes"], naive_bytes=summary["naive_bytes"],
                      heuristic=summary.get("heuristic", ""), alignment=summary.get("alignment", ALIGNMENT),
                      steps=summary.get("steps", len(plan.graph.nodes)),
                      load_without_inplace_bytes=summary.get("load_without_inplace_bytes", 0),
                      rescale=summary.get("rescale", "static"), tried=dict(summary.get("tried") or {}))


__all__ = ["ALIGNMENT", "Buffer", "MemoryPlan", "align", "load_of", "place_buffers", "memory_plan_of",
           "monomial_value", "HEURISTICS"]
