"""Small models next to a busy process, and graphc's per-call overhead.

    python bench/threads_under_load.py --models torch:lstm_lm,torch:mlp --busy 0,1
    python bench/threads_under_load.py --overhead

For each model and each count of busy processes (``python -c "while True: pass"``, started for the
measurement and killed after), times graphc with ``--threads`` threads, graphc with one thread and onnxruntime
with ``--threads`` intra-op threads in one process, in rotating blocks (each after a 0.1 s idle pause and its
own warmup, as graphc.bench does), and prints median / p90 milliseconds. A machine is never empty: the busy
column says what a user sees when one other program keeps a core busy.

``--overhead`` times ``CompiledModel.run`` of a one-op model (a Relu on 16 floats) many times: what a call
costs above the machine code (best of 7 loops of 20,000 calls).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _times(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def engines(name: str, threads: int) -> dict:
    import graphc
    from graphc.bench import ort_session, random_inputs

    if name.startswith("torch:"):
        import torch_models

        proto, feeds, _ = torch_models.export(name[len("torch:"):], 1)
    else:
        from graphc import zoo

        proto, feeds = zoo.load(name.removeprefix("zoo:"), weights="random", seed=0), None
    many = graphc.compile(proto, threads=threads)
    one = graphc.compile(proto, threads=1)
    feeds = feeds or random_inputs(many)
    session = ort_session(proto, threads)
    ort_feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
    return {f"graphc {threads}t": lambda: many.run(feeds), "graphc 1t": lambda: one.run(feeds),
            f"onnxruntime {threads}t": lambda: session.run(None, ort_feeds)}


def under_load(name: str, threads: int, busy: int, blocks: int, per_block: int) -> dict[str, list[float]]:
    fns = engines(name, threads)
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    samples = {k: [] for k in fns}
    order = list(fns)
    try:
        time.sleep(0.2)
        for r in range(blocks):
            for k in order[r % len(order):] + order[:r % len(order)]:
                time.sleep(0.1)
                _times(fns[k], 3)
                samples[k].extend(_times(fns[k], per_block))
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return samples


def call_overhead() -> None:
    import graphc
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", f, [1, 16])],
                              [helper.make_tensor_value_info("y", f, [1, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    feeds = {"x": np.ones((1, 16), np.float32)}
    for threads in (1, 2):
        m = graphc.compile(model, target="llvm", threads=threads)
        best = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(20_000):
                m.run(feeds)
            best.append((time.perf_counter() - start) / 20_000 * 1e6)
        print(f"one-op model, threads={threads}: CompiledModel.run {min(best):.2f} us per call (best of 7 x 20,000)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="torch:lstm_lm,torch:mlp")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--busy", default="0,1", help="comma-separated counts of busy processes (default 0,1)")
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--per-block", type=int, default=15)
    p.add_argument("--overhead", action="store_true", help="measure the per-call overhead instead")
    args = p.parse_args(argv)
    if args.overhead:
        call_overhead()
        return 0
    print("| model | busy processes | engine | median ms | p90 ms |\n|---|---:|---|---:|---:|")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for busy in [int(b) for b in args.busy.split(",")]:
            for engine, t in under_load(name, args.threads, busy, args.blocks, args.per_block).items():
                print(f"| {name} | {busy} | {engine} | {np.median(t):.2f} | {np.percentile(t, 90):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
