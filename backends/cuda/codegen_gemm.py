"""Tiled GEMM kernels for Conv (implicit GEMM), Gemm and MatMul, with the fused elementwise epilogue.

The product C[z][m][n] = sum_k A[z][m][k] * B[z][k][n] is computed in 64x64 tiles of C by 256 threads; each
step stages a 64x16 slice of A and a 16x64 slice of B in shared memory (``__syncthreads`` between staging and
use) and every thread accumulates a 4x4 block of C in registers (fp32 accumulation). For a convolution
(2-D, any stride/padding/dilation/groups) ``m`` is the output pixel (batch, oh, ow), ``n`` the output
channel within the group (``z`` = group), ``k`` = (input channel, kh, kw): A is read through the implicit
im2col index, with zeros outside the padded input. For MatMul ``z`` is the broadcast batch.

The epilogue runs on the accumulator before anything is stored: the element generator evaluates the group's
outputs at the output index with the complex op's value replaced by ``acc`` (plus its own bias), so a
Conv + BatchNorm + Add + Relu writes its output once. The thread layout makes the stores coalesced: for Conv
consecutive threads own consecutive pixels (NCHW), for Gemm/MatMul consecutive columns.

Small problems (a depthwise convolution, a 1x1 matrix product, K or N tiny) go to the grid-stride loop
kernel's direct convolution / dot product: ``gemm_kernel`` returns None for them.
"""

from __future__ import annotations

import numpy as np

from .codegen_expr import broadcast_index, conv_geometry, dtype_of, static_shape
from .dtypes import Unsupported, literal
from .emitter import linear
from .kernel import Frame, Kernel

BM, BN, BK, THREADS, TM, TN = 64, 64, 16, 256, 4, 4
MIN_MACS = 1 << 18


def gemm_kernel(frame: Frame, node) -> Kernel | None:
    out = node.outputs[0]
    if dtype_of(out) != np.float32 or any(static_shape(o) != static_shape(out) for o in frame.inner_outputs):
        return None
    if any(x is None or id(x) not in frame.gen.args for x in node.inputs[:2]):
        return None
    try:
        spec = _conv_spec(frame, node) if node.op_type == "Conv" else _matmul_spec(frame, node)
    except Unsupported:
        return None
    if spec is None:
        return None
    M, N, K, Z = spec["M"], spec["N"], spec["K"], spec["Z"]
    if M * N * K < MIN_MACS or N < 8 or M < 8 or Z > 65535 or -(-N // BN) > 65535:
        return None
    return _emit(frame, node, spec)


def _conv_spec(frame, node):
    g = conv_geometry(frame.gen, node)
    if len(g["xs"]) != 4 or g["ocg"] < 8:
        return None
    xs, ys = g["xs"], g["ys"]
    kh, kw = g["kernel"]
    x, w = (frame.gen.args[id(node.inputs[i])] for i in (0, 1))
    sh, sw = g["strides"]
    dh, dw = g["dilations"]
    ph, pw = g["pads"]
    ohw, khw = ys[2] * ys[3], kh * kw

    def a_load(em, m, k):
        nb = em.let("int", f"{m} / {ohw}", "nb") if xs[0] > 1 else "0"
        r = em.let("int", f"{m} % {ohw}", "r")
        ih = em.let("int", f"({r} / {ys[3]}) * {sh} - {ph} + (({k} % {khw}) / {kw}) * {dh}", "ih")
        iw = em.let("int", f"({r} % {ys[3]}) * {sw} - {pw} + ({k} % {kw}) * {dw}", "iw")
        ic = em.let("int", f"z * {g['icg']} + {k} / {khw}", "ic")
        return (f"({ih} >= 0 && {ih} < {xs[2]} && {iw} >= 0 && {iw} < {xs[3]}) ? "
                f"{x}[(({nb} * {xs[1]} + {ic}) * {xs[2]} + {ih}) * {xs[3]} + {iw}] : 0.0f")

    def b_load(em, k, n):
        return f"{w}[(z * {g['ocg']} + {n}) * {g['icg'] * khw} + {k}]"

    def out_index(em, m, n):
        nb = em.let("int", f"{m} / {ohw}", "nb") if xs[0] > 1 else "0"
        r = em.let("int", f"{m} % {ohw}", "r")
        oc = em.let("int", f"z * {g['ocg']} + {n}", "oc")
        return [nb, oc, em.let("int", f"{r} / {ys[3]}", "oh"), em.let("int", f"{r} % {ys[3]}", "ow")]

    bias = node.inputs[2] if len(node.inputs) > 2 else None

    def finish(gen, idx, acc):
        return f"{acc} + {gen.value(bias, [idx[1]])}" if bias is not None else acc

    return dict(M=xs[0] * ohw, N=g["ocg"], K=g["icg"] * khw, Z=g["group"], a=a_load, b=b_load, out=out_index,
                finish=finish, m_fast=True, a_m_fast=True, b_k_fast=True, zdecode=lambda em: None)


def _matmul_spec(frame, node):
    a_v, b_v = node.inputs[0], node.inputs[1]
    ash, bsh, ysh = static_shape(a_v), static_shape(b_v), static_shape(node.outputs[0])
    A, B = frame.gen.args[id(a_v)], frame.gen.args[id(b_v)]
    if node.op_type == "Gemm":
        ctx = frame.gen.ctx(node)
        ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
        M, N = ysh
        K = ash[0] if ta else ash[1]
        alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
        c = node.inputs[2] if len(node.inputs) > 2 else None

        def finish(gen, idx, acc):
            y = acc if alpha == 1.0 else f"{literal(alpha, np.float32)} * {acc}"
            if c is not None:
                cv = gen.value(c, broadcast_index(idx, ysh, static_shape(c)))
                y = f"{y} + {cv}" if beta == 1.0 else f"{y} + {literal(beta, np.float32)} * {cv}"
            return y

        return dict(M=M, N=N, K=K, Z=1, a=lambda em, m, k: f"{A}[{k} * {M} + {m}]" if ta else f"{A}[{m} * {K} + {k}]",
                    b=lambda em, k, n: f"{B}[{n} * {K} + {k}]" if tb else f"{B}[{k} * {N} + {n}]",
                    out=lambda em, m, n: [m, n], finish=lambda gen, idx, acc: finish(gen, idx, acc),
                    m_fast=False, a_m_fast=bool(ta), b_k_fast=bool(tb), zdecode=lambda em: None)
    if len(ash) < 2 or len(bsh) < 2:
        return None
    M, K, N = ash[-2], ash[-1], bsh[-1]
    batch = ysh[:-2]
    Z = int(np.prod(batch)) if batch else 1
    state = {}

    def zdecode(em):
        bidx = _delin(em, "z", batch)
        a_b = broadcast_index(bidx, batch, ash[:-2]) if len(ash) > 2 else []
        b_b = broadcast_index(bidx, batch, bsh[:-2]) if len(bsh) > 2 else []
        state["a"] = em.let("int", f"({linear(a_b, ash[:-2])}) * {M * K}" if a_b else "0", "za")
        state["b"] = em.let("int", f"({linear(b_b, bsh[:-2])}) * {K * N}" if b_b else "0", "zb")
        state["idx"] = bidx

    return dict(M=M, N=N, K=K, Z=Z, a=lambda em, m, k: f"{A}[{state['a']} + {m} * {K} + {k}]",
                b=lambda em, k, n: f"{B}[{state['b']} + {k} * {N} + {n}]",
                out=lambda em, m, n: list(state["idx"]) + [m, n], finish=lambda gen, idx, acc: acc,
                m_fast=False, a_m_fast=False, b_k_fast=False, zdecode=zdecode)


def _delin(em, lin, shape):
    from .emitter import delinearize

    return delinearize(em, lin, shape) if shape else []


def _emit(frame: Frame, node, s) -> Kernel:
    em, gen = frame.em, frame.gen
    M, N, K = s["M"], s["N"], s["K"]
    em.line(f"__shared__ float As[{BK}][{BM}];")
    em.line(f"__shared__ float Bs[{BK}][{BN}];")
    em.line("const int z = blockIdx.z;")
    em.line(f"const int m0 = blockIdx.x * {BM}, n0 = blockIdx.y * {BN};")
    if s["m_fast"]:
        em.line("const int tm = threadIdx.x % 16, tn = threadIdx.x / 16;")
    else:
        em.line("const int tn = threadIdx.x % 16, tm = threadIdx.x / 16;")
    em.line(f"float acc[{TM}][{TN}];")
    em.line(f"for (int i = 0; i < {TM}; ++i) for (int j = 0; j < {TN}; ++j) acc[i][j] = 0.0f;")
    s["zdecode"](em)
    with em.block(f"for (int k0 = 0; k0 < {K}; k0 += {BK})"):
        em.line("// stage the A and B tiles (zeros past the edges)")
        with em.block(f"for (int e = threadIdx.x; e < {BM * BK}; e += {THREADS})"):
            if s["a_m_fast"]:
                em.line(f"const int mm = e % {BM}, kk = e / {BM};")
            else:
                em.line(f"const int kk = e % {BK}, mm = e / {BK};")
            em.line("const int m = m0 + mm, k = k0 + kk;")
            em.line("float a = 0.0f;")
            with em.block(f"if (m < {M} && k < {K})"):
                em.line(f"a = {s['a'](em, 'm', 'k')};")
            em.line("As[kk][mm] = a;")
        with em.block(f"for (int e = threadIdx.x; e < {BK * BN}; e += {THREADS})"):
            if s["b_k_fast"]:
                em.line(f"const int kk = e % {BK}, nn = e / {BK};")
            else:
                em.line(f"const int nn = e % {BN}, kk = e / {BN};")
            em.line("const int k = k0 + kk, n = n0 + nn;")
            em.line("float b = 0.0f;")
            with em.block(f"if (k < {K} && n < {N})"):
                em.line(f"b = {s['b'](em, 'k', 'n')};")
            em.line("Bs[kk][nn] = b;")
        em.line("__syncthreads();")
        em.line("#pragma unroll")
        with em.block(f"for (int kk = 0; kk < {BK}; ++kk)"):
            em.line(f"float a[{TM}], b[{TN}];")
            em.line(f"for (int i = 0; i < {TM}; ++i) a[i] = As[kk][tm + 16 * i];")
            em.line(f"for (int j = 0; j < {TN}; ++j) b[j] = Bs[kk][tn + 16 * j];")
            em.line(f"for (int i = 0; i < {TM}; ++i) for (int j = 0; j < {TN}; ++j) acc[i][j] += a[i] * b[j];")
        em.line("__syncthreads();")
    em.line("// epilogue: the fused elementwise ops run on the accumulator, then one store per output")
    with em.block(f"for (int i = 0; i < {TM}; ++i)"):
        with em.block(f"for (int j = 0; j < {TN}; ++j)"):
            em.line("const int m = m0 + tm + 16 * i, n = n0 + tn + 16 * j;")
            with em.block(f"if (m < {M} && n < {N})"):
                idx = s["out"](em, "m", "n")
                value = s["finish"](gen, idx, "acc[i][j]")
                acc_value = em.let("float", value, "c")
                gen.overrides[id(node.outputs[0])] = lambda _idx, v=acc_value: v
                shape = static_shape(node.outputs[0])
                lin = em.let("int", linear(idx, shape), "o")
                for inner in frame.inner_outputs:
                    em.line(f"{frame.out_names[id(inner)]}[{lin}] = {gen.value(inner, idx)};")
    grid = (-(-M // BM), -(-N // BN), s["Z"])
    kind = "conv-implicit-gemm" if node.op_type == "Conv" else "gemm-tiled"
    return Kernel(frame.name, frame.source(em.text(), launch_bounds=THREADS), frame.args, grid, (THREADS, 1, 1),
                  shared_bytes=4 * BK * (BM + BN), cooperative=True, strategy=kind)
