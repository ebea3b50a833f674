"""Pipelined throughput on two single-core CPU devices vs one single-core device, and predicted vs measured.

    python bench/pipeline_throughput.py                          # resnet50 and the TransformerEncoder model
    python bench/pipeline_throughput.py --models squeezenet --batches 10

For each model:

1. **one device**: a child process pinned to one core (``os.sched_setaffinity``, BLAS/OpenMP threads = 1)
   compiles the model for the target (one thread) and runs the stream of batches one after the other; it
   also measures the cost model's calibration for a core of this host: on the llvm target (the default)
   every kernel timed by the profiler (:func:`graphc.calibration.measure_calibration`), on the reference
   target every kernel timed with the reference ops (:func:`graphc.costmodel.time_kernels`);
2. **two devices**: this process compiles it for ``cpu:0,cpu:1`` as a 2-stage pipeline
   (``partition_stages=2, partition_replicas=1``) with that calibration, and runs the same stream through
   :meth:`MultiDeviceExecutable.run_stream` (stages overlap across batches; each worker is pinned to its core);
3. prints batches/s of both, the speed-up (target >= 1.85 x), the partition's predicted throughput and the
   measured / predicted ratio (target within 15%), each stage's predicted and measured (median) time, and
   checks that the outputs agree.

Workers start before the timed region (one untimed warm-up stream). The machine must have two free cores for
the numbers to mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, time
os.sched_setaffinity(0, {int(sys.argv[3])})
import numpy as np
sys.path.insert(0, sys.argv[4])
from pipeline_throughput import load_model
import graphc
from graphc.calibration import measure_calibration
from graphc.costmodel import calibrate, kernel_costs, time_kernels
from graphc.devices import cpu_device
proto, feeds = load_model(sys.argv[1], int(sys.argv[7]))
n, target = int(sys.argv[2]), sys.argv[5]
compiled = graphc.compile(proto, target=target, threads=1)
inputs = [feeds[k] for k in compiled.input_names]
compiled(*inputs)
t0 = time.perf_counter()
for _ in range(n):
    out = compiled(*inputs)
seconds = time.perf_counter() - t0
if target == "llvm":
    cal = measure_calibration(proto, "cpu:0")["cpu:0"]
else:
    measured = time_kernels(compiled.graph, inputs, repeat=2)
    device = calibrate(cpu_device(0, [int(sys.argv[3])]), kernel_costs(compiled.graph), measured)
    cal = {"scale": device.scale, "launch_overhead_s": device.launch_overhead_s,
           "kernel_scales": device.kernel_scales}
np.save(sys.argv[6], np.asarray(out if not isinstance(out, list) else out[0]))
print(json.dumps({"seconds": seconds, "calibration": cal}))
"""


def load_model(name: str, batch: int = 1):
    """(ModelProto, feeds) for a zoo model (random weights) or a bench/torch_models.py model, inputs of
    ``batch`` samples."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    if name in ("transformer", "mlp", "lstm_lm", "mobilenet"):
        from torch_models import export

        proto, feeds, _ = export(name, batch=batch)
        return proto, feeds
    from graphc import zoo

    model = zoo.load(name, weights="random", seed=0)
    feeds = zoo.sample_inputs(model, seed=1)
    return model, {k: np.repeat(v, batch, axis=0) if batch != 1 else v for k, v in feeds.items()}


def one_device(name: str, batches: int, core: int, target: str, out_path: str, batch: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", CHILD, name, str(batches), str(core),
                           os.path.join(ROOT, "bench"), target, out_path, str(batch)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"single-device child failed for {name}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def two_devices(name: str, batches: int, target: str, calibration: dict, batch: int):
    import graphc

    proto, feeds = load_model(name, batch)
    compiled = graphc.compile(proto, target=target, devices="cpu:0,cpu:1", partition_stages=2,
                              partition_replicas=1, partition_calibration={"cpu": calibration})
    inputs = [feeds[k] for k in compiled.input_names]
    exe = compiled.executable
    try:
        exe.run_stream([inputs] * 2)  # start and warm the workers
        t0 = time.perf_counter()
        outs = exe.run_stream([inputs] * batches)
        seconds = time.perf_counter() - t0
        stage_seconds = {f"{r}/{s}": float(np.median(v)) for (r, s), v in sorted(exe.last_stage_seconds.items())}
    finally:
        exe.close()
    return seconds, compiled.report()["partition"], outs[-1][0], stage_seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "transformer"])
    parser.add_argument("--batches", type=int, default=30, help="batches in the timed stream (default 30)")
    parser.add_argument("--target", default="llvm", help="llvm (default) or reference")
    parser.add_argument("--batch", type=int, default=1, help="samples per batch of the stream (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    import tempfile

    results = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            ref_path = os.path.join(tmp, "out.npy")
            single = one_device(name, args.batches, 0, args.target, ref_path, args.batch)
            calibration = single["calibration"]
            seconds, part, last, stages = two_devices(name, args.batches, args.target, calibration, args.batch)
            agree = bool(np.allclose(np.load(ref_path), last, rtol=1e-5, atol=1e-6))
        one_bps = args.batches / single["seconds"]
        two_bps = args.batches / seconds
        row = {"model": name, "batches": args.batches, "one_device_batches_per_s": one_bps,
               "two_devices_batches_per_s": two_bps, "speedup": two_bps / one_bps,
               "predicted_batches_per_s": part["predicted_throughput"],
               "measured_vs_predicted": two_bps / part["predicted_throughput"],
               "stage_predicted_s": [d["predicted_s"] for d in part["devices"]],
               "stage_measured_median_s": stages, "outputs_agree": agree,
               # what a batch costs beyond the slowest stage's run: messages, copies into and out of the rings
               "runtime_overhead_s": seconds / args.batches - max(stages.values()),
               "calibration": {k: v for k, v in calibration.items() if k != "kernel_scales"}}
        results.append(row)
        print(f"{name:12s} one core {one_bps:7.2f}/s  two cores {two_bps:7.2f}/s  speed-up {row['speedup']:.2f}x  "
              f"predicted {part['predicted_throughput']:7.2f}/s  measured/predicted {row['measured_vs_predicted']:.2f}"
              f"  outputs agree: {agree}")
        print(f"{'':12s} stages predicted " + " ".join(f"{1e3 * t:.2f}" for t in row["stage_predicted_s"])
              + " ms, measured (median) " + " ".join(f"{1e3 * t:.2f}" for t in stages.values())
              + f" ms; per batch {1e3 * seconds / args.batches:.2f} ms = slowest stage + "
              f"{1e3 * row['runtime_overhead_s']:.2f} ms of hand-over")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
