"""``CompiledModel.report()``: what graphc did to a model, as a plain dict (stable keys, see DESIGN.md)."""

from __future__ import annotations

from .analysis import bytes_moved, count_ops, flops_by_op, memory_estimate, parameter_count
from .plan import Plan
from .precision import precision_summary


def _fusion_summary(plan: Plan) -> dict | None:
    for decision in plan.decisions:
        if decision.get("pass") == "fusion" and decision.get("data", {}).get("summary"):
            return {k: v for k, v in decision["data"].items() if k != "summary"}
    return None


def _memory_summary(plan: Plan) -> dict | None:
    for decision in reversed(plan.decisions):
        data = decision.get("data", {})
        if decision.get("pass") == "memory_planning" and data.get("summary"):
            return data
    return None


def _partition_entry(plan: Plan) -> dict:
    """``{"partition": ...}`` from the partitioning pass's summary decision (empty for one device)."""
    for decision in reversed(plan.decisions):
        data = decision.get("data", {})
        if decision.get("pass") == "partitioning" and data.get("summary"):
            return {"partition": data.get("partition")}
    return {}


def _memory(plan: Plan) -> dict:
    mem = memory_estimate(plan.graph)
    planned = _memory_summary(plan)
    if planned is None:
        # no memory plan: the reference backend allocates each tensor separately and frees it after its last
        # reader, so what it holds at its peak is exactly the liveness lower bound (inputs and outputs included)
        return {"arena_bytes": mem.lower_bound_bytes, "lower_bound_bytes": mem.lower_bound_bytes,
                "naive_bytes": mem.naive_bytes, "weights_bytes": mem.weights_bytes, "symbolic_dims_as": 1}
    # the memory plan covers the intermediates (graph inputs, outputs and weights have buffers of their own)
    return {
        "arena_bytes": planned["arena_bytes"],
        "lower_bound_bytes": planned["lower_bound_bytes"],
        "naive_bytes": planned["naive_bytes"],
        "weights_bytes": mem.weights_bytes,
        "heuristic": planned.get("heuristic"),
        "in_place": planned.get("in_place", 0),
        "schedule": planned.get("schedule", "given"),
        "rescale": planned.get("rescale", "static"),
        "io_bytes": _io_bytes(plan.graph),
        "symbolic_dims_as": 1,
    }


def _io_bytes(graph) -> int:
    from .analysis import concrete_bytes

    values = {id(v): v for v in list(graph.inputs) + list(graph.outputs) if not v.is_constant}
    return sum(concrete_bytes(v.type) for v in values.values())


def build_report(plan: Plan, imported_nodes: int, compile_seconds: float, executable=None) -> dict:
    graph = plan.graph
    flops = flops_by_op(graph)
    # ops the backend runs through the reference kernels (for a model with symbolic dims: in the
    # specialisations compiled so far)
    fallback = list(getattr(executable, "fallback_ops", None) or plan.options.get("fallback_ops", []))
    fusion = _fusion_summary(plan)
    moved = bytes_moved(graph)
    return {
        "target": plan.target,
        "nodes": imported_nodes,
        "kernels": len(graph.nodes),
        "fallback_ops": sorted(set(fallback)),
        "ops": dict(sorted(count_ops(graph).items())),
        "flops": int(sum(flops.values())),
        "flops_by_op": {k: int(v) for k, v in sorted(flops.items()) if v},
        "params": parameter_count(graph),
        "memory": _memory(plan),
        "fusion": fusion,
        "bytes_moved": {"before": fusion["bytes_before"] if fusion else moved, "after": moved},
        "precision": precision_summary(plan),
        "passes": list(plan.decisions),
        "pipeline": plan.pipeline,
        "compile_seconds": round(compile_seconds, 4),
        **_partition_entry(plan),
        "backend": executable.describe() if hasattr(executable, "describe") else {},
    }
