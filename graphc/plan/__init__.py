"""The lowered program handed to a backend.

A :class:`Plan` is the graph after the pass pipeline, its schedule (the order kernels run in), the target and
options it was compiled for, and what the passes decided (their log). Later passes add buffer placement
(arena offsets) and device placement to it; backends read only this object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..ir.graph import Graph, Node


@dataclass
class Plan:
    graph: Graph
    target: str
    options: dict[str, Any] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # what the passes decided, and why
    pipeline: dict[str, Any] = field(default_factory=dict)  # which passes ran, changed flags, timings

    @property
    def schedule(self) -> list[Node]:
        return self.graph.nodes
