"""What the Ray runner costs against the local one on the same partitioned plan (2 stages, 1 replica).

    python bench/ray_overhead.py                       # the MLP of tests/test_multidevice.py and SqueezeNet
    python bench/ray_overhead.py --models squeezenet --rounds 15

Both runners are started first (the first run's time, which starts the workers, is printed); then, in
interleaved rounds so that a busy machine hurts both alike, each runs 5 single runs and one stream of 16
batches, and the single-device model 5 runs in this process. Prints medians. Outputs are checked against the
single-device model. Needs Ray (``pip install 'graphc[ray]'``); starts a local instance when none runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import graphc  # noqa: E402
from graphc import zoo  # noqa: E402


def load(name: str):
    if name == "mlp":
        from tests.helpers import mlp_model

        return mlp_model(batch="N", features=64, hidden=128, classes=10), [np.ones((6, 64), np.float32)]
    model = zoo.load(name, weights="random", seed=0)
    feeds = zoo.sample_inputs(model, seed=1)
    return model, [feeds[i.name] for i in model.graph.input if i.name in feeds]


def measure(name: str, target: str, rounds: int, stream: int = 16) -> None:
    model, x = load(name)
    one = graphc.compile(model, target=target)
    want = one(*x)
    exes = {}
    for runtime in ("local", "ray"):
        c = graphc.compile(model, target=target, devices="cpu:0,cpu:1", runtime=runtime, partition_stages=2,
                           partition_replicas=1)
        t = time.perf_counter()
        got = c(*x)
        print(f"{name} {runtime}: first run (starts the workers) {time.perf_counter() - t:.2f} s")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        exes[runtime] = c.executable
    runs: dict[str, list[float]] = {k: [] for k in exes}
    streams: dict[str, list[float]] = {k: [] for k in exes}
    single: list[float] = []
    for _ in range(rounds):
        for k, exe in exes.items():
            for _ in range(5):
                t = time.perf_counter()
                exe.run(x)
                runs[k].append(time.perf_counter() - t)
            t = time.perf_counter()
            exe.run_stream([x] * stream)
            streams[k].append(time.perf_counter() - t)
        for _ in range(5):
            t = time.perf_counter()
            one(*x)
            single.append(time.perf_counter() - t)
    med = statistics.median
    print(f"{name} ({target}, {rounds} rounds): one device in this process {med(single) * 1e3:.2f} ms per run")
    for k in exes:
        print(f"  {k:5s}: {med(runs[k]) * 1e3:.2f} ms per run; stream of {stream}: {med(streams[k]) * 1e3:.1f} ms "
              f"= {stream / med(streams[k]):.1f} batches/s")
    for exe in exes.values():
        exe.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,squeezenet", help="comma-separated: mlp and/or zoo names")
    parser.add_argument("--target", default="reference")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    for name in args.models.split(","):
        measure(name.strip(), args.target, args.rounds)


if __name__ == "__main__":
    main()
