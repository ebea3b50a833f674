"""LSTM as one kernel: the whole recurrence in generated code, weights transposed at compile time.

Handles what PyTorch exports and the common ONNX forms: float32; ``direction`` forward, reverse or
bidirectional; ``layout`` 0; constant ``W``, ``R`` and optional ``B``; no ``sequence_lens`` (or a constant one
equal to the sequence length for every batch row); optional ``initial_h``/``initial_c`` (activations or
weights); default activations (Sigmoid, Tanh, Tanh); no ``clip``, no ``input_forget``, no peepholes.
Anything else declines (the reference kernel runs it).

Layout of the work: ``W`` and ``R`` are stored transposed (``[input, 4H]``, ``[H, 4H]``), so a block of 64
gate pre-activations is a sum of weight-row slices scaled by broadcast inputs, held in four 16-lane
registers over the whole reduction. First the input projection of every step at once (``x @ WT + bias`` for
all (step, batch) rows, column block by column block so that a WT block stays in cache while the rows stream
past); then per step only ``h @ RT`` (H x 4H floats, the one weight read per step) and the cell. With H a
multiple of 16 the steps are shared between the run's threads (``_emit_parallel``); otherwise one thread runs
the recurrence (the others return at once).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ..kernel import F32, I32, I64, KernelBuilder, Unsupported, node_emitter
from ..sync import add_and_wake_function, wait_at_least_function
from .mathfns import Lanes, sigmoid, tanh

_DEFAULT_ACTIVATIONS = ["Sigmoid", "Tanh", "Tanh"]


def _check(kb: KernelBuilder, node) -> dict:
    ins = list(node.inputs) + [None] * (8 - len(node.inputs))
    X, W, R, B, lens, h0, c0, P = ins[:8]
    if kb.dtype(X) != np.float32:
        raise Unsupported("LSTM: float32 only")
    attrs = node.attrs
    if attrs.get("layout", 0) != 0 or attrs.get("clip") is not None or attrs.get("input_forget", 0):
        raise Unsupported("LSTM: layout 1, clip or input_forget")
    acts = attrs.get("activations")
    direction = attrs.get("direction", "forward")
    if isinstance(direction, bytes):
        direction = direction.decode()
    dirs = 2 if direction == "bidirectional" else 1
    if acts is not None:
        names = [a.decode() if isinstance(a, bytes) else a for a in acts]
        if [n.lower() for n in names] != [n.lower() for n in _DEFAULT_ACTIVATIONS * dirs]:
            raise Unsupported("LSTM: non-default activations")
    if attrs.get("activation_alpha") or attrs.get("activation_beta"):
        raise Unsupported("LSTM: activation parameters")
    w, r = kb.const_value(W), kb.const_value(R)
    b = kb.const_value(B) if B is not None else None
    if w is None or r is None or (B is not None and b is None) or P is not None:
        raise Unsupported("LSTM: runtime weights or peepholes")
    seq, batch, _ = kb.shape(X)
    if lens is not None:
        lv = kb.const_value(lens)
        if lv is None or not np.all(np.asarray(lv) == seq):
            raise Unsupported("LSTM: sequence_lens shorter than the sequence")
    hidden = r.shape[-1]
    if w.shape[0] != dirs or r.shape != (dirs, 4 * hidden, hidden):
        raise Unsupported("LSTM: weight shapes")
    return {"X": X, "W": w, "R": r, "B": b, "h0": h0, "c0": c0, "dirs": dirs, "reverse": direction == "reverse",
            "seq": seq, "batch": batch, "hidden": hidden}


@node_emitter("LSTM")
def emit_lstm(kb: KernelBuilder, node) -> None:
    p = _check(kb, node)
    if p["hidden"] % VEC == 0:
        _emit_parallel(kb, node, p)
        return
    outs = list(node.outputs) + [None] * (3 - len(node.outputs))
    Y, Yh, Yc = outs[:3]
    seq, batch, hidden, dirs = p["seq"], p["batch"], p["hidden"], p["dirs"]
    n_in = p["W"].shape[-1]
    g4 = 4 * hidden
    b = kb.builder
    # one thread runs the recurrence
    is_first = b.icmp_unsigned("==", kb.tid, kb.i64(0))
    work = b.append_basic_block("lstm.work")
    done = b.append_basic_block("lstm.done")
    b.cbranch(is_first, work, done)
    b.position_at_end(work)
    x = kb.ptr(p["X"])
    gates = kb.scratch(batch * g4 * 4)
    xw = kb.scratch(seq * batch * g4 * 4)  # the input projection of every step, bias included
    h = kb.scratch(batch * hidden * 4)
    c = kb.scratch(batch * hidden * 4)
    zero = ir.Constant(F32, 0.0)

    def at(ptr, idx):
        return b.gep(ptr, [idx], inbounds=True)

    def lin(*terms):
        """sum of (ir i64 value or int) * int stride terms -> i64 value"""
        total = kb.i64(0)
        for v, stride in terms:
            v = kb.i64(v) if isinstance(v, int) else v
            total = b.add(total, b.mul(v, kb.i64(stride)) if stride != 1 else v)
        return total

    for d in range(dirs):
        wt = kb.constant_array(np.ascontiguousarray(p["W"][d].T.astype(np.float32)))
        rt = kb.constant_array(np.ascontiguousarray(p["R"][d].T.astype(np.float32)))
        bias = np.zeros(g4, np.float32) if p["B"] is None else (p["B"][d][:g4] + p["B"][d][g4:]).astype(np.float32)
        bp = kb.constant_array(bias)
        # initial state
        for state, init in ((h, p["h0"]), (c, p["c0"])):
            src = kb.ptr(init) if init is not None else None
            with kb.for_range(0, batch * hidden, name="init") as i:
                v = b.load(at(src, b.add(i, kb.i64(d * batch * hidden)))) if src is not None else zero
                b.store(v, at(state, i))
        reverse = p["reverse"] or d == 1
        _projection(kb, xw, bp, x, wt, seq * batch, n_in, g4)
        with kb.for_range(0, seq, name="step") as s:
            t = b.sub(kb.i64(seq - 1), s) if reverse else s
            _gates(kb, gates, xw, t, h, rt, batch, hidden)
            y_ptr = kb.ptr(Y) if Y is not None else None
            with kb.for_range(0, batch, name="cb") as bi:
                y_row = lin((t, dirs * batch * hidden), (d * batch * hidden, 1), (bi, hidden))
                _cell(kb, gates, c, h, y_ptr, lin((bi, g4)), lin((bi, hidden)), y_row, hidden)
        for out, state in ((Yh, h), (Yc, c)):
            if out is None:
                continue
            dst = kb.ptr(out)
            with kb.for_range(0, batch * hidden, name="fin") as i:
                b.store(b.load(at(state, i)), at(dst, b.add(i, kb.i64(d * batch * hidden))))
    b.branch(done)
    b.position_at_end(done)


VEC = 16  # floats per vector (AVX-512); LLVM splits wider-than-native vectors on other CPUs
BLOCK = 4  # vectors of gates kept in registers while a weight row streams past


def _block(kb: KernelBuilder, out, out_at, init, init_at, terms, g4: int, jb, store: bool = True,
           blocked: bool = False) -> list:
    """out[out_at + jb : +64] = init[init_at + jb : +64] + sum over terms (src, src_at, weights, count) of
    src[src_at + k] * weights[k, jb : jb + 64]: ``BLOCK`` vectors held in registers over the whole k loop.

    ``blocked``: the weights are stored block by block (``[4H / 64, count, 64]``), so one block's rows are
    64 floats apart instead of 4H: rows 4H floats apart (16 KB for H = 1024, 4 KB for H = 256) all land in
    the same L1 sets and evict each other."""
    b = kb.builder
    vt = ir.VectorType(F32, VEC)
    vptr = vt.as_pointer()
    fma = kb.intrinsic(f"llvm.fma.v{VEC}f32", vt, [vt, vt, vt])

    def vload(ptr, idx):
        return b.load(b.bitcast(b.gep(ptr, [idx], inbounds=True), vptr), align=4)

    def splat(v):
        one = b.insert_element(ir.Constant(vt, ir.Undefined), v, ir.Constant(ir.IntType(32), 0))
        return b.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                ir.Constant(ir.VectorType(ir.IntType(32), VEC), [0] * VEC))

    accs = [vload(init, b.add(init_at, b.add(jb, kb.i64(i * VEC)))) for i in range(BLOCK)]
    for src, src_at, weights, count in terms:
        pre = b.block
        loop = b.append_basic_block("mv.body")
        done = b.append_basic_block("mv.end")
        b.branch(loop)
        b.position_at_end(loop)
        k = b.phi(I64)
        k.add_incoming(kb.i64(0), pre)
        phis = []
        for a in accs:
            ph = b.phi(vt)
            ph.add_incoming(a, pre)
            phis.append(ph)
        xv = splat(b.load(b.gep(src, [b.add(src_at, k)], inbounds=True)))
        if blocked:
            w_at = b.add(b.mul(jb, kb.i64(count)), b.mul(k, kb.i64(BLOCK * VEC)))
        else:
            w_at = b.add(b.mul(k, kb.i64(g4)), jb)
        new = [b.call(fma, [xv, vload(weights, b.add(w_at, kb.i64(i * VEC))), ph]) for i, ph in enumerate(phis)]
        nk = b.add(k, kb.i64(1))
        k.add_incoming(nk, loop)
        for ph, n in zip(phis, new):
            ph.add_incoming(n, loop)
        b.cbranch(b.icmp_signed("<", nk, kb.i64(count)), loop, done)
        b.position_at_end(done)
        accs = new
    if store:
        for i, a in enumerate(accs):
            dst = b.gep(out, [b.add(out_at, b.add(jb, kb.i64(i * VEC)))], inbounds=True)
            b.store(a, b.bitcast(dst, vptr), align=4)
    return accs


def _scalar_tail(kb: KernelBuilder, out, out_at, init, init_at, terms, g4: int, start: int) -> None:
    """The same for the columns [start, 4H) that do not fill a block (rare: 4H not a multiple of 64)."""
    b = kb.builder
    sfma = kb.intrinsic("llvm.fma.f32", F32, [F32, F32, F32])
    with kb.for_range(start, g4, name="tail") as j:
        acc_ptr = b.gep(out, [b.add(out_at, j)])
        b.store(b.load(b.gep(init, [b.add(init_at, j)])), acc_ptr)
        for src, src_at, weights, count in terms:
            with kb.for_range(0, count, name="tk") as k:
                v = b.load(b.gep(src, [b.add(src_at, k)]))
                w = b.load(b.gep(weights, [b.add(b.mul(k, kb.i64(g4)), j)]))
                b.store(b.call(sfma, [v, w, b.load(acc_ptr)]), acc_ptr)


def _projection(kb: KernelBuilder, xw, bias, x, wt, rows: int, n_in: int, g4: int) -> None:
    """xw[r, :] = bias + x[r, :] @ WT for every (step, batch) row r at once, column block by column block, so
    that a block of WT (n_in x 64 floats) stays in cache while every row streams past it."""
    full = g4 // (BLOCK * VEC) * (BLOCK * VEC)
    zero = kb.i64(0)
    if full:
        with kb.for_range(0, full, BLOCK * VEC, name="pjb") as jb:
            with kb.for_range(0, rows, name="pr") as r:
                _block(kb, xw, kb.builder.mul(r, kb.i64(g4)), bias, zero,
                       [(x, kb.builder.mul(r, kb.i64(n_in)), wt, n_in)], g4, jb)
    if full < g4:
        with kb.for_range(0, rows, name="prt") as r:
            _scalar_tail(kb, xw, kb.builder.mul(r, kb.i64(g4)), bias, zero,
                         [(x, kb.builder.mul(r, kb.i64(n_in)), wt, n_in)], g4, full)


def _gates(kb: KernelBuilder, gates, xw, t, h, rt, batch: int, hidden: int) -> None:
    """gates[b, :] = xw[t, b, :] + h[b, :] @ RT: one matrix-vector product per batch row and step; RT
    (H x 4H floats) is the only weight read per step."""
    b = kb.builder
    g4 = 4 * hidden
    full = g4 // (BLOCK * VEC) * (BLOCK * VEC)
    with kb.for_range(0, batch, name="gb") as bi:
        g_row = b.mul(bi, kb.i64(g4))
        xw_row = b.mul(b.add(b.mul(t, kb.i64(batch)), bi), kb.i64(g4))
        terms = [(h, b.mul(bi, kb.i64(hidden)), rt, hidden)]
        if full:
            with kb.for_range(0, full, BLOCK * VEC, name="jb") as jb:
                _block(kb, gates, g_row, xw, xw_row, terms, g4, jb)
        if full < g4:
            _scalar_tail(kb, gates, g_row, xw, xw_row, terms, g4, full)


def _cell(kb: KernelBuilder, gates, c, h, y, g_row, s_row, y_row, hidden: int) -> None:
    """c = sigmoid(f) c + sigmoid(i) tanh(g); h = sigmoid(o) tanh(c) for one batch row, 16 lanes at a time with
    the polynomial sigmoid/tanh (a scalar loop does the last hidden % 16)."""
    b = kb.builder
    full = hidden // VEC * VEC

    def body(width: int, j) -> None:
        ln = Lanes(kb.module, b, width)
        ty = ln.ty(F32)

        def load(ptr, idx):
            p = b.gep(ptr, [idx], inbounds=True)
            return b.load(b.bitcast(p, ty.as_pointer()), align=4) if width > 1 else b.load(p)

        def store(v, ptr, idx):
            p = b.gep(ptr, [idx], inbounds=True)
            b.store(v, b.bitcast(p, ty.as_pointer()) if width > 1 else p, align=4)

        gi = load(gates, b.add(g_row, j))
        go = load(gates, b.add(g_row, b.add(j, kb.i64(hidden))))
        gf = load(gates, b.add(g_row, b.add(j, kb.i64(2 * hidden))))
        gc = load(gates, b.add(g_row, b.add(j, kb.i64(3 * hidden))))
        c_new = b.fadd(b.fmul(sigmoid(ln, gf), load(c, b.add(s_row, j))), b.fmul(sigmoid(ln, gi), tanh(ln, gc)))
        h_new = b.fmul(sigmoid(ln, go), tanh(ln, c_new))
        store(c_new, c, b.add(s_row, j))
        store(h_new, h, b.add(s_row, j))
        if y is not None:
            store(h_new, y, b.add(y_row, j))

    if full:
        with kb.for_range(0, full, VEC, name="cv") as j:
            body(VEC, j)
    if full < hidden:
        with kb.for_range(full, hidden, name="cs") as j:
            body(1, j)


def _emit_parallel(kb: KernelBuilder, node, p: dict) -> None:
    """The LSTM split across the run's threads (hidden a multiple of 16).

    The 4H gate columns are permuted at compile time so that column block q (64 columns) holds the i, o, f, c
    pre-activations of hidden units 16q .. 16q+15: a block's four register accumulators are then exactly what
    the cell of those units needs, so gates never go to memory, and a thread that owns blocks [q0, q1) owns
    those hidden units' cell state too. h is double-buffered in shared memory (a step reads all of h and writes
    its own units); the input projection of every step comes first, split by blocks, then one barrier.

    The steps are not separated by barriers but by *claims*: block q of step s is run by whichever thread
    moves its claim word from s to s + 1 (compare-and-swap), and a step may start once ``done`` (blocks
    finished, all steps) reaches s * (H / 16). Each thread claims its own blocks first (so its slice of R, H x
    64 columns per block, stays hot in its cache from step to step), then takes the blocks other threads have
    not claimed yet. A thread descheduled by the OS (another process on its core) therefore holds up nobody
    unless it was inside a block: the others run its blocks. With a barrier per step, one busy process on a
    two-core machine made steps wait for a scheduler slice (the LSTM LM, 2 threads: 2.3 ms unloaded, 12.3 ms
    next to a busy process with a barrier per step, 6.4-7.0 ms with claims; docs/benchmarks.md, fourth session). Every block is computed once, with the same instructions whoever
    runs it, so results do not depend on the threads.
    """
    b = kb.builder
    seq, batch, hidden, dirs = p["seq"], p["batch"], p["hidden"], p["dirs"]
    n_in = p["W"].shape[-1]
    g4 = 4 * hidden
    nq = hidden // VEC
    width = BLOCK * VEC
    perm = np.concatenate([np.arange(g * hidden + q * VEC, g * hidden + (q + 1) * VEC)
                           for q in range(nq) for g in range(4)])
    outs = list(node.outputs) + [None] * (3 - len(node.outputs))
    Y, Yh, Yc = outs[:3]
    x = kb.ptr(p["X"])
    y_ptr = kb.ptr(Y) if Y is not None else None
    rows = seq * batch
    xw = kb.shared_scratch(rows * g4 * 4)
    hbuf = kb.shared_scratch(2 * batch * hidden * 4)
    cbuf = kb.shared_scratch(batch * hidden * 4)
    q0, q1 = kb.thread_range(nq)
    ln = Lanes(kb.module, b, VEC)
    vt = ln.ty(F32)
    # claim words, each on its own cache line: line 0 holds ``done`` (blocks finished, all steps) and the
    # sleepers count of its futex; line 1 + q the number of steps whose block q has been claimed
    words = kb.shared_scratch(64 * (nq + 1), I32)
    done = b.gep(words, [kb.i64(0)], inbounds=True)
    sleepers = b.gep(words, [kb.i64(1)], inbounds=True)
    claims = b.gep(words, [kb.i64(16)], inbounds=True)
    wait, add = wait_at_least_function(kb.module), add_and_wake_function(kb.module)
    count = ir.IRBuilder(kb.function.entry_basic_block)
    count.position_at_start(kb.function.entry_basic_block)
    count = count.alloca(I32, name="lstm.claimed")  # blocks this thread ran in the current step

    def vload(ptr, idx):
        return b.load(b.bitcast(b.gep(ptr, [idx], inbounds=True), vt.as_pointer()), align=4)

    def vstore(v, ptr, idx):
        b.store(v, b.bitcast(b.gep(ptr, [idx], inbounds=True), vt.as_pointer()), align=4)

    for d in range(dirs):
        with b.if_then(b.icmp_unsigned("==", kb.tid, kb.i64(0))):
            with kb.for_range(0, 16 * (nq + 1), name="zero") as i:
                b.store(ir.Constant(I32, 0), b.gep(words, [i], inbounds=True))
        wt = kb.constant_array(_blocked(p["W"][d].T[:, perm]))
        rt = kb.constant_array(_blocked(p["R"][d].T[:, perm]))
        bias = np.zeros(g4, np.float32) if p["B"] is None else (p["B"][d][:g4] + p["B"][d][g4:]).astype(np.float32)
        bp = kb.constant_array(np.ascontiguousarray(bias[perm]))
        # this thread's hidden units: their initial state, and their columns of the input projection
        for state, init, off in ((hbuf, p["h0"], 0), (cbuf, p["c0"], None)):
            src = kb.ptr(init) if init is not None else None
            with kb.for_range(0, batch, name="ib") as bi:
                with kb.for_range(q0, q1, name="iq") as q:
                    j = b.mul(q, kb.i64(VEC))
                    at = b.add(b.mul(bi, kb.i64(hidden)), j)
                    v = vload(src, b.add(at, kb.i64(d * batch * hidden))) if src is not None else ln.const(F32, 0.0)
                    vstore(v, state, at)
        with kb.for_range(q0, q1, name="pq") as q:
            jb = b.mul(q, kb.i64(width))
            with kb.for_range(0, rows, name="pr") as r:
                _block(kb, xw, b.mul(r, kb.i64(g4)), bp, kb.i64(0), [(x, b.mul(r, kb.i64(n_in)), wt, n_in)], g4, jb,
                       blocked=True)
        kb.barrier()  # h0, every step's projection and the claim words are ready
        reverse = p["reverse"] or d == 1

        def compute(s, q) -> None:
            """Block q (hidden units 16q .. 16q+15, every batch row) of step s: gates, cell, h, y."""
            t = b.sub(kb.i64(seq - 1), s) if reverse else s
            parity = b.and_(s, kb.i64(1))
            h_cur = b.gep(hbuf, [b.mul(parity, kb.i64(batch * hidden))])
            h_next = b.gep(hbuf, [b.mul(b.xor(parity, kb.i64(1)), kb.i64(batch * hidden))])
            jb = b.mul(q, kb.i64(width))
            j = b.mul(q, kb.i64(VEC))
            with kb.for_range(0, batch, name="sb") as bi:
                xw_at = b.mul(b.add(b.mul(t, kb.i64(batch)), bi), kb.i64(g4))
                gi, go, gf, gc = _block(kb, None, None, xw, xw_at, [(h_cur, b.mul(bi, kb.i64(hidden)), rt, hidden)],
                                        g4, jb, store=False, blocked=True)
                at = b.add(b.mul(bi, kb.i64(hidden)), j)
                c_new = b.fadd(b.fmul(sigmoid(ln, gf), vload(cbuf, at)), b.fmul(sigmoid(ln, gi), tanh(ln, gc)))
                h_new = b.fmul(sigmoid(ln, go), tanh(ln, c_new))
                vstore(c_new, cbuf, at)
                vstore(h_new, h_next, at)
                if y_ptr is not None:
                    y_at = b.add(b.mul(b.add(b.mul(t, kb.i64(dirs)), kb.i64(d)), kb.i64(batch * hidden)), at)
                    vstore(h_new, y_ptr, y_at)

        with kb.for_range(0, seq, name="step") as s:
            s32 = b.trunc(s, I32)
            b.call(wait, [done, b.trunc(b.mul(s, kb.i64(nq)), I32), sleepers])  # step s - 1 is complete
            b.store(ir.Constant(I32, 0), count)
            with kb.for_range(q0, q1, name="own") as q:  # this thread's blocks first (their R is in its cache)
                _claim_and_run(kb, claims, q, s32, count, lambda q=q: compute(s, q))
            _steal(kb, claims, s32, count, nq, lambda q: compute(s, q))
            did = b.load(count)
            with b.if_then(b.icmp_unsigned("!=", did, ir.Constant(I32, 0))):
                b.call(add, [done, did, sleepers])
        b.call(wait, [done, ir.Constant(I32, seq * nq), sleepers])  # every step, whoever ran its blocks
        h_last = b.gep(hbuf, [kb.i64((seq % 2) * batch * hidden)])
        for out, state in ((Yh, h_last), (Yc, cbuf)):
            if out is None:
                continue
            dst = kb.ptr(out)
            with kb.for_range(0, batch, name="fb") as bi:
                with kb.for_range(q0, q1, name="fq") as q:
                    at = b.add(b.mul(bi, kb.i64(hidden)), b.mul(q, kb.i64(VEC)))
                    vstore(vload(state, at), dst, b.add(at, kb.i64(d * batch * hidden)))
        if d + 1 < dirs:
            kb.barrier()  # the next direction reuses the shared buffers


def _claim_and_run(kb: KernelBuilder, claims, q, s32, count, run) -> ir.Value:
    """Claim block ``q`` of step ``s32`` (its word goes from s to s + 1, once, whoever gets there first) and,
    if this thread got it, ``run()`` it and count it. Returns the i1 "claimed"."""
    b = kb.builder
    word = b.gep(claims, [b.mul(q, kb.i64(16))], inbounds=True)
    pair = b.cmpxchg(word, s32, b.add(s32, ir.Constant(I32, 1)), "monotonic", "monotonic")
    got = b.extract_value(pair, 1)
    with b.if_then(got):
        run()
        b.store(b.add(b.load(count), ir.Constant(I32, 1)), count)
    return got


def _steal(kb: KernelBuilder, claims, s32, count, nq: int, run) -> None:
    """Run the blocks of step ``s32`` the other threads have not claimed yet. Each thread walks its own blocks
    forward, so a thief walks a victim's range backward from its end and moves on to the next victim at the
    first block already taken (they have met): in a balanced run that is one failed look per victim."""
    b = kb.builder
    n = kb.nthreads
    with kb.for_range(1, n, name="victim") as k:
        u = b.urem(b.sub(b.add(kb.tid, n), k), n)
        lo = b.udiv(b.mul(kb.i64(nq), u), n)
        hi = b.udiv(b.mul(kb.i64(nq), b.add(u, kb.i64(1))), n)
        pre = b.block
        head = b.append_basic_block("steal.cond")
        look = b.append_basic_block("steal.look")
        take = b.append_basic_block("steal.take")
        taken = b.append_basic_block("steal.next")
        out = b.append_basic_block("steal.end")
        b.branch(head)
        b.position_at_end(head)
        j = b.phi(I64, name="steal.j")  # one past the block to look at
        j.add_incoming(hi, pre)
        b.cbranch(b.icmp_signed(">", j, lo), look, out)
        b.position_at_end(look)
        q = b.sub(j, kb.i64(1))
        word = b.gep(claims, [b.mul(q, kb.i64(16))], inbounds=True)
        free = b.icmp_unsigned("==", b.load_atomic(word, "monotonic", 4), s32)  # a plain look first: no RFO
        b.cbranch(free, take, out)
        b.position_at_end(take)
        got = _claim_and_run(kb, claims, q, s32, count, lambda: run(q))
        b.cbranch(got, taken, out)
        b.position_at_end(taken)
        j.add_incoming(q, taken)
        b.branch(head)
        b.position_at_end(out)


def _blocked(wt: np.ndarray) -> np.ndarray:
    """[count, 4H] -> [4H / 64, count, 64]: each 64-column block contiguous (see ``_block``)."""
    count, g4 = wt.shape
    width = BLOCK * VEC
    return np.ascontiguousarray(wt.astype(np.float32).reshape(count, g4 // width, width).transpose(1, 0, 2))
