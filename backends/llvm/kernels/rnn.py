"""LSTM as one kernel: the whole recurrence in generated code, weights transposed at compile time.

Handles what PyTorch exports and the common ONNX forms: float32; ``direction`` forward, reverse or
bidirectional; ``layout`` 0; constant ``W``, ``R`` and optional ``B``; no ``sequence_lens`` (or a constant one
equal to the sequence length for every batch row); optional ``initial_h``/``initial_c`` (activations or
weights); default activations (Sigmoid, Tanh, Tanh); no ``clip``, no ``input_forget``, no peepholes.
Anything else declines (the reference kernel runs it).

Layout of the work: ``W`` and ``R`` are stored transposed (``[input, 4H]``, ``[H, 4H]``) so that the gate
pre-activations of a step are built by rows: for each input feature k, ``gates[b, :] += x[b, k] * WT[k, :]``
-- a contiguous multiply-add over 4H lanes that LLVM vectorises, reading each weight row once per step for
the whole batch. The recurrence is sequential, so one thread runs it (the others return at once); at batch
1 a step is a matrix-vector product bound by reading the weights, which a second core would not speed up
much without splitting the gates across cores with a barrier per step (a later improvement).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ..kernel import F32, I64, KernelBuilder, Unsupported, node_emitter
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
    h = kb.scratch(batch * hidden * 4)
    c = kb.scratch(batch * hidden * 4)
    ln = Lanes(kb.module, b, 1)
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
        with kb.for_range(0, seq, name="step") as s:
            t = b.sub(kb.i64(seq - 1), s) if reverse else s
            _gates(kb, gates, bp, x, wt, h, rt, t, batch, n_in, hidden)
            with kb.for_range(0, batch, name="cb") as bi:
                with kb.for_range(0, hidden, name="cj") as j:
                    base = lin((bi, g4), (j, 1))
                    gi = b.load(at(gates, base))
                    go = b.load(at(gates, b.add(base, kb.i64(hidden))))
                    gf = b.load(at(gates, b.add(base, kb.i64(2 * hidden))))
                    gc = b.load(at(gates, b.add(base, kb.i64(3 * hidden))))
                    sidx = lin((bi, hidden), (j, 1))
                    c_old = b.load(at(c, sidx))
                    c_new = b.fadd(b.fmul(sigmoid(ln, gf), c_old), b.fmul(sigmoid(ln, gi), tanh(ln, gc)))
                    h_new = b.fmul(sigmoid(ln, go), tanh(ln, c_new))
                    b.store(c_new, at(c, sidx))
                    b.store(h_new, at(h, sidx))
                    if Y is not None:
                        b.store(h_new, at(kb.ptr(Y), lin((t, dirs * batch * hidden), (d * batch * hidden, 1),
                                                         (bi, hidden), (j, 1))))
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


def _gates(kb: KernelBuilder, gates, bias, x, wt, h, rt, t, batch: int, n_in: int, hidden: int) -> None:
    """gates[b, :] = bias + x[t, b, :] @ WT + h[b, :] @ RT, as a matrix-vector product per batch row with
    ``BLOCK`` x 16 gate pre-activations held in registers over the whole reduction (the weights stream from
    memory once per row and step; nothing else does). A tail of 4H that is not a multiple of 64 is scalar."""
    b = kb.builder
    g4 = 4 * hidden
    vt = ir.VectorType(F32, VEC)
    vptr = vt.as_pointer()
    fma = kb.intrinsic(f"llvm.fma.v{VEC}f32", vt, [vt, vt, vt])
    sfma = kb.intrinsic("llvm.fma.f32", F32, [F32, F32, F32])
    width = BLOCK * VEC
    full = g4 // width * width

    def splat(v):
        one = b.insert_element(ir.Constant(vt, ir.Undefined), v, ir.Constant(ir.IntType(32), 0))
        return b.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), VEC),
                                                                             [0] * VEC))

    def vload(ptr, idx):
        return b.load(b.bitcast(b.gep(ptr, [idx], inbounds=True), vptr), align=4)

    with kb.for_range(0, batch, name="gb") as bi:
        x_row = b.add(b.mul(t, kb.i64(batch * n_in)), b.mul(bi, kb.i64(n_in)))
        h_row = b.mul(bi, kb.i64(hidden))
        g_row = b.mul(bi, kb.i64(g4))
        if full:
            with kb.for_range(0, full, width, name="jb") as jb:
                accs = [vload(bias, b.add(jb, kb.i64(i * VEC))) for i in range(BLOCK)]
                for src, src_row, weights, count in ((x, x_row, wt, n_in), (h, h_row, rt, hidden)):
                    pre = b.block
                    loop = b.append_basic_block("gk.body")
                    done = b.append_basic_block("gk.end")
                    b.branch(loop)
                    b.position_at_end(loop)
                    k = b.phi(I64)
                    k.add_incoming(kb.i64(0), pre)
                    phis = []
                    for a in accs:
                        ph = b.phi(vt)
                        ph.add_incoming(a, pre)
                        phis.append(ph)
                    xv = splat(b.load(b.gep(src, [b.add(src_row, k)], inbounds=True)))
                    w_at = b.add(b.mul(k, kb.i64(g4)), jb)
                    new = [b.call(fma, [xv, vload(weights, b.add(w_at, kb.i64(i * VEC))), ph])
                           for i, ph in enumerate(phis)]
                    nk = b.add(k, kb.i64(1))
                    k.add_incoming(nk, loop)
                    for ph, n in zip(phis, new):
                        ph.add_incoming(n, loop)
                    b.cbranch(b.icmp_signed("<", nk, kb.i64(count)), loop, done)
                    b.position_at_end(done)
                    accs = new
                for i, a in enumerate(accs):
                    dst = b.gep(gates, [b.add(g_row, b.add(jb, kb.i64(i * VEC)))], inbounds=True)
                    b.store(a, b.bitcast(dst, vptr), align=4)
        if full < g4:
            with kb.for_range(full, g4, name="gj") as j:
                acc = b.load(b.gep(bias, [j]))
                acc_ptr = b.gep(gates, [b.add(g_row, j)])
                b.store(acc, acc_ptr)
                for src, src_row, weights, count in ((x, x_row, wt, n_in), (h, h_row, rt, hidden)):
                    with kb.for_range(0, count, name="gk") as k:
                        v = b.load(b.gep(src, [b.add(src_row, k)]))
                        w = b.load(b.gep(weights, [b.add(b.mul(k, kb.i64(g4)), j)]))
                        b.store(b.call(sfma, [v, w, b.load(acc_ptr)]), acc_ptr)
