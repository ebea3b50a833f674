"""Calibrating the cost model on this host: the partitioner's kernel times measured, not assumed.

The partitioner (passes/partitioning.py) balances stages with the cost model (graphc/costmodel.py), a roofline
per kernel. A roofline ranks kernels but does not know how close each kind of generated code gets to it: a
conv GEMM runs near the FLOP peak, a pooling or concatenation kernel far from the memory roofline, a tiny
kernel is all call overhead. :func:`measure_calibration` compiles the model for one device of each distinct
CPU shape (number of cores) with the llvm backend, times every kernel with the profiler (graphc/profile.py:
the cycle counter read between kernels inside one run), and fits the device's ``scale`` and
``launch_overhead_s`` plus each kernel's own ratio (:func:`graphc.costmodel.calibrate`). The result is the
``partition_calibration`` option; ``graphc.compile(..., partition_calibration="measure")`` runs this first.

Measuring is done pinned to the device's cores (the calling thread's affinity is restored afterwards), on
seeded random inputs with every symbolic dim 1, the batch the cost model's kernel costs use. Devices this
host cannot run (CUDA here) keep their nominal numbers; the result says so under ``"not_measured"``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from .errors import OptionError


@contextlib.contextmanager
def _pinned(cores: list[int]) -> Iterator[None]:
    """Run the block on ``cores`` (the calling thread only), as a stage worker would be."""
    try:
        saved = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        yield
        return
    usable = set(cores) & saved
    try:
        if usable:
            os.sched_setaffinity(0, usable)
        yield
    finally:
        os.sched_setaffinity(0, saved)


def measure_calibration(model: Any, devices: Any, *, target: str = "llvm", repeat: int = 10,
                        **options: Any) -> dict[str, Any]:
    """``partition_calibration`` for ``devices`` measured here on ``model``.

    ``options`` are the other compile options of the partitioned compile (precision, fusion switches...): the
    kernels measured must be the ones that will be partitioned. Returns ``{device name: {"scale",
    "launch_overhead_s", "kernel_scales", "measured_on", "kernels_measured"}}`` plus ``"not_measured": [names]``.
    """
    from .api import compile as compile_model
    from .costmodel import calibrate, kernel_costs
    from .devices import resolve_devices
    from .profile import profile

    if target != "llvm":
        raise OptionError(f"measuring a calibration needs the llvm target (its kernels are what the profiler "
                          f"times); got target={target!r}")
    devset = resolve_devices(devices, target)
    single = {k: v for k, v in options.items() if not k.startswith("partition_") and
              k not in ("devices", "device_spec", "runtime", "tensor_split", "threads", "cache")}
    by_shape: dict[int, dict[str, Any]] = {}
    out: dict[str, Any] = {}
    skipped = []
    for device in devset.devices:
        if device.kind != "cpu":
            skipped.append(device.name)
            continue
        threads = max(len(device.cores), 1)
        if threads not in by_shape:
            compiled = compile_model(model, target=target, threads=threads, cache=False, **single)
            with _pinned(list(device.cores)):
                report = profile(compiled, repeat=repeat)
            measured: dict[str, float] = {}
            for k in report.kernels:  # a kernel lowered to several steps: their sum
                measured[k.name] = measured.get(k.name, 0.0) + k.seconds
            fitted = calibrate(device, kernel_costs(compiled.graph), measured)
            by_shape[threads] = {"scale": fitted.scale, "launch_overhead_s": fitted.launch_overhead_s,
                                 "kernel_scales": dict(fitted.kernel_scales), "measured_on": device.name,
                                 "kernels_measured": len(fitted.kernel_scales)}
        out[device.name] = dict(by_shape[threads])
    out["not_measured"] = skipped
    return out


__all__ = ["measure_calibration"]
