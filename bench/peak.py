"""The machine's sustained fp32 peak, measured: an LLVM kernel of independent FMAs on registers.

    python bench/peak.py [--threads N]

Each thread runs 12 independent <16 x float> FMA chains (enough to cover the FMA latency on every core we
know of) for a fixed number of iterations; nothing touches memory, so the GFLOP/s it reaches is what the
cores can do, the denominator of every "% of peak" in docs/benchmarks.md. The vector width follows the host:
16 floats with AVX-512, 8 with AVX2.
"""

from __future__ import annotations

import argparse
import ctypes
import threading
import time

from llvmlite import ir

CHAINS = 12
ITERATIONS = 2_000_000


def _kernel():
    from graphc.backends.llvm.jit import JitModule, host_features, new_module, optimize

    width = 16 if "avx512f" in host_features() else 8
    f32, i64 = ir.FloatType(), ir.IntType(64)
    vec = ir.VectorType(f32, width)
    module = new_module("peak")
    fma = ir.Function(module, ir.FunctionType(vec, [vec, vec, vec]), name=f"llvm.fma.v{width}f32")
    fn = ir.Function(module, ir.FunctionType(f32, [i64]), name="peak")
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    a = ir.Constant(vec, [0.999999] * width)
    c = ir.Constant(vec, [1e-7] * width)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64)
    i.add_incoming(ir.Constant(i64, 0), entry)
    accs = []
    for k in range(CHAINS):
        acc = b.phi(vec)
        acc.add_incoming(ir.Constant(vec, [float(k + 1)] * width), entry)
        accs.append(acc)
    new = [b.call(fma, [acc, a, c]) for acc in accs]
    for acc, n in zip(accs, new):
        acc.add_incoming(n, loop)
    nxt = b.add(i, ir.Constant(i64, 1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, fn.args[0]), loop, done)
    b.position_at_end(done)
    total = new[0]
    for n in new[1:]:
        total = b.fadd(total, n)
    b.ret(b.extract_element(total, ir.Constant(ir.IntType(32), 0)))
    jit = JitModule(optimize(module))
    return jit, ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64)(jit.address("peak")), width


def measure_peak_gflops(threads: int = 1, repeats: int = 3) -> float:
    """Best of ``repeats`` GFLOP/s of ``threads`` threads running the FMA kernel at once."""
    jit, fn, width = _kernel()
    flops = 2 * width * CHAINS * ITERATIONS
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=fn, args=(ITERATIONS,)) for _ in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, threads * flops / (time.perf_counter() - start) / 1e9)
    del jit
    return best


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    print(f"{measure_peak_gflops(args.threads):.1f} GFLOP/s fp32 with {args.threads} thread(s)")
