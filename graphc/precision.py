"""What mixed precision costs in accuracy: the error of a compiled model against its float32 baseline.

The precision pass (passes/precision.py) decides which nodes take bfloat16 operands and logs why. After the
backend has compiled the plan, :func:`measure_error` runs the compiled model and the reference executor
*without* the precision marks (the float32 baseline) on one seeded input and records, per output, the largest
absolute difference, the normwise relative error ``max|y - y32| / max|y32|`` and, for a (1, classes) output,
whether the top-1 class agrees. The numbers go into the pass's summary decision, so ``report()["precision"]``
shows them and artifacts keep them. ``precision_check=False`` skips the measurement (it costs one reference
run of the model).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .ir.types import TensorType
from .plan import Plan


def _summary_decision(plan: Plan) -> dict | None:
    for decision in plan.decisions:
        if decision.get("pass") == "precision" and decision.get("data", {}).get("summary"):
            return decision["data"]["summary"]
    return None


def precision_summary(plan: Plan) -> dict:
    """``report()["precision"]``: the mode, and for mixed plans what the pass marked and the measured error."""
    summary = _summary_decision(plan)
    if summary is None:
        return {"mode": plan.options.get("precision", "fp32")}
    return dict(summary)


def sample_inputs(plan: Plan, seed: int = 0) -> list[np.ndarray]:
    """One input per graph input: uniform [0, 1) floats, zeros for integers and booleans (valid indices for
    any Gather), symbolic dims bound to 1."""
    rng = np.random.default_rng(seed)
    out = []
    for v in plan.graph.inputs:
        t = v.type
        if not isinstance(t, TensorType) or t.shape is None or t.dtype is None:
            raise ValueError(f"input {v.name!r} has no static tensor type")
        shape = tuple(d if isinstance(d, int) else 1 for d in t.shape)
        if t.dtype.kind == "f":
            out.append(rng.random(shape).astype(t.dtype))
        else:
            out.append(np.zeros(shape, t.dtype))
    return out


def measure_error(plan: Plan, executable) -> dict[str, Any]:
    """Per output error of ``executable`` (compiled from the mixed plan) against the float32 reference."""
    from .backends.reference.executor import ReferenceExecutable

    inputs = sample_inputs(plan)
    got = executable.run(list(inputs))
    want = ReferenceExecutable(plan, emulate_precision=False).run(list(inputs))
    per_output = {}
    for value, y, y32 in zip(plan.graph.outputs, got, want):
        y, y32 = np.asarray(y), np.asarray(y32)
        if y.dtype.kind != "f" or y.size == 0:
            continue
        diff = np.abs(y.astype(np.float64) - y32.astype(np.float64))
        scale = float(np.abs(y32).max())
        entry = {"max_abs": float(diff.max()), "max_rel": float(diff.max() / scale) if scale else 0.0}
        if y.ndim == 2 and y.shape[0] == 1 and y.shape[1] > 1:
            entry["top1_agrees"] = bool(int(y.argmax()) == int(y32.argmax()))
        per_output[value.name] = entry
    return {"input": "seeded uniform [0, 1) floats (seed 0), symbolic dims = 1", "outputs": per_output,
            "max_rel": max((e["max_rel"] for e in per_output.values()), default=0.0)}


def record_error(plan: Plan, executable) -> None:
    """Measure (see :func:`measure_error`) and store the result in the precision pass's summary decision;
    a model that cannot be sampled or run this way gets the reason instead of numbers."""
    summary = _summary_decision(plan)
    if summary is None:
        return
    try:
        summary["error"] = measure_error(plan, executable)
    except Exception as exc:  # noqa: BLE001 - a report entry, never a compile failure
        summary["error"] = {"not_measured": f"{type(exc).__name__}: {exc}"}
