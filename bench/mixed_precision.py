"""graphc precision="mixed" (bfloat16 operands, fp32 accumulation) against graphc fp32, side by side with
onnxruntime fp32 and, when it is installed, OpenVINO in fp32 and bf16 (``INFERENCE_PRECISION_HINT``).

    python bench/mixed_precision.py --models resnet50,squeezenet --threads 2

Every engine runs in this process on the same seeded input with the same thread count; each engine's calls
run in a block of their own (see :func:`graphc.bench.time_in_blocks`), median of ``--repeat`` calls. Models
are the zoo's random-weight copies with the trailing Softmax removed, so that the error columns compare
logits (a saturated softmax hides differences): ``rel err`` is ``max|y - y32| / max|y32|`` of graphc mixed
against the fp32 reference executor, ``top-1`` whether the class agrees. ``speedup`` is graphc fp32 ms / graphc
mixed ms. The output is a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import numpy as np

from graphc import zoo
from graphc.bench import DEFAULT_WARMUP, import_onnxruntime, ort_session, resolve_threads, time_in_blocks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_zoo import machine  # noqa: E402

HEADER = ("| model | graphc fp32 ms | graphc mixed ms | speedup | rel err | top-1 | onnxruntime fp32 ms "
          "| OpenVINO fp32 ms | OpenVINO bf16 ms |\n|---|---:|---:|---:|---:|---|---:|---:|---:|")


def logits_model(name: str, seed: int = 0):
    """The zoo model ``name`` with seeded random weights and without its trailing Softmax."""
    return zoo.without_softmax(zoo.load(name, weights="random", seed=seed))


def openvino_models(model, threads: int) -> dict:
    """{"fp32": fn, "bf16": fn} running ``model`` with OpenVINO's CPU plugin, or {} without openvino."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    ov_model = core.read_model(model.SerializeToString(), b"")
    out = {}
    for hint in ("f32", "bf16"):
        compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                        "INFERENCE_PRECISION_HINT": hint,
                                                        "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        out["fp32" if hint == "f32" else "bf16"] = request
    return out


def bench_model(name: str, threads: int, repeat: int, warmup: int) -> str:
    import graphc
    from graphc.backends.reference.executor import ReferenceExecutable

    model = logits_model(name)
    x = np.random.default_rng(0).random((1, 3, 224, 224), np.float32)
    fp32 = graphc.compile(model, threads=threads)
    mixed = graphc.compile(model, precision="mixed", threads=threads, precision_check=False)
    engines = {"fp32": lambda: fp32(x), "mixed": lambda: mixed(x)}
    feed = {model.graph.input[0].name: x}
    session = ort_session(model, threads)
    engines["ort"] = lambda: session.run(None, feed)
    for key, request in openvino_models(model, threads).items():
        engines[f"ov_{key}"] = (lambda r=request: r.infer([x]))
    times = dict(zip(engines, (np.median(s) * 1e3 for s in time_in_blocks(list(engines.values()), repeat, warmup))))
    y = mixed(x)
    y = y if isinstance(y, np.ndarray) else list(y.values())[0]
    base = ReferenceExecutable(mixed.plan, emulate_precision=False).run([x])[0]
    rel = float(np.abs(y.astype(np.float64) - base).max() / np.abs(base).max())
    top1 = "same" if int(y.argmax()) == int(base.argmax()) else "differs"
    ov32 = f"{times['ov_fp32']:.2f}" if "ov_fp32" in times else "—"
    ov16 = f"{times['ov_bf16']:.2f}" if "ov_bf16" in times else "—"
    return (f"| {name} | {times['fp32']:.2f} | {times['mixed']:.2f} | {times['fp32'] / times['mixed']:.2f} | "
            f"{rel:.1e} | {top1} | {times['ort']:.2f} | {ov32} | {ov16} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50", help="comma-separated zoo model names (default resnet50)")
    p.add_argument("--threads", type=int, default=0, help="threads for every engine (default 0: all cores)")
    p.add_argument("--repeat", type=int, default=30, help="timed runs per engine (default 30)")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed runs (default {DEFAULT_WARMUP})")
    args = p.parse_args(argv)
    import_onnxruntime()
    threads = resolve_threads(args.threads)
    print(HEADER)
    for name in (m.strip() for m in args.models.split(",") if m.strip()):
        if name not in zoo.MODELS:
            p.error(f"unknown model {name!r}; choose from {', '.join(zoo.MODELS)}")
        print(bench_model(name, threads, args.repeat, args.warmup), flush=True)
    print(f"\nCommand: `python bench/mixed_precision.py {shlex.join(sys.argv[1:] if argv is None else argv)}`; "
          f"{threads} thread(s); {machine()}; {time.strftime('%Y-%m-%d')}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
