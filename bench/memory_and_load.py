"""Peak resident memory of graphc vs onnxruntime, and artifact load time, each measured in a fresh process.

    python bench/memory_and_load.py                      # all 9 zoo models, random weights
    python bench/memory_and_load.py --models resnet50 --threads 2 --repeat 3
    python bench/memory_and_load.py --models torch:mlp,torch:transformer   # PyTorch-exported (needs torch)

A child writes each model (random weights) to ``NAME.onnx`` and seeded inputs to ``NAME.npz`` once; then, per
model and engine, a fresh child process is given the file the way a user gives it to that engine and reports its
peak RSS (``ru_maxrss``):

- **graphc**: ``graphc.compile(path)`` (it reads the file itself; the compile time includes that read) + 5 runs;
  the peak is read *before* the artifact is saved for the load child (saving is not part of a run);
- **onnxruntime**: ``InferenceSession(path)`` (it reads the file itself) + 5 runs;
- **load**: ``graphc.load(artifact)`` + one run: the time of ``graphc.load`` (after ``import graphc``, which is
  reported apart), of that first run, and the peak RSS of this ahead-of-time path (with a C toolchain at save
  time the artifact's shared libraries run without LLVM; the load log says which code ran), set against
  onnxruntime's like the compile-and-run peak.

With ``--repeat N`` every child runs N times and each figure is the median (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
mode, onnx_path, feeds_path, gcx_path, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
import numpy as np
if mode == "prepare":
    import os, onnx
    name = gcx_path
    if name.startswith("torch:"):  # exported from PyTorch's modules (bench/torch_models.py; needs torch)
        sys.path.insert(0, os.environ["GRAPHC_BENCH_DIR"])
        from torch_models import export
        proto, feeds, _ = export(name[len("torch:"):])
        np.savez(feeds_path, **feeds)
    else:
        from graphc import zoo
        proto = zoo.load(name, weights="random")
        np.savez(feeds_path, **zoo.sample_inputs(proto, seed=1))
    onnx.save(proto, onnx_path)
    print("{}")
    sys.exit(0)
feeds = dict(np.load(feeds_path))
out = {}
if mode == "onnxruntime":
    import onnxruntime as ort
    options = ort.SessionOptions(); options.intra_op_num_threads = threads; options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, feeds)
else:
    t = time.perf_counter(); import graphc; out["import_s"] = time.perf_counter() - t
    if mode == "load":
        t, c = time.perf_counter(), time.process_time()
        model = graphc.load(gcx_path)
        out["load_s"], out["load_cpu_s"] = time.perf_counter() - t, time.process_time() - c
        t = time.perf_counter(); model.run(feeds); out["first_run_s"] = time.perf_counter() - t
        out["log"] = model.executable.describe().get("load") if hasattr(model.executable, "describe") else None
    else:
        t = time.perf_counter()
        model = graphc.compile(onnx_path, threads=threads)
        out["compile_s"] = time.perf_counter() - t
        for _ in range(5):
            model.run(feeds)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if mode == "graphc":
    model.save(gcx_path)  # after the peak was read: the load child needs it, a run does not
print(json.dumps(out))
"""


def child(mode: str, files: tuple[str, str, str], threads: int) -> dict:
    env = dict(os.environ, GRAPHC_BENCH_DIR=os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", CHILD, mode, *files, str(threads)], capture_output=True, text=True,
                          env=env)
    if done.returncode:
        raise SystemExit(f"{mode} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


ZOO = "resnet50,densenet121,inception_v1,inception_v2,shufflenet,squeezenet,vgg19,bvlc_alexnet,zfnet512"


def main() -> int:
    # This process imports nothing heavy and never holds a model: Linux carries the RSS high-water mark of the
    # process that spawns a child into the child's ru_maxrss (at exec), so a big parent would floor every figure.
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=ZOO)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="run every child this many times; report medians")
    args = parser.parse_args()
    # both graphc paths against onnxruntime: compile-and-run (a model given as .onnx) and load-and-run (the
    # ahead-of-time artifact, the production path); neither alone is the whole story
    print("| model | graphc compile+run peak RSS MB | onnxruntime peak RSS MB | ratio | graphc load+run peak RSS MB | "
          "ratio | compile s | artifact load s (fresh process) | load / compile | first run s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            stem = name.replace(":", "_")
            files = tuple(os.path.join(tmp, f"{stem}.{ext}") for ext in ("onnx", "npz", "gcx"))
            child("prepare", (files[0], files[1], name), args.threads)
            ours, theirs, loaded = [], [], []
            for _ in range(args.repeat):
                ours.append(child("graphc", files, args.threads))
                theirs.append(child("onnxruntime", files, args.threads))
                loaded.append(child("load", files, args.threads))
            rss_ours, rss_theirs = median_of(ours, "peak_rss_mb"), median_of(theirs, "peak_rss_mb")
            compile_s, load_s = median_of(ours, "compile_s"), median_of(loaded, "load_s")
            ratios = sorted(f"{lo['load_s'] / co['compile_s']:.1%}" for lo, co in zip(loaded, ours))
            rss_loaded = median_of(loaded, "peak_rss_mb")
            print(f"| {name} | {rss_ours:.0f} | {rss_theirs:.0f} | {rss_ours / rss_theirs:.2f} | "
                  f"{rss_loaded:.0f} | {rss_loaded / rss_theirs:.2f} | {compile_s:.2f} | {load_s:.3f} | "
                  f"{load_s / compile_s:.1%} | {median_of(loaded, 'first_run_s'):.3f} |", flush=True)
            notes.append(f"- {name}: load / compile per run {', '.join(ratios)}; `import graphc` "
                         f"{median_of(loaded, 'import_s'):.2f} s; load CPU time "
                         f"{median_of(loaded, 'load_cpu_s'):.3f} s; load log: {loaded[-1].get('log')}")
    print("\n" + "\n".join(notes))
    print(f"\nCommand: `python bench/memory_and_load.py --models {args.models} --threads {args.threads} "
          f"--repeat {args.repeat}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
