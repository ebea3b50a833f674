"""Benchmark graphc against onnxruntime over the light model zoo and print a markdown table.

    python bench/run_zoo.py                                  # all 9 models, all cores
    python bench/run_zoo.py --models squeezenet,resnet50 --threads 4 --repeat 50 --weights random

For each model both engines run in this process on the same seeded inputs with the same thread count (see
:mod:`graphc.bench` for the method). The table gives median milliseconds, the ratio graphc/onnxruntime (below 1:
graphc is faster), GFLOP/s of each, and whether the outputs agree; below it the geometric mean of the ratios
over the models that ran, the exact command line, and the machine. A model graphc cannot compile yet is listed
with its error and left out of the mean. The output is meant to be pasted into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import traceback

from graphc import zoo
from graphc.bench import (DEFAULT_REPEAT, DEFAULT_WARMUP, WEIGHTS, BenchResult, bench, geometric_mean,
                          import_onnxruntime, resolve_threads)
from graphc.errors import GraphcError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/torch_models.py, also when loaded by path
import torch_models  # noqa: E402  (imports torch only when a model is built)

TORCH_MODELS = tuple(torch_models.MODELS)
HEADER = ("| model | graphc ms | onnxruntime ms | ratio | graphc GFLOP/s | graphc % of peak | onnxruntime GFLOP/s "
          "| compile s | fallback ops | outputs |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---|---|")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(zoo.MODELS),
                   help=f"comma-separated zoo model names (default: all: {','.join(zoo.MODELS)}); "
                        f"torch:NAME adds a model exported from PyTorch ({', '.join(TORCH_MODELS)}; needs torch)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the torch:NAME models (default 1)")
    p.add_argument("--threads", type=int, default=0, help="threads for both engines (default 0: all cores)")
    p.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help=f"timed runs (default {DEFAULT_REPEAT})")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed runs (default {DEFAULT_WARMUP})")
    p.add_argument("--target", choices=("llvm", "cuda", "reference"), default=None,
                   help="graphc target (default: llvm when available)")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="the machine's fp32 peak for the threads used, for the %% of peak column (default: "
                        "measured with bench/peak.py's FMA kernel)")
    p.add_argument("--weights", choices=WEIGHTS, default="constant",
                   help="constant (the zoo's own 0.02 fills) or seeded random weights (default constant)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    known = set(zoo.MODELS) | {f"torch:{m}" for m in TORCH_MODELS}
    unknown = [m for m in args.models if m not in known]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    return args


def source(name: str, batch: int):
    """What to hand to bench(): "zoo:NAME", or the ONNX export of a torch:NAME model at ``batch``."""
    if not name.startswith("torch:"):
        return f"zoo:{name}", name
    return torch_models.export(name[len("torch:"):], batch)[0], f"{name} (batch {batch})"


def row(result: BenchResult, peak: float | None, fallback_ops: list[str]) -> str:
    g, o = result.graphc, result.ort
    gflops = (lambda t: f"{t.gflops(result.flops):.2f}" if result.flops else "-")
    share = f"{100 * g.gflops(result.flops) / peak:.0f} %" if peak and result.flops else "-"
    agree = "agree" if result.agree else f"DIFFER (max rel {result.max_rel_err:.2g})"
    return (f"| {result.model} | {g.median_ms:.2f} | {o.median_ms:.2f} | {result.ratio:.2f} | {gflops(g)} | "
            f"{share} | {gflops(o)} | {result.compile_seconds:.1f} | {', '.join(fallback_ops) or 'none'} | "
            f"{agree} |")


def error_row(model: str, message: str) -> str:
    message = " ".join(message.split()).replace("|", "\\|")
    if len(message) > 160:
        message = message[:157] + "..."
    return f"| {model} | - | - | - | - | - | - | - | - | error: {message} |"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}; {os.cpu_count()} logical CPUs; {platform.system()} {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    import graphc

    args = parse_args(argv)
    try:
        ort = import_onnxruntime()
    except GraphcError as exc:
        print(f"run_zoo: {exc}", file=sys.stderr)
        return 2
    threads = resolve_threads(args.threads)
    peak = args.peak_gflops
    if peak is None:
        from peak import measure_peak_gflops

        peak = measure_peak_gflops(threads)
    lines, ratios, targets = [HEADER], [], set()
    for name in args.models:
        started = time.perf_counter()
        try:
            model, label = source(name, args.batch)
            result = bench(model, vs="onnxruntime", threads=threads, repeat=args.repeat, warmup=args.warmup,
                           target=args.target, weights=args.weights if model == f"zoo:{name}" else "constant",
                           name=label)
        except GraphcError as exc:
            lines.append(error_row(name, str(exc)))
            print(f"{name}: error: {exc}", file=sys.stderr)
            continue
        except Exception as exc:  # a graphc bug: record it and go on with the other models
            lines.append(error_row(name, f"internal error: {type(exc).__name__}: {exc}"))
            print(f"{name}: internal error:", file=sys.stderr)
            traceback.print_exc()
            continue
        lines.append(row(result, peak, result.fallback_ops))
        ratios.append(result.ratio)
        targets.add(result.target)
        print(f"{name}: ratio {result.ratio:.2f} ({time.perf_counter() - started:.1f}s)", file=sys.stderr)
    gmean = geometric_mean(ratios)
    given = sys.argv[1:] if argv is None else list(argv)
    command = "python " + shlex.join([os.path.relpath(__file__), *given])
    print("\n".join(lines))
    print()
    if gmean is not None:
        print(f"Geometric mean ratio graphc/onnxruntime over {len(ratios)} model(s): **{gmean:.2f}** "
              "(below 1: graphc faster).")
    else:
        print("No model ran on both engines.")
    print()
    print(f"Command: `{command}`  ")
    target = ",".join(sorted(targets)) or args.target or "default"
    print(f"target={target}, threads={threads}, repeat={args.repeat}, warmup={args.warmup}, weights={args.weights}, "
          f"graphc {graphc.__version__}, onnxruntime {ort.__version__}, Python {platform.python_version()}  ")
    print(f"Machine: {machine()}; fp32 peak for {threads} thread(s): {peak:.0f} GFLOP/s "
          f"({'given' if args.peak_gflops else 'measured by bench/peak.py'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
