"""The cost model shared by the partitioner, the simulator (``graphc plan``) and the reports.

- **kernel time** on a device = ``scale x max(FLOPs / peak(dtype), bytes / memory bandwidth) + launch overhead``
  (the roofline: a kernel is bound either by arithmetic or by memory traffic). FLOPs and bytes come from the
  op registry (:func:`graphc.analysis.node_cost`; a ``FusedKernel`` costs its members' FLOPs and only its
  external inputs/outputs as bytes). ``scale`` (1 by default) is the device's calibration;
- **transfer time** of a tensor over a link = ``latency + bytes / bandwidth``;
- **calibration**: :func:`time_kernels` measures each top-level kernel of a graph with the reference ops (or
  any per-kernel times the caller measured with another backend: graphc/calibration.py profiles the llvm
  code), :func:`fit_scale` fits ``measured = scale x roofline + overhead`` by least squares, and
  :func:`calibrate` returns the device with both set, plus each measured kernel's own ratio
  ``measured / roofline`` (``Device.kernel_scales``). The roofline ranks kernels well but its absolute level is
  the backend's, not the silicon's, and it differs by kernel: a generated conv reaches 70-90% of a core's
  peak, a pooling kernel far less of its memory roofline. One scale for all mispredicts a stage by tens of
  percent; the per-kernel ratio predicts the model it was measured on (and its tensor-split slices, which
  share their kernel's ratio) while the fitted scale covers kernels it has not seen.

Symbolic dims are bound to a micro-batch size (:func:`kernel_costs` with ``batch=m``); with ``batch=1`` this is
what ``report()`` counts.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .analysis import node_cost
from .devices import Device, Link
from .ir.graph import Graph, Node
from .ir.types import TensorType
from .ops import Cost

_DTYPE_CLASS = {"float32": "fp32", "float64": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "int8",
                "uint8": "int8"}


@contextlib.contextmanager
def symbolic_dims_bound(graph: Graph, value: int | Mapping[str, int] = 1) -> Iterator[None]:
    """Within the block every symbolic dim of every value of ``graph`` (subgraphs too) is bound: to ``value``
    when it is an int, else to ``value[symbol]`` (1 for symbols it does not name, and for unknown dims)."""
    bind = (lambda d: value) if isinstance(value, int) else (lambda d: int(value.get(d, 1)) if isinstance(d, str) else 1)
    saved = []
    for node in graph.walk():
        for v in list(node.inputs) + list(node.outputs):
            if v is not None and isinstance(v.type, TensorType) and v.type.shape is not None and not v.type.is_static:
                saved.append((v, v.type))
                v.type = TensorType(v.type.dtype, tuple(d if isinstance(d, int) else bind(d) for d in v.type.shape))
    try:
        yield
    finally:
        for v, t in reversed(saved):
            v.type = t


def compute_class(node: Node) -> str:
    """The dtype class whose peak bounds ``node``: that of its first tensor output (fp32 when unknown)."""
    for v in node.outputs:
        if v is not None and isinstance(v.type, TensorType) and v.type.dtype is not None:
            return _DTYPE_CLASS.get(str(v.type.dtype), "fp32")
    return "fp32"


def is_transfer(node: Node) -> bool:
    return node.domain == "graphc" and node.op_type in ("Send", "Recv")


@dataclass
class KernelCost:
    """What the cost model needs of one kernel: FLOPs, bytes moved, and the dtype class of its arithmetic."""

    name: str
    flops: float
    bytes: float
    dtype: str = "fp32"

    @classmethod
    def of(cls, node: Node, cost: Cost | None = None) -> "KernelCost":
        cost = node_cost(node) if cost is None else cost
        return cls(node.name or node.op_type, float(cost.flops), float(cost.bytes_read + cost.bytes_written),
                   compute_class(node))


def kernel_costs(graph: Graph, batch: int | Mapping[str, int] = 1) -> list[KernelCost]:
    """Costs of ``graph.nodes`` (top level, in schedule order) with every symbolic dim bound to ``batch``.

    Send/Recv cost nothing here: their time is a transfer (:func:`transfer_time`), not a kernel's."""
    with symbolic_dims_bound(graph, batch):
        return [KernelCost(n.name or n.op_type, 0.0, 0.0) if is_transfer(n) else KernelCost.of(n)
                for n in graph.nodes]


def roofline_time(k: KernelCost, device: Device) -> float:
    """Roofline time without scale or overhead: the larger of compute time and memory time."""
    return max(k.flops / device.peak(k.dtype), k.bytes / device.memory_bandwidth)


_SLICE_SUFFIX = re.compile(r"_s\d+$")


def kernel_scale(name: str, device: Device) -> float | None:
    """The measured ratio of the kernel ``name`` on ``device``, if it was calibrated: its own, or for a slice the
    tensor-split pass made (``<kernel>_s<i>``) that of the kernel it was cut from."""
    scales = device.kernel_scales
    if not scales:
        return None
    found = scales.get(name)
    if found is None and _SLICE_SUFFIX.search(name):
        found = scales.get(_SLICE_SUFFIX.sub("", name))
    return found


def kernel_time(k: KernelCost, device: Device) -> float:
    """Predicted seconds of one kernel on ``device``: its measured ratio x roofline when it was calibrated
    (the measurement already holds its launch cost), else calibrated roofline + launch overhead."""
    if k.flops == 0 and k.bytes == 0:
        return 0.0
    own = kernel_scale(k.name, device)
    if own is not None:
        return own * roofline_time(k, device)
    return device.scale * roofline_time(k, device) + device.launch_overhead_s


def transfer_time(nbytes: int, link: Link) -> float:
    return link.time(int(nbytes))


# --------------------------------------------------------------------------------------------- calibration
def fit_scale(predicted: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """Fit ``measured ~ scale x predicted + overhead`` (least squares, both >= 0); returns (scale, overhead).

    ``predicted`` are roofline times without overhead. The fit is on absolute seconds: what the partitioner
    needs right is the sum of a stage's kernels, which the long kernels dominate (weighting by 1/measured
    would let the many tiny kernels set the scale; numpy's convolutions are 100-1000x off the roofline while
    its pooling is near it, so the two fits differ by an order of magnitude).
    """
    p = np.asarray(predicted, np.float64)
    m = np.asarray(measured, np.float64)
    keep = (m > 0) & np.isfinite(m) & np.isfinite(p)
    p, m = p[keep], m[keep]
    if p.size == 0 or not np.any(p > 0):
        raise ValueError("calibration needs at least one kernel with a positive predicted and measured time")
    w = np.ones_like(m)
    a = np.stack([p * w, w], axis=1)
    (scale, overhead), *_ = np.linalg.lstsq(a, m * w, rcond=None)
    if overhead < 0 or scale <= 0:  # refit without the overhead term; the ratio of sums is the robust choice
        overhead = 0.0
        scale = float(np.sum(m) / np.sum(p))
    return float(scale), float(overhead)


def calibrate(device: Device, kernels: Sequence[KernelCost], measured_s: Mapping[str, float] | Sequence[float],
              per_kernel: bool = True) -> Device:
    """``device`` with ``scale`` and ``launch_overhead_s`` fitted to measured per-kernel seconds, and with
    ``kernel_scales`` (each measured kernel's measured / roofline) when ``per_kernel``.

    ``measured_s`` maps kernel names to seconds (or lists them in the order of ``kernels``)."""
    if isinstance(measured_s, Mapping):
        named = [(k, measured_s[k.name]) for k in kernels if k.name in measured_s]
    else:
        named = list(zip(kernels, measured_s))
    named = [(k, float(t)) for k, t in named if roofline_time(k, device) > 0 and np.isfinite(t) and t > 0]
    scale, overhead = fit_scale([roofline_time(k, device) for k, _ in named], [t for _, t in named])
    own = {k.name: t / roofline_time(k, device) for k, t in named} if per_kernel else {}
    return replace(device, scale=scale, launch_overhead_s=overhead, kernel_scales=own)


def time_kernels(graph: Graph, feeds: Sequence[Any], repeat: int = 3) -> dict[str, float]:
    """Seconds of each top-level kernel of ``graph`` run with the registry's reference kernels (best of
    ``repeat``), keyed by node name. Subgraphs (fused bodies, control flow) run inside their kernel."""
    from .ops import OpContext, lookup

    def run_graph(g: Graph, inputs: Sequence[Any], outer: dict | None, timings: dict | None) -> list:
        env: dict = dict(outer or {})
        env.update({id(v): x for v, x in zip(g.inputs, inputs)})
        env.update({id(v): v.const for v in g.initializers.values()})
        for node in g.nodes:
            ctx = OpContext(node, lookup(node.domain, node.op_type))
            ctx.subgraph_runner = lambda sub, xs, _env=env: run_graph(sub, xs, _env, None)
            args = [env[id(v)] if v is not None else None for v in node.inputs]
            best = float("inf")
            for _ in range(repeat if timings is not None else 1):
                t0 = time.perf_counter()
                out = ctx.opdef.compute(ctx, *args)
                best = min(best, time.perf_counter() - t0)
            if timings is not None:
                timings[node.name or f"{node.op_type}#{len(timings)}"] = best
            out = out if isinstance(out, (list, tuple)) else [out]
            env.update({id(v): r for v, r in zip(node.outputs, out) if v is not None})
        return [env[id(v)] if not v.is_constant else v.const for v in g.outputs]

    timings: dict[str, float] = {}
    with np.errstate(all="ignore"):
        run_graph(graph, list(feeds), None, timings)
    return timings


def calibrate_on(graph: Graph, feeds: Sequence[Any], device: Device, repeat: int = 3) -> Device:
    """Measure ``graph``'s kernels here with the reference ops and fit ``device``'s scale to them."""
    measured = time_kernels(graph, feeds, repeat)
    return calibrate(device, kernel_costs(graph), measured)


__all__ = ["KernelCost", "kernel_costs", "kernel_time", "kernel_scale", "roofline_time", "transfer_time", "fit_scale",
           "calibrate", "time_kernels", "calibrate_on", "symbolic_dims_bound", "is_transfer"]
