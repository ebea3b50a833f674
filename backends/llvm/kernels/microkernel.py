"""The register-blocked fp32 GEMM microkernel and the packing loops shared by the GEMM and conv emitters.

The microkernel computes one ``MR x NR`` tile of ``A @ B`` over the *whole* K (no K blocking: the tile stays in
registers from the first to the last product, so there are no partial sums in memory and the epilogue sees the
finished tile). It is an internal LLVM function, one per ``(MR, NV)`` shape per module, shared by every kernel
of the module (compile time stays flat however many nodes use it):

    void graphc.ukr.MRxNV(i64 k, float* a, float* b, i64 ldb, float* tile, i16 lastmask)

- ``a``: a packed A panel, ``k`` steps of ``MR`` floats (``a[kk*MR + r] = A[r, kk]``, rows past M zero);
- ``b``: B rows ``kk`` at ``b + kk*ldb``, ``NV`` vectors of 16 floats each (a packed panel with ``ldb = NR``,
  a packed block with ``ldb`` its padded width, or the B matrix itself read in place); the last vector is
  loaded under ``lastmask`` (lanes past N are never read, and read as 0);
- ``tile``: where the finished ``MR x NR`` tile is stored, row-major, 64-byte aligned (per-thread scratch):
  the caller applies its epilogue from there while the tile is still in L1.

``MR x NV`` accumulators of ``<16 x float>`` live in zmm registers over the K loop (``llvm.fma.v16f32``); B is
read as ``NV`` vector loads and A as ``MR`` scalar broadcasts per K step (8 x 3 = 24 accumulators + 3 B vectors
+ 1 broadcast fit the 32 zmm registers of AVX-512).

**bf16 variant** (``precision="mixed"``, CPUs with AVX512-BF16): the same function type and loop, but one step
covers *two* K indices. Operands are bfloat16 pairs, one pair per 4-byte slot, so every pointer computation of
the driver stays the same with ``k`` counting pairs: ``a[kp*MR + r] = (A[r, 2kp], A[r, 2kp+1])`` and B row
``kp`` holds ``(B[2kp, n], B[2kp+1, n])`` in slot ``n``. ``vdpbf16ps`` (``llvm.x86.avx512bf16.dpbf16ps.512``)
adds both products of a pair into the fp32 accumulator: twice the multiply-adds of an fp32 FMA per
instruction, with fp32 accumulation. An odd K is padded with a zero pair half.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ..kernel import F32, I1, I64, VOID

I16 = ir.IntType(16)
VEC = 16  # floats per zmm register
VT = ir.VectorType(F32, VEC)


class BFloat16Type(ir.Type):
    """LLVM's ``bfloat`` (llvmlite has no class for it; only its spelling in the IR text matters)."""

    def _to_string(self) -> str:
        return "bfloat"

    def __eq__(self, other) -> bool:
        return isinstance(other, BFloat16Type)

    def __hash__(self) -> int:
        return hash("bfloat")


BF16 = BFloat16Type()
VBF_PAIRS = ir.VectorType(BF16, 2 * VEC)  # one zmm of bf16 pairs: 16 columns x 2 K indices


def splat(bld: ir.IRBuilder, x: ir.Value, width: int = VEC) -> ir.Value:
    """<width x float> with every lane ``x`` (LLVM turns it into a broadcast, folded into the FMA's operand)."""
    vt = ir.VectorType(x.type, width)
    v = bld.insert_element(ir.Constant(vt, None), x, ir.Constant(ir.IntType(32), 0))
    return bld.shuffle_vector(v, ir.Constant(vt, None), ir.Constant(ir.VectorType(ir.IntType(32), width), None))

# (MR, NV) for the general case, and for small M (GEMV-like: few rows, wider tiles to keep enough
# independent accumulators and stream B once)
MR_MAIN, NV_MAIN = 8, 3
SMALL_M_SHAPES = {1: 8, 2: 6, 3: 6, 4: 5, 5: 4, 6: 4, 7: 3}


def tile_shape(m: int) -> tuple[int, int]:
    """(MR, NV) of the microkernel used for a GEMM with ``m`` rows."""
    if m >= MR_MAIN:
        return MR_MAIN, NV_MAIN
    return m, SMALL_M_SHAPES[m]


def has_bf16_dot() -> bool:
    """Whether this CPU has AVX512-BF16's ``vdpbf16ps`` (else the bf16 microkernel widens pairs to fp32)."""
    from ..jit import host_features

    return "avx512bf16" in host_features()


UKR_TYPE = ir.FunctionType(VOID, [I64, F32.as_pointer(), F32.as_pointer(), I64, F32.as_pointer(), I16])


def microkernel(module: ir.Module, mr: int, nv: int, bf16: bool = False) -> ir.Function:
    """The ``MR x (NV*16)`` microkernel function of ``module`` (built on first use); ``bf16``: the pair variant."""
    name = f"graphc.ukr.{'bf16.' if bf16 else ''}{mr}x{nv}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    vt = VT
    fn = ir.Function(module, UKR_TYPE, name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    k, a, b, ldb, tile, lastmask = fn.args
    for p in (a, b, tile):
        p.add_attribute("noalias")
    if bf16 and has_bf16_dot():
        dot = _declare(module, "llvm.x86.avx512bf16.dpbf16ps.512", vt, [vt, VBF_PAIRS, VBF_PAIRS])

        def fma(a_splat, b_vec, acc):
            return bld.call(dot, [acc, bld.bitcast(a_splat, VBF_PAIRS), bld.bitcast(b_vec, VBF_PAIRS)])
    elif bf16:  # no bf16 dot product on this CPU: widen each half of the pairs and do two fp32 FMAs
        fma_fn = _declare(module, "llvm.fma.v16f32", vt, [vt, vt, vt])
        vi = ir.VectorType(ir.IntType(32), VEC)
        shift = ir.Constant(vi, [16] * VEC)
        high = ir.Constant(vi, [-65536] * VEC)  # 0xffff0000

        def halves(x):
            xi = bld.bitcast(x, vi)
            return bld.bitcast(bld.shl(xi, shift), vt), bld.bitcast(bld.and_(xi, high), vt)

        def fma(a_splat, b_vec, acc):
            (a_lo, a_hi), (b_lo, b_hi) = halves(a_splat), halves(b_vec)
            return bld.call(fma_fn, [a_hi, b_hi, bld.call(fma_fn, [a_lo, b_lo, acc])])
    else:
        fma_fn = _declare(module, "llvm.fma.v16f32", vt, [vt, vt, vt])

        def fma(a_splat, b_vec, acc):
            return bld.call(fma_fn, [a_splat, b_vec, acc])
    mload = _declare(module, "llvm.masked.load.v16f32.p0", vt,
                     [vt.as_pointer(), ir.IntType(32), ir.VectorType(I1, VEC), vt])
    entry = fn.append_basic_block("entry")
    loop = fn.append_basic_block("loop")
    done = fn.append_basic_block("done")
    bld = ir.IRBuilder(entry)
    mask = bld.bitcast(lastmask, ir.VectorType(I1, VEC))
    zero = ir.Constant(vt, None)
    bld.branch(loop)

    bld.position_at_end(loop)
    kk = bld.phi(I64, name="kk")
    ap = bld.phi(F32.as_pointer(), name="ap")
    bp = bld.phi(F32.as_pointer(), name="bp")
    accs = [[bld.phi(vt, name=f"c{r}_{v}") for v in range(nv)] for r in range(mr)]
    for row in accs:
        for acc in row:
            acc.add_incoming(zero, entry)
    kk.add_incoming(ir.Constant(I64, 0), entry)
    ap.add_incoming(a, entry)
    bp.add_incoming(b, entry)
    bvecs = []
    for v in range(nv):
        ptr = bld.bitcast(bld.gep(bp, [ir.Constant(I64, 16 * v)], inbounds=True), vt.as_pointer())
        if v == nv - 1:
            bvecs.append(bld.call(mload, [ptr, ir.Constant(ir.IntType(32), 4), mask, zero]))
        else:
            bvecs.append(bld.load(ptr, align=4))
    new = []
    for r in range(mr):
        av = splat(bld, bld.load(bld.gep(ap, [ir.Constant(I64, r)], inbounds=True), align=4))
        new.append([fma(av, bvecs[v], accs[r][v]) for v in range(nv)])
    ap_next = bld.gep(ap, [ir.Constant(I64, mr)], inbounds=True)
    bp_next = bld.gep(bp, [ldb], inbounds=True)
    kk_next = bld.add(kk, ir.Constant(I64, 1))
    for r in range(mr):
        for v in range(nv):
            accs[r][v].add_incoming(new[r][v], loop)
    kk.add_incoming(kk_next, loop)
    ap.add_incoming(ap_next, loop)
    bp.add_incoming(bp_next, loop)
    bld.cbranch(bld.icmp_signed("<", kk_next, k), loop, done)

    bld.position_at_end(done)
    for r in range(mr):
        for v in range(nv):
            ptr = bld.bitcast(bld.gep(tile, [ir.Constant(I64, (r * nv + v) * VEC)], inbounds=True), vt.as_pointer())
            bld.store(new[r][v], ptr, align=64)
    bld.ret_void()
    return fn


def _declare(module: ir.Module, name: str, ret: ir.Type, args: list) -> ir.Function:
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name=name)
    return fn


def lane_mask(n_valid: int) -> int:
    """The i16 mask of the last vector of a run of ``n_valid`` (> 0) columns."""
    rem = n_valid % VEC
    return 0xFFFF if rem == 0 else (1 << rem) - 1


def mask_constant(n_valid: int) -> ir.Constant:
    m = lane_mask(n_valid)
    return ir.Constant(I16, m - (1 << 16) if m >= 1 << 15 else m)


# -- compile-time packing (constant operands) -------------------------------------------------------------------


def pack_a_const(a: np.ndarray, mr: int) -> np.ndarray:
    """A (M, K) -> panels (ceil(M/MR), K, MR), zero rows past M, flat float32."""
    m, k = a.shape
    panels, full = -(-m // mr), m // mr
    out = np.empty((panels, k, mr), np.float32)  # one strided copy (this runs at every compile and load)
    out[:full] = a[:full * mr].reshape(full, mr, k).transpose(0, 2, 1)
    if full < panels:
        out[full] = 0.0
        out[full, :, :m - full * mr] = a[full * mr:].T
    return out.reshape(-1)


def pack_b_const(b: np.ndarray, nr: int, out: np.ndarray | None = None) -> np.ndarray:
    """B (K, N) -> panels (ceil(N/NR), K, NR), zero columns past N, flat float32; written panel by panel into
    ``out`` (or a new array): no padded or transposed copy of the whole matrix (FC weights run to 400 MB)."""
    k, n = b.shape
    panels = -(-n // nr)
    if out is None:
        out = np.empty(panels * k * nr, np.float32)
    view = out.reshape(panels, k, nr)
    for p in range(panels):
        w = min(nr, n - p * nr)
        view[p, :, :w] = b[:, p * nr:p * nr + w]
        if w < nr:
            view[p, :, w:] = 0.0
    return out


def bf16_pairs(x: np.ndarray, axis: int) -> np.ndarray:
    """float32 ``x`` rounded to bfloat16 (nearest even) with ``axis`` (even length after a zero pad) folded
    into pairs: the result has that axis halved, and each element is a uint32 holding (x[2i], x[2i+1]) as
    (low, high) halves, the order ``vdpbf16ps`` reads them in."""
    from ml_dtypes import bfloat16

    x = np.moveaxis(np.asarray(x, np.float32), axis, -1)
    if x.shape[-1] % 2:
        x = np.concatenate([x, np.zeros(x.shape[:-1] + (1,), np.float32)], axis=-1)
    bits = np.ascontiguousarray(x.astype(bfloat16)).view(np.uint16).astype(np.uint32)
    pairs = bits[..., 0::2] | (bits[..., 1::2] << 16)
    return np.moveaxis(pairs, -1, axis)


def pack_a_const_bf16(a: np.ndarray, mr: int) -> np.ndarray:
    """A (M, K) -> panels (ceil(M/MR), ceil(K/2), MR) of bf16 pairs (uint32), zero rows past M."""
    pairs = bf16_pairs(a, axis=1)  # (M, Kp)
    m, kp = pairs.shape
    panels = -(-m // mr)
    out = np.zeros((panels * mr, kp), np.uint32)
    out[:m] = pairs
    return np.ascontiguousarray(out.reshape(panels, mr, kp).transpose(0, 2, 1)).reshape(-1)


def pack_b_const_bf16(b: np.ndarray, nr: int, out: np.ndarray | None = None) -> np.ndarray:
    """B (K, N) -> panels (ceil(N/NR), ceil(K/2), NR) of bf16 pairs (uint32), zero columns past N; panel by
    panel, like :func:`pack_b_const`."""
    k, n = b.shape
    kp, panels = -(-k // 2), -(-n // nr)
    if out is None:
        out = np.empty(panels * kp * nr, np.uint32)
    view = out.reshape(panels, kp, nr)
    for p in range(panels):
        w = min(nr, n - p * nr)
        view[p, :, :w] = bf16_pairs(b[:, p * nr:p * nr + w], axis=0)
        if w < nr:
            view[p, :, w:] = 0
    return out
