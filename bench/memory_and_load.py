"""Peak resident memory of graphc vs onnxruntime, and artifact load time, each measured in a fresh process.

    python bench/memory_and_load.py                      # all 9 zoo models, random weights
    python bench/memory_and_load.py --models resnet50

Per model and engine a child process loads the model, runs it 5 times on seeded inputs and reports its peak
RSS (``ru_maxrss``): model loading and compilation are part of what a user pays, so they count. For graphc it
also compiles and saves an artifact, and a second child loads that artifact and runs it once, timing
``graphc.load`` and the first run (the interpreter start and ``import graphc`` are reported separately).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
import numpy as np
mode, name, path, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
import graphc
from graphc import zoo
imported = time.perf_counter() - t0
out = {"import_s": imported}
if mode == "load":
    t = time.perf_counter(); model = graphc.load(path); out["load_s"] = time.perf_counter() - t
    feeds = graphc.zoo.sample_inputs(zoo.load(name, weights="random"), seed=1)
    t = time.perf_counter(); model.run(feeds); out["first_run_s"] = time.perf_counter() - t
else:
    proto = zoo.load(name, weights="random")
    feeds = zoo.sample_inputs(proto, seed=1)
    if mode == "graphc":
        t = time.perf_counter(); model = graphc.compile(proto, threads=threads); out["compile_s"] = time.perf_counter() - t
        run = lambda: model.run(feeds)
        model.save(path)
    else:
        import onnxruntime as ort
        options = ort.SessionOptions(); options.intra_op_num_threads = threads; options.inter_op_num_threads = 1
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        run = lambda: session.run(None, feeds)
    del proto
    for _ in range(5):
        run()
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def child(mode: str, name: str, path: str, threads: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, name, path, str(threads)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    from graphc import zoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(zoo.MODELS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print("| model | graphc peak RSS MB | onnxruntime peak RSS MB | ratio | compile s | artifact load s "
          "(fresh process) | load / compile | first run s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            path = os.path.join(tmp, f"{name}.gcx")
            ours = child("graphc", name, path, args.threads)
            theirs = child("onnxruntime", name, path, args.threads)
            loaded = child("load", name, path, args.threads)
            print(f"| {name} | {ours['peak_rss_mb']:.0f} | {theirs['peak_rss_mb']:.0f} | "
                  f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f} | {ours['compile_s']:.2f} | "
                  f"{loaded['load_s']:.3f} | {loaded['load_s'] / ours['compile_s']:.1%} | "
                  f"{loaded['first_run_s']:.3f} |", flush=True)
    print(f"\nCommand: `python bench/memory_and_load.py --models {args.models} --threads {args.threads}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
