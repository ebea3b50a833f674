"""The GEMM driver: ``C[b] = A[b] @ B[b]`` for a batch of float32 problems, tiled over the shared microkernel.

Loop nest (per kernel; all shapes static):

    for each unit of work (this thread's share)         # "cols": (batch, NC-column block); "rows": MR panels
        B block <- the NC columns of B[b] (pre-packed constant panels, read in place, or packed now: im2col)
        for each MR-row panel of A[b] (pre-packed constant, or packed once per batch into scratch)
            for each NR-column panel of the block: microkernel over the whole K -> tile -> sink

The sink gets the finished tile one row run at a time (a ``<16 x float>`` vector, or scalars at the edge of N)
and stores it (the caller's epilogue: bias, activation, residual...). Threads split the dimension with more
work: NC column blocks (``cols``) when there are enough of them, else the MR row panels (``rows``, e.g. late
ResNet layers with 7x7 outputs, or FC layers of large M). NC is sized so that a packed K x NC block stays in L2.

Operand sources are small objects (see :class:`ConstA`, :class:`RuntimeA`, :class:`ConstB`, :class:`DirectB`,
:class:`PackedB`); conv.py adds its own B source that gathers the im2col columns while packing.

bf16 (``GemmGeometry.bf16``, from ``precision="mixed"``): the microkernel's bf16 pair variant runs over
``ksteps = ceil(K/2)`` steps. Constant operands are rounded and packed into pairs at compile time; a runtime A
is rounded while it is packed; a runtime B block (read in place, transposed or im2col-gathered) goes through
:class:`PairB`, which rounds it into a pair block in scratch. Accumulation and the sink stay float32.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
from llvmlite import ir

from ..kernel import F32, I64, KernelBuilder, Unsupported, builder_loop
from .microkernel import (BF16, VBF_PAIRS, VEC, VT, mask_constant, microkernel, pack_a_const, pack_a_const_bf16,
                          pack_b_const, pack_b_const_bf16, tile_shape)
from ..packed_weights import note_packed

L2_BLOCK_BYTES = 256 * 1024  # a packed K x NC block of B stays in L2 (1 MiB per core here) next to an A panel
MAX_RUNTIME_PACK_BYTES = 32 << 20  # per-thread scratch for a runtime-packed A (larger GEMMs are declined)

Sink = Callable[[KernelBuilder, ir.Value, ir.Value, ir.Value, ir.Value], None]  # (kb, batch, row, col, acc)


def c64(n) -> ir.Constant:
    return ir.Constant(I64, int(n))


def keep_out_of_line(kb: KernelBuilder) -> None:
    """Keep this kernel a function of its own: inlined into the entry function (its only caller), every
    kernel of the model would make one huge function, and LLVM's time grows faster than linearly with it."""
    if "noinline" not in kb.function.attributes:
        kb.function.attributes.add("noinline")


def batch_table(kb: KernelBuilder, offsets: np.ndarray, bi: ir.Value) -> ir.Value:
    """offsets[bi] as i64: a constant when there is one batch or all agree, else a compile-time table lookup."""
    offsets = np.asarray(offsets, np.int64).reshape(-1)
    if offsets.size == 1 or np.all(offsets == offsets[0]):
        return c64(offsets[0])
    table = kb.constant_array(offsets)
    return kb.builder.load(kb.builder.gep(table, [bi], inbounds=True))


# -- A sources ----------------------------------------------------------------------------------------------------


def bf16_pair(b: ir.IRBuilder, lo: ir.Value, hi: ir.Value) -> ir.Value:
    """Two float32 scalars rounded to bfloat16 and packed into one 4-byte slot (typed float): (lo, hi)."""
    pair = ir.Constant(ir.VectorType(BF16, 2), None)
    pair = b.insert_element(pair, b.fptrunc(lo, BF16), ir.Constant(ir.IntType(32), 0))
    pair = b.insert_element(pair, b.fptrunc(hi, BF16), ir.Constant(ir.IntType(32), 1))
    return b.bitcast(pair, F32)


class ConstA:
    """A compile-time A, one (M, K) matrix per A-batch, packed into MR panels now (bf16 pairs if ``bf16``)."""

    def __init__(self, kb: KernelBuilder, mats: np.ndarray, batch_index: np.ndarray, mr: int, bf16: bool = False):
        self.kb = kb
        nb, m, k = mats.shape
        ksteps = -(-k // 2) if bf16 else k
        self.panel_floats = mr * ksteps
        pack = pack_a_const_bf16 if bf16 else pack_a_const
        packs = [pack(mats[i].astype(np.float32, copy=False), mr) for i in range(nb)]
        packed = packs[0] if nb == 1 else np.concatenate(packs)
        self.base = kb.constant_array(packed, F32)
        self.per_batch = (-(-m // mr)) * mr * ksteps
        self.batch_index = np.asarray(batch_index, np.int64)
        for i in range(nb):  # the panels are the weight's only copy once lowered (packed_weights.py)
            note_packed(kb, mats[i], packed, i * self.per_batch, "a", mr)

    def prepare(self, bi, p_lo, p_hi) -> None:
        self._off = batch_table(self.kb, self.batch_index * self.per_batch, bi)

    def panel(self, p: ir.Value) -> ir.Value:
        b = self.kb.builder
        return b.gep(self.base, [b.add(self._off, b.mul(p, c64(self.panel_floats)))], inbounds=True)


class RuntimeA:
    """A in memory: element (m, k) of batch ``bi`` at ``ptr + off[bi] + m*rs + k*cs``; packed into per-thread
    scratch (the panels a thread needs, once per batch it works on), as bf16 pairs if ``bf16``."""

    def __init__(self, kb: KernelBuilder, ptr: ir.Value, offsets: np.ndarray, rs: int, cs: int, m: int, k: int,
                 mr: int, bf16: bool = False):
        self.kb, self.ptr, self.offsets, self.rs, self.cs, self.m, self.k, self.mr = kb, ptr, offsets, rs, cs, m, k, mr
        self.bf16 = bf16
        self.ksteps = -(-k // 2) if bf16 else k
        panels = -(-m // mr)
        nbytes = panels * mr * self.ksteps * 4
        if nbytes > MAX_RUNTIME_PACK_BYTES:
            raise Unsupported(f"runtime A of {nbytes} bytes is too large to pack")
        self.scratch = kb.scratch(nbytes)

    def prepare(self, bi, p_lo, p_hi) -> None:
        kb, b = self.kb, self.kb.builder
        mr, k = self.mr, self.k
        src0 = b.gep(self.ptr, [batch_table(kb, self.offsets, bi)], inbounds=True)
        with kb.for_range(p_lo, p_hi, name="pa") as p:
            dst = b.gep(self.scratch, [b.mul(p, c64(mr * self.ksteps))], inbounds=True)
            row0 = b.mul(p, c64(mr))
            if self.m % mr == 0:
                self._pack(dst, src0, row0, None)
            else:
                self._pack(dst, src0, row0, b.sub(c64(self.m), row0))

    def _pack(self, dst, src0, row0, valid) -> None:
        """dst[kk*MR + r] = A[row0 + r, kk] (0 for rows past M): MR unrolled rows, k the loop. In bf16, step
        ``kk`` holds the pair (A[., 2kk], A[., 2kk+1]), the odd K's last one padded with 0."""
        kb, b = self.kb, self.kb.builder
        mr = self.mr
        rows = []
        for r in range(mr):
            off = b.mul(b.add(row0, c64(r)), c64(self.rs))
            rows.append(b.gep(src0, [off], inbounds=True))
        zero = ir.Constant(F32, 0.0)

        def element(r, kidx):
            koff = b.mul(kidx, c64(self.cs))
            if valid is None:
                return b.load(b.gep(rows[r], [koff], inbounds=True), align=4)
            ok = b.icmp_signed("<", c64(r), valid)
            # never read past M: the address is formed only for valid rows (select of the offset)
            safe = b.select(ok, koff, c64(0))
            src = b.select(ok, rows[r], rows[0])
            return b.select(ok, b.load(b.gep(src, [safe], inbounds=True), align=4), zero)

        def store(kk, r, x):
            b.store(x, b.gep(dst, [b.add(b.mul(kk, c64(mr)), c64(r))], inbounds=True), align=4)

        if not self.bf16:
            with kb.for_range(0, self.k, name="pk") as kk:
                for r in range(mr):
                    store(kk, r, element(r, kk))
            return
        with kb.for_range(0, self.k // 2, name="pk") as kk:
            k0 = b.mul(kk, c64(2))
            for r in range(mr):
                store(kk, r, bf16_pair(b, element(r, k0), element(r, b.add(k0, c64(1)))))
        if self.k % 2:
            last = c64(self.k - 1)
            for r in range(mr):
                store(c64(self.k // 2), r, bf16_pair(b, element(r, last), zero))

    def panel(self, p: ir.Value) -> ir.Value:
        b = self.kb.builder
        return b.gep(self.scratch, [b.mul(p, c64(self.mr * self.ksteps))], inbounds=True)


# -- B sources ----------------------------------------------------------------------------------------------------


class ConstB:
    """A compile-time B, one (K, N) matrix per B-batch, packed into NR-column panels now (bf16 pairs if
    ``bf16``: ``k`` then counts pairs)."""

    pairs = True  # already in the layout the bf16 microkernel reads

    def __init__(self, kb: KernelBuilder, mats: np.ndarray, batch_index: np.ndarray, nr: int, bf16: bool = False):
        self.kb = kb
        nb, k, n = mats.shape
        k = -(-k // 2) if bf16 else k
        self.k, self.nr = k, nr
        pack = pack_b_const_bf16 if bf16 else pack_b_const
        per = (-(-n // nr)) * nr * k
        packed = np.empty(nb * per, np.uint32 if bf16 else np.float32)  # one allocation, each batch in place
        for i in range(nb):
            pack(mats[i].astype(np.float32, copy=False), nr, packed[i * per:(i + 1) * per])
            note_packed(kb, mats[i], packed, i * per, "b", nr)  # the weight's only copy once lowered
        self.base = kb.constant_array(packed, F32)
        self.per_batch = (-(-n // nr)) * nr * k
        self.batch_index = np.asarray(batch_index, np.int64)

    def block(self, bi, jc, nc):
        b = self.kb.builder
        off = b.add(batch_table(self.kb, self.batch_index * self.per_batch, bi), b.mul(jc, c64(self.k)))
        return b.gep(self.base, [off], inbounds=True), self.k, c64(self.nr)


class DirectB:
    """B read in place: element (k, n) of batch ``bi`` at ``ptr + off[bi] + k*ldb + n`` (rows contiguous)."""

    def __init__(self, kb: KernelBuilder, ptr: ir.Value, offsets: np.ndarray, ldb: int):
        self.kb, self.ptr, self.offsets, self.ldb = kb, ptr, offsets, ldb

    def block(self, bi, jc, nc):
        b = self.kb.builder
        off = b.add(batch_table(self.kb, self.offsets, bi), jc)
        return b.gep(self.ptr, [off], inbounds=True), 1, c64(self.ldb)


class PackedB:
    """B in memory with any strides (element (k, n) at ``ptr + off[bi] + k*rs + n*cs``), copied block by block
    into per-thread scratch as K rows of NCp floats."""

    def __init__(self, kb: KernelBuilder, ptr: ir.Value, offsets: np.ndarray, rs: int, cs: int, k: int, nc: int):
        self.kb, self.ptr, self.offsets, self.rs, self.cs, self.k = kb, ptr, offsets, rs, cs, k
        self.ncp = -(-nc // VEC) * VEC
        self.scratch = kb.scratch(k * self.ncp * 4)

    def block(self, bi, jc, nc):
        kb, b = self.kb, self.kb.builder
        src0 = b.gep(self.ptr, [b.add(batch_table(kb, self.offsets, bi), b.mul(jc, c64(self.cs)))], inbounds=True)
        with kb.for_range(0, self.k, name="kb") as kk:
            srow = b.gep(src0, [b.mul(kk, c64(self.rs))], inbounds=True)
            drow = b.gep(self.scratch, [b.mul(kk, c64(self.ncp))], inbounds=True)
            with kb.for_range(0, nc, name="nb") as j:
                x = b.load(b.gep(srow, [b.mul(j, c64(self.cs))], inbounds=True), align=4)
                b.store(x, b.gep(drow, [j], inbounds=True), align=4)
        return self.scratch, 1, c64(self.ncp)


def pair_rows(b: ir.IRBuilder, row0, row1, dst, nc) -> None:
    """``dst[j] = bf16 pair (row0[j], row1[j])`` for ``j < nc`` (``row1`` None: a zero high half), 16 columns
    a step; the source is read under a mask past ``nc`` (never out of bounds), ``dst`` written in whole
    vectors (it must have ``ceil(nc/16)*16`` slots)."""
    module = b.module
    i32 = ir.IntType(32)
    mask_t = ir.VectorType(ir.IntType(1), VEC)
    mload = module.globals.get("llvm.masked.load.v16f32.p0") or ir.Function(
        module, ir.FunctionType(VT, [VT.as_pointer(), i32, mask_t, VT]), name="llvm.masked.load.v16f32.p0")
    interleave = ir.Constant(ir.VectorType(i32, 2 * VEC), [i // 2 + (i % 2) * VEC for i in range(2 * VEC)])
    zero = ir.Constant(VT, None)
    n_vec = b.udiv(b.add(nc, c64(VEC - 1)), c64(VEC))
    with builder_loop(b, c64(0), n_vec, 1, "pv") as v:
        j = b.mul(v, c64(VEC))
        left = b.sub(nc, j)
        left = b.select(b.icmp_unsigned("<", left, c64(VEC)), left, c64(VEC))
        mask = b.bitcast(b.trunc(b.sub(b.shl(c64(1), left), c64(1)), ir.IntType(VEC)), mask_t)

        def load(row):
            ptr = b.bitcast(b.gep(row, [j], inbounds=True), VT.as_pointer())
            return b.call(mload, [ptr, ir.Constant(i32, 4), mask, zero])

        lo = b.fptrunc(load(row0), ir.VectorType(BF16, VEC))
        hi = b.fptrunc(load(row1) if row1 is not None else zero, ir.VectorType(BF16, VEC))
        dst_v = b.bitcast(b.gep(dst, [j], inbounds=True), VBF_PAIRS.as_pointer())
        b.store(b.shuffle_vector(lo, hi, interleave), dst_v, align=64)


class PairB:
    """bf16 view of a runtime B source: each block the inner source gives (float32 rows ``ldb`` apart,
    ``colscale`` 1) is rounded into scratch as ``ceil(K/2)`` rows of NCp bf16 pairs (:func:`pair_rows`)."""

    pairs = True

    def __init__(self, kb: KernelBuilder, inner, k: int, nc: int):
        self.kb, self.inner, self.k = kb, inner, k
        self.ncp = -(-nc // VEC) * VEC
        self.scratch = kb.scratch(-(-k // 2) * self.ncp * 4)

    def block(self, bi, jc, nc):
        kb, b = self.kb, self.kb.builder
        src, colscale, ldb = self.inner.block(bi, jc, nc)
        if colscale != 1:
            raise Unsupported("bf16 pairs of a panel-packed B")
        with kb.for_range(0, self.k // 2, name="kp") as kp:
            row0 = b.gep(src, [b.mul(b.mul(kp, c64(2)), ldb)], inbounds=True)
            pair_rows(b, row0, b.gep(row0, [ldb], inbounds=True),
                      b.gep(self.scratch, [b.mul(kp, c64(self.ncp))], inbounds=True), nc)
        if self.k % 2:
            pair_rows(b, b.gep(src, [b.mul(c64(self.k - 1), ldb)], inbounds=True), None,
                      b.gep(self.scratch, [c64(self.k // 2 * self.ncp)], inbounds=True), nc)
        return self.scratch, 1, c64(self.ncp)


# -- the driver ---------------------------------------------------------------------------------------------------


@dataclass
class GemmGeometry:
    m: int
    n: int
    k: int
    batches: int
    mr: int
    nv: int
    nc: int
    mode: str  # "cols" | "rows"
    bf16: bool = False  # bf16 operands (pairs), float32 accumulation

    @property
    def ksteps(self) -> int:
        """Microkernel steps over K: K, or its pairs in bf16."""
        return -(-self.k // 2) if self.bf16 else self.k

    @property
    def nr(self) -> int:
        return self.nv * VEC

    @property
    def n_ir(self) -> int:
        return -(-self.m // self.mr)

    @property
    def n_jc(self) -> int:
        return -(-self.n // self.nc)


def runs_in_bf16(node) -> bool:
    """Whether the precision pass gave this GEMM/conv node bf16 operands (``node.meta["precision"]``)."""
    return node.meta.get("precision") == "bf16"


def threads_of(kb: KernelBuilder) -> int:
    """The number of worker threads the executable will run (the ``threads`` option, else the usable cores)."""
    decided = getattr(kb.program, "threads", 0)
    if decided:
        return int(decided)
    try:
        t = int(kb.program.plan.options.get("threads") or 0)
    except (AttributeError, TypeError, ValueError):
        t = 0
    if t <= 0:
        try:
            t = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            t = os.cpu_count() or 1
    return max(1, t)


def plan_gemm(m: int, n: int, k: int, batches: int = 1, threads: int = 1, bf16: bool = False) -> GemmGeometry:
    """Choose the microkernel, the column block NC and how ``threads`` threads split the work."""
    if min(m, n, k, batches) <= 0:
        raise Unsupported("empty GEMM")
    t = max(1, threads)
    mr, nv = tile_shape(m)
    nr = nv * VEC
    row_bytes = 4 * (-(-k // 2) if bf16 else k)  # one column of a packed B block (bf16: pairs)
    nc_l2 = max(nr, (L2_BLOCK_BYTES // row_bytes) // nr * nr)
    per_batch_units = max(1, -(-2 * t // batches))  # aim for >= 2 units per thread
    nc = min(nc_l2, max(nr, -(-(-(-n // per_batch_units)) // nr) * nr))
    n_jc, n_ir = -(-n // nc), -(-m // mr)
    mode = "cols" if batches * n_jc >= 2 * t or n_ir < 2 * t or batches * n_jc >= n_ir else "rows"
    return GemmGeometry(m, n, k, batches, mr, nv, nc, mode, bf16)


def emit_gemm(kb: KernelBuilder, g: GemmGeometry, a_src, b_src, sink: Sink) -> None:
    """Emit the loop nest of the module docstring into ``kb``'s function."""
    b = kb.builder
    keep_out_of_line(kb)
    mr, nv, nr, nc = g.mr, g.nv, g.nr, g.nc
    if g.bf16 and not getattr(b_src, "pairs", False):
        b_src = PairB(kb, b_src, g.k, nc)
    ukr = microkernel(kb.module, mr, nv, g.bf16)
    edge = g.n % nr  # columns of the last, partial panel of N
    nv_edge = -(-edge // VEC)
    ukr_edge = microkernel(kb.module, mr, nv_edge, g.bf16) if edge else None
    tile = kb.scratch(mr * nr * 4)
    full_mask = mask_constant(nr)

    def run_block(bi, jc, p_lo, p_hi):
        nc_v = kb.umin(c64(nc), b.sub(c64(g.n), jc))
        blk, colscale, ldb = b_src.block(bi, jc, nc_v)
        n_panels = b.udiv(b.add(nc_v, c64(nr - 1)), c64(nr))
        with kb.for_range(p_lo, p_hi, name="ip") as p:
            apanel = a_src.panel(p)
            row0 = b.mul(p, c64(mr))
            rows = kb.umin(c64(mr), b.sub(c64(g.m), row0))
            with kb.for_range(0, n_panels, name="jp") as jp:
                jj = b.mul(jp, c64(nr))
                bpanel = b.gep(blk, [b.mul(jj, c64(colscale))], inbounds=True)
                width = kb.umin(c64(nr), b.sub(nc_v, jj))
                if ukr_edge is None:
                    b.call(ukr, [c64(g.ksteps), apanel, bpanel, ldb, tile, full_mask])
                    stride = c64(nr)
                else:
                    is_full = b.icmp_unsigned("==", width, c64(nr))
                    with b.if_else(is_full) as (then, otherwise):
                        with then:
                            b.call(ukr, [c64(g.ksteps), apanel, bpanel, ldb, tile, full_mask])
                        with otherwise:
                            b.call(ukr_edge, [c64(g.ksteps), apanel, bpanel, ldb, tile, mask_constant(edge)])
                    stride = b.select(is_full, c64(nr), c64(nv_edge * VEC))
                # one drain (one copy of the epilogue code) for full and edge tiles alike
                _drain(kb, tile, stride, width, rows, bi, row0, b.add(jc, jj), sink)

    if g.mode == "cols":
        # this thread's units are contiguous: walk them batch by batch so that a runtime A is packed once per batch
        lo, hi = kb.thread_range(g.batches * g.n_jc)
        b_lo = b.udiv(lo, c64(g.n_jc))
        b_hi = b.udiv(b.add(hi, c64(g.n_jc - 1)), c64(g.n_jc))
        with kb.for_range(b_lo, b_hi, name="bi") as bi:
            first = b.mul(bi, c64(g.n_jc))
            u_lo = b.select(b.icmp_signed(">", lo, first), lo, first)
            u_hi = kb.umin(hi, b.add(first, c64(g.n_jc)))
            a_src.prepare(bi, c64(0), c64(g.n_ir))
            with kb.for_range(u_lo, u_hi, name="unit") as u:
                jc = b.mul(b.sub(u, first), c64(nc))
                run_block(bi, jc, c64(0), c64(g.n_ir))
    else:
        with kb.for_range(0, g.batches, name="bi") as bi:
            lo, hi = kb.thread_range(g.n_ir)
            with b.if_then(b.icmp_signed("<", lo, hi)):
                a_src.prepare(bi, lo, hi)
                with kb.for_range(0, g.n_jc, name="jb") as jb:
                    run_block(bi, b.mul(jb, c64(nc)), lo, hi)


def opaque(kb: KernelBuilder, value: ir.Value) -> ir.Value:
    """``value``, hidden from the optimiser (an empty inline asm): a loop bounded by it is not fully unrolled,
    which keeps one copy of an epilogue per kernel instead of one per possible trip."""
    asm = ir.InlineAsm(ir.FunctionType(value.type, [value.type]), "", "=r,0", side_effect=False)
    return kb.builder.call(asm, [value])


@contextlib.contextmanager
def for_bits(kb: KernelBuilder, mask: ir.Value, start: ir.Value):
    """``for j in start + (each set bit of mask, ascending)``: not a counted loop, so it is neither vectorised
    nor unrolled (the scalar edge of a tile runs through the epilogue's scalar code once)."""
    b = kb.builder
    cttz = kb.intrinsic("llvm.cttz.i64", I64, [I64, ir.IntType(1)])
    pre = b.block
    cond, body, done = (b.append_basic_block(f"bits.{x}") for x in ("cond", "body", "end"))
    b.branch(cond)
    b.position_at_end(cond)
    m = b.phi(I64, name="bits")
    m.add_incoming(mask, pre)
    b.cbranch(b.icmp_unsigned("!=", m, c64(0)), body, done)
    b.position_at_end(body)
    yield b.add(start, b.call(cttz, [m, ir.Constant(ir.IntType(1), 1)]))
    m.add_incoming(b.and_(m, b.sub(m, c64(1))), b.block)
    b.branch(cond)
    b.position_at_end(done)


def _drain(kb: KernelBuilder, tile, stride, width, rows, bi, row0, col0, sink: Sink) -> None:
    """Hand the tile's ``rows`` x ``width`` valid elements (rows ``stride`` floats apart) to the sink: full
    vectors, then scalars. The sink's code is emitted twice (vector, scalar), whatever the tile shape."""
    b = kb.builder
    full = opaque(kb, b.udiv(width, c64(VEC)))
    tail_start = b.mul(full, c64(VEC))
    rem_mask = b.sub(b.shl(c64(1), b.sub(width, tail_start)), c64(1))
    with kb.for_range(0, opaque(kb, rows), name="r") as r:
        trow = b.gep(tile, [b.mul(r, stride)], inbounds=True)
        row = b.add(row0, r)
        with kb.for_range(0, full, name="v") as v:
            off = b.mul(v, c64(VEC))
            vec = b.load(b.bitcast(b.gep(trow, [off], inbounds=True), VT.as_pointer()), align=64)
            sink(kb, bi, row, b.add(col0, off), vec)
        with for_bits(kb, rem_mask, tail_start) as j:
            x = b.load(b.gep(trow, [j], inbounds=True), align=4)
            sink(kb, bi, row, b.add(col0, j), x)
