"""Pipelined throughput on two single-core CPU devices vs one single-core device, and predicted vs measured.

    python bench/pipeline_throughput.py                          # resnet50 and the TransformerEncoder model
    python bench/pipeline_throughput.py --models squeezenet --batches 10

For each model:

1. **one device**: a child process pinned to one core (``os.sched_setaffinity``, BLAS/OpenMP threads = 1)
   compiles the model for the target and runs the stream of batches one after the other; it also times every
   kernel with the reference ops (:func:`graphc.costmodel.time_kernels`) and fits the cost model's scale and
   overhead for a core of this host (:func:`graphc.costmodel.calibrate`);
2. **two devices**: this process compiles it for ``cpu:0,cpu:1`` as a 2-stage pipeline
   (``partition_stages=2, partition_replicas=1``) with that calibration, and runs the same stream through
   :meth:`MultiDeviceExecutable.run_stream` (stages overlap across batches; each worker is pinned to its core);
3. prints batches/s of both, the speed-up (target >= 1.85 x), the partition's predicted throughput and the
   measured / predicted ratio (target within 15%), and checks that the outputs agree.

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, time
os.sched_setaffinity(0, {int(sys.argv[3])})
import numpy as np
sys.path.insert(0, sys.argv[4])
from pipeline_throughput import load_model
import graphc
from graphc.costmodel import calibrate, kernel_costs, time_kernels
from graphc.devices import cpu_device
proto, feeds = load_model(sys.argv[1])
n = int(sys.argv[2])
compiled = graphc.compile(proto, target=sys.argv[5])
inputs = [feeds[k] for k in compiled.input_names]
compiled(*inputs)
t0 = time.perf_counter()
for _ in range(n):
    out = compiled(*inputs)
seconds = time.perf_counter() - t0
measured = time_kernels(compiled.graph, inputs, repeat=2)
device = calibrate(cpu_device(0, [int(sys.argv[3])]), kernel_costs(compiled.graph), measured)
np.save(sys.argv[6], np.asarray(out if not isinstance(out, list) else out[0]))
print(json.dumps({"seconds": seconds, "scale": device.scale, "overhead": device.launch_overhead_s,
                  "kernel_seconds": sum(measured.values())}))
"""


def load_model(name: str):
    """(ModelProto, feeds) for a zoo model (random weights) or a bench/torch_models.py model."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    if name in ("transformer", "mlp", "lstm_lm", "mobilenet"):
        from torch_models import export

        proto, feeds, _ = export(name)
        return proto, feeds
    from graphc import zoo

    model = zoo.load(name, weights="random", seed=0)
    return model, zoo.sample_inputs(model, seed=1)


def one_device(name: str, batches: int, core: int, target: str, out_path: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", CHILD, name, str(batches), str(core),
                           os.path.join(ROOT, "bench"), target, out_path],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"single-device child failed for {name}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def two_devices(name: str, batches: int, target: str, calibration: dict):
    import numpy as np

    import graphc

    proto, feeds = load_model(name)
    compiled = graphc.compile(proto, target=target, devices="cpu:0,cpu:1", partition_stages=2,
                              partition_replicas=1, partition_calibration={"cpu": calibration})
    inputs = [feeds[k] for k in compiled.input_names]
    exe = compiled.executable
    try:
        exe.run_stream([inputs] * 2)  # start and warm the workers
        t0 = time.perf_counter()
        outs = exe.run_stream([inputs] * batches)
        seconds = time.perf_counter() - t0
        stage_seconds = {f"{r}/{s}": float(np.median(v)) for (r, s), v in exe.last_stage_seconds.items()}
    finally:
        exe.close()
    return seconds, compiled.report()["partition"], outs[-1][0], stage_seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "transformer"])
    parser.add_argument("--batches", type=int, default=30, help="batches in the timed stream (default 30)")
    parser.add_argument("--target", default="reference")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    import tempfile

    import numpy as np

    results = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            ref_path = os.path.join(tmp, "out.npy")
            single = one_device(name, args.batches, 0, args.target, ref_path)
            calibration = {"scale": single["scale"], "launch_overhead_s": single["overhead"]}
            seconds, part, last, stages = two_devices(name, args.batches, args.target, calibration)
            agree = bool(np.allclose(np.load(ref_path), last, rtol=1e-5, atol=1e-6))
        one_bps = args.batches / single["seconds"]
        two_bps = args.batches / seconds
        row = {"model": name, "batches": args.batches, "one_device_batches_per_s": one_bps,
               "two_devices_batches_per_s": two_bps, "speedup": two_bps / one_bps,
               "predicted_batches_per_s": part["predicted_throughput"],
               "measured_vs_predicted": two_bps / part["predicted_throughput"],
               "stage_predicted_s": [d["predicted_s"] for d in part["devices"]],
               "stage_measured_median_s": stages, "calibration": calibration, "outputs_agree": agree}
        results.append(row)
        print(f"{name:12s} one core {one_bps:7.2f}/s  two cores {two_bps:7.2f}/s  speed-up {row['speedup']:.2f}x  "
              f"predicted {part['predicted_throughput']:7.2f}/s  measured/predicted {row['measured_vs_predicted']:.2f}"
              f"  outputs agree: {agree}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
