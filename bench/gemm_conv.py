"""GFLOP/s of graphc's llvm GEMM/conv code vs numpy and onnxruntime on single-op models, and the FMA peak.

    python bench/gemm_conv.py                 # all shapes, 2 threads
    python bench/gemm_conv.py --only conv     # just the ResNet-50 convs
    python bench/gemm_conv.py --repeats 7 --threads 2

Peak: a register-only loop of 24 independent ``llvm.fma.v16f32`` chains (what 100% means on this machine),
run on 1 and on ``--threads`` threads at once. Each timing is the median of ``--inner`` runs; that is repeated
``--repeats`` times (graphc and onnxruntime interleaved) and the best median is reported, because the machine
is shared and single medians are noisy. numpy's number is its sgemm (BLAS, all its threads) on the GEMM shapes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

# (label, Cin, H, W, Cout, k, stride, pad): ResNet-50's distinct conv layers (batch 1, 224x224)
RESNET_CONVS = [
    ("conv1 7x7/2", 3, 224, 224, 64, 7, 2, 3),
    ("res2 1x1 64->64", 64, 56, 56, 64, 1, 1, 0),
    ("res2 3x3 64", 64, 56, 56, 64, 3, 1, 1),
    ("res2 1x1 64->256", 64, 56, 56, 256, 1, 1, 0),
    ("res2 1x1 256->64", 256, 56, 56, 64, 1, 1, 0),
    ("res3 3x3/2 128", 128, 56, 56, 128, 3, 2, 1),
    ("res3 3x3 128", 128, 28, 28, 128, 3, 1, 1),
    ("res3 1x1 512->128", 512, 28, 28, 128, 1, 1, 0),
    ("res4 3x3 256", 256, 14, 14, 256, 3, 1, 1),
    ("res4 1x1 1024->256", 1024, 14, 14, 256, 1, 1, 0),
    ("res4 1x1 256->1024", 256, 14, 14, 1024, 1, 1, 0),
    ("res5 3x3 512", 512, 7, 7, 512, 3, 1, 1),
    ("res5 1x1 2048->512", 2048, 7, 7, 512, 1, 1, 0),
    ("res5 1x1 512->2048", 512, 7, 7, 2048, 1, 1, 0),
]
# (label, M, K, N) for MatMul x[M,K] @ W[K,N] with constant W
GEMMS = [
    ("square 512", 512, 512, 512),
    ("FC batch-1 2048->1000", 1, 2048, 1000),
    ("transformer 128x512x2048", 128, 512, 2048),
    ("transformer 128x2048x512", 128, 2048, 512),
]


def fma_peak(threads: int) -> tuple[float, float]:
    """(GFLOP/s of one thread, of ``threads`` threads together) on bench/peak.py's register-only FMA loop."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peak import measure_peak_gflops

    return measure_peak_gflops(1), measure_peak_gflops(threads)


def conv_model(cin, h, w, cout, k, stride, pad):
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((cout, cin, k, k)).astype(np.float32) * 0.05, "w")
    bias = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[stride, stride],
                            pads=[pad] * 4)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [weights, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def matmul_model(m, k, n):
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _median_time(fn, inner: int) -> float:
    times = []
    for _ in range(inner):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(model, feeds: dict, threads: int, repeats: int, inner: int, np_fn=None) -> dict:
    import onnxruntime as ort

    import graphc

    compiled = graphc.compile(model, target="llvm", threads=threads)
    desc = compiled.executable.describe()["specializations"][0]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    got = compiled.run(feeds)
    got = got[0] if isinstance(got, (list, tuple)) else next(iter(got.values()))
    want = sess.run(None, feeds)[0]
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    best = {"graphc": np.inf, "ort": np.inf, "numpy": np.inf}
    for _ in range(repeats):
        best["graphc"] = min(best["graphc"], _median_time(lambda: compiled.run(feeds), inner))
        best["ort"] = min(best["ort"], _median_time(lambda: sess.run(None, feeds), inner))
        if np_fn is not None:
            best["numpy"] = min(best["numpy"], _median_time(np_fn, inner))
    return {"times": best, "rel_err": err, "fallbacks": desc["fallback_ops"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=7)
    parser.add_argument("--only", choices=["conv", "gemm", "peak"], default=None)
    args = parser.parse_args()

    one, many = fma_peak(args.threads)
    print(f"FMA peak (register-only llvm.fma.v16f32 loop): 1 thread {one:.1f} GFLOP/s, "
          f"{args.threads} threads {many:.1f} GFLOP/s")
    if args.only == "peak":
        return
    peak = max(many, one)
    header = f"{'shape':30s} {'GFLOP':>7s} {'graphc ms':>9s} {'GF/s':>6s} {'%peak':>6s} {'ort ms':>8s} {'GF/s':>6s} " \
             f"{'numpy GF/s':>10s} {'speedup vs ort':>14s}"
    print(header)
    rows = []
    if args.only in (None, "conv"):
        for label, cin, h, w, cout, k, s, p in RESNET_CONVS:
            oh = (h + 2 * p - k) // s + 1
            flops = 2 * cout * oh * oh * cin * k * k
            x = np.random.default_rng(1).standard_normal((1, cin, h, w)).astype(np.float32)
            rows.append((label, flops, measure(conv_model(cin, h, w, cout, k, s, p), {"x": x}, args.threads,
                                               args.repeats, args.inner)))
            _print_row(*rows[-1], peak)
    if args.only in (None, "gemm"):
        for label, m, k, n in GEMMS:
            rng = np.random.default_rng(1)
            a = rng.standard_normal((m, k)).astype(np.float32)
            w = rng.standard_normal((k, n)).astype(np.float32)
            rows.append((label, 2 * m * k * n, measure(matmul_model(m, k, n), {"x": a}, args.threads, args.repeats,
                                                      args.inner, np_fn=lambda a=a, w=w: a @ w)))
            _print_row(*rows[-1], peak)
    ratios = [r[2]["times"]["ort"] / r[2]["times"]["graphc"] for r in rows]
    print(f"geomean speedup vs onnxruntime: {float(np.exp(np.mean(np.log(ratios)))):.2f}x over {len(rows)} shapes")


def _print_row(label, flops, res, peak) -> None:
    t = res["times"]
    gf = flops / t["graphc"] / 1e9
    np_gf = flops / t["numpy"] / 1e9 if np.isfinite(t["numpy"]) else float("nan")
    flag = "" if not res["fallbacks"] and res["rel_err"] < 1e-4 else f"  !! err {res['rel_err']:.1e} {res['fallbacks']}"
    print(f"{label:30s} {flops / 1e9:7.3f} {t['graphc'] * 1e3:9.3f} {gf:6.1f} {100 * gf / peak:5.0f}% "
          f"{t['ort'] * 1e3:8.3f} {flops / t['ort'] / 1e9:6.1f} {np_gf:10.1f} {t['ort'] / t['graphc']:13.2f}x{flag}")


if __name__ == "__main__":
    main()
