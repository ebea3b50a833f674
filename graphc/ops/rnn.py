"""Ops: the recurrent layers RNN, GRU and LSTM.

All three share one driver (:class:`_Recurrent`): it normalises the ``layout`` attribute (1 means batch-major
``X[batch, seq, input]``), computes the input projection ``X @ W^T`` for every time step in one matmul, and then
steps through time with the whole batch at once; each op only supplies its cell (one time step).

``sequence_lens`` is handled by masking rather than by slicing per batch entry: at step ``t`` the entries with
``t >= len`` keep their previous state and emit zeros in ``Y``. Running the reverse direction from the last
step down to 0 with the same mask starts each entry at its own ``len - 1``, which is exactly ONNX's reversal of
each entry's valid prefix.

Activation attributes (``activations``, ``activation_alpha``, ``activation_beta``) list the cell's functions per
direction (forward first); alpha/beta values are consumed one per listed function, in the same order, and
functions without a listed value use their ONNX defaults.
"""

from __future__ import annotations

import numpy as np

from ..ir.types import TensorType
from .registry import Cost, FusionClass, OpContext, OpDef, register


def _sigmoid(x, alpha, beta):
    # split by sign so that exp never overflows
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1 / (1 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1 + e)
    return out


def _softplus(x, alpha, beta):
    return np.logaddexp(x, np.zeros((), x.dtype))


#: name -> (function(x, alpha, beta), default alpha, default beta)
_ACTIVATIONS = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (_sigmoid, None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0)) - 1)), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (_softplus, None, None),
}


def _activation_functions(ctx: OpContext, defaults: list[str], num_directions: int) -> list[list]:
    """Per direction, the cell's activation functions as callables of one array (dtype preserved)."""
    names = ctx.attr("activations") or []
    if not names:
        names = defaults * num_directions
    alphas = ctx.attr("activation_alpha") or []
    betas = ctx.attr("activation_beta") or []
    funcs = []
    for i, name in enumerate(names):
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise ctx.shape_error(f"unknown activation function {name!r}")
        fn, alpha, beta = _ACTIVATIONS[key]
        alpha = alphas[i] if i < len(alphas) else alpha
        beta = betas[i] if i < len(betas) else beta

        def apply(x, fn=fn, alpha=alpha, beta=beta):
            a = None if alpha is None else x.dtype.type(alpha)
            b = None if beta is None else x.dtype.type(beta)
            return np.asarray(fn(x, a, b), dtype=x.dtype)

        funcs.append(apply)
    per_dir = len(defaults)
    if len(funcs) < per_dir * num_directions:  # one list given for a bidirectional layer: share it
        funcs = funcs[:per_dir] * num_directions
    return [funcs[d * per_dir:(d + 1) * per_dir] for d in range(num_directions)]


class _Recurrent(OpDef):
    """Shared driver of RNN, GRU and LSTM; subclasses define ``gates``, ``default_activations`` and ``cell``."""

    fusion = FusionClass.OPAQUE
    attrs = {"direction": "forward", "layout": 0, "hidden_size": None, "clip": None, "activations": None,
             "activation_alpha": None, "activation_beta": None}
    gates = 1
    default_activations: list[str] = []
    has_cell_state = False

    def num_directions(self, ctx: OpContext) -> int:
        return 2 if ctx.attr("direction", "forward") == "bidirectional" else 1

    def hidden_size(self, ctx: OpContext, R: np.ndarray | None = None):
        hidden = ctx.attr("hidden_size")
        if hidden is None and R is not None:
            hidden = R.shape[-1]
        if hidden is None:
            r = ctx.input_type(2)
            hidden = r.shape[-1] if r is not None and r.shape is not None and len(r.shape) == 3 else None
        return hidden

    def compute(self, ctx: OpContext, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None):
        batch_major = ctx.attr("layout", 0) == 1
        if batch_major:
            X = X.transpose(1, 0, 2)
            initial_h = None if initial_h is None else initial_h.transpose(1, 0, 2)
            initial_c = None if initial_c is None else initial_c.transpose(1, 0, 2)
        seq, batch, _ = X.shape
        hidden = self.hidden_size(ctx, R)
        num_dirs = W.shape[0]
        dtype = X.dtype
        funcs = _activation_functions(ctx, self.default_activations, num_dirs)
        clip = ctx.attr("clip")
        lens = np.full(batch, seq, np.int64) if sequence_lens is None else sequence_lens.astype(np.int64)

        Y = np.zeros((seq, num_dirs, batch, hidden), dtype)
        Y_h = np.zeros((num_dirs, batch, hidden), dtype)
        Y_c = np.zeros((num_dirs, batch, hidden), dtype)
        reverse = ctx.attr("direction", "forward") == "reverse"
        for d in range(num_dirs):
            b = np.zeros(2 * self.gates * hidden, dtype) if B is None else B[d]
            state = {
                "h": np.zeros((batch, hidden), dtype) if initial_h is None else initial_h[d].astype(dtype),
                "c": np.zeros((batch, hidden), dtype) if initial_c is None else initial_c[d].astype(dtype),
            }
            weights = {
                "R": R[d], "Wb": b[:self.gates * hidden], "Rb": b[self.gates * hidden:],
                "P": None if P is None else P[d], "clip": clip, "f": funcs[d], "hidden": hidden,
                **self.cell_options(ctx),
            }
            # the input projection of every step at once: [seq, batch, gates*hidden]
            xw = X @ W[d].T
            steps = range(seq - 1, -1, -1) if (reverse or d == 1) else range(seq)
            for t in steps:
                h, c = self.cell(xw[t], state["h"], state["c"], weights)
                mask = (t < lens)[:, None]
                state["h"] = np.where(mask, h, state["h"])
                if c is not None:
                    state["c"] = np.where(mask, c, state["c"])
                Y[t, d] = np.where(mask, h, 0)
            Y_h[d] = state["h"]
            Y_c[d] = state["c"]
        if batch_major:
            Y, Y_h, Y_c = Y.transpose(2, 0, 1, 3), Y_h.transpose(1, 0, 2), Y_c.transpose(1, 0, 2)
        outputs = [Y, Y_h, Y_c] if self.has_cell_state else [Y, Y_h]
        return tuple(np.ascontiguousarray(o) for o in outputs)

    @staticmethod
    def clipped(x, clip):
        return x if clip is None else np.clip(x, -clip, clip)

    def cell_options(self, ctx: OpContext) -> dict:
        """Op-specific attributes the cell reads from its ``w`` dict."""
        return {}

    def cell(self, xw, h, c, w):
        """One time step for the whole batch: returns the new (h, c) (c is None for cells without one)."""
        raise NotImplementedError

    def infer(self, ctx: OpContext):
        x = ctx.input_type(0)
        if x is None or x.shape is None or len(x.shape) != 3:
            return None
        dirs = self.num_directions(ctx)
        hidden = self.hidden_size(ctx)
        if ctx.attr("layout", 0) == 1:
            batch, seq = x.shape[0], x.shape[1]
            y, state = (batch, seq, dirs, hidden), (batch, dirs, hidden)
        else:
            seq, batch = x.shape[0], x.shape[1]
            y, state = (seq, dirs, batch, hidden), (dirs, batch, hidden)
        count = 3 if self.has_cell_state else 2
        return [TensorType(x.dtype, y)] + [TensorType(x.dtype, state)] * (count - 1)

    def cost(self, ctx: OpContext) -> Cost:
        base = super().cost(ctx)
        x = ctx.input_type(0)
        hidden = self.hidden_size(ctx)
        if x is None or not x.is_static or not isinstance(hidden, int):
            return Cost(0, base.bytes_read, base.bytes_written)
        seq, batch, inp = x.shape
        if ctx.attr("layout", 0) == 1:
            seq, batch = batch, seq
        flops = 2 * seq * batch * self.gates * hidden * (inp + hidden) * self.num_directions(ctx)
        return Cost(flops, base.bytes_read, base.bytes_written)


@register
class RNN(_Recurrent):
    """Elman RNN: ``H = f(X W^T + H R^T + Wb + Rb)``."""

    op_type = "RNN"
    gates = 1
    default_activations = ["Tanh"]

    def cell(self, xw, h, c, w):
        f, = w["f"]
        return f(self.clipped(xw + h @ w["R"].T + w["Wb"] + w["Rb"], w["clip"])), None


@register
class GRU(_Recurrent):
    """GRU with gates in ONNX's order z (update), r (reset), h; ``linear_before_reset`` applies the reset
    gate after the recurrent matmul (cuDNN's formulation) instead of before it."""

    op_type = "GRU"
    attrs = {**_Recurrent.attrs, "linear_before_reset": 0}
    gates = 3
    default_activations = ["Sigmoid", "Tanh"]

    def cell_options(self, ctx):
        return {"linear_before_reset": ctx.attr("linear_before_reset", 0)}

    def cell(self, xw, h, c, w):
        f, g = w["f"]
        n = w["hidden"]
        R, Wb, Rb, clip = w["R"], w["Wb"], w["Rb"], w["clip"]
        # z and r in one matmul
        zr = xw[:, :2 * n] + h @ R[:2 * n].T + Wb[:2 * n] + Rb[:2 * n]
        zr = f(self.clipped(zr, clip))
        z, r = zr[:, :n], zr[:, n:]
        if w["linear_before_reset"]:
            pre = xw[:, 2 * n:] + r * (h @ R[2 * n:].T + Rb[2 * n:]) + Wb[2 * n:]
        else:
            pre = xw[:, 2 * n:] + (r * h) @ R[2 * n:].T + Rb[2 * n:] + Wb[2 * n:]
        h_tilde = g(self.clipped(pre, clip))
        return (1 - z) * h_tilde + z * h, None


@register
class LSTM(_Recurrent):
    """LSTM with gates in ONNX's order i, o, f, c; optional peepholes ``P = [p_i, p_o, p_f]``;
    ``input_forget`` couples the gates as ``i = 1 - f``."""

    op_type = "LSTM"
    attrs = {**_Recurrent.attrs, "input_forget": 0}
    gates = 4
    default_activations = ["Sigmoid", "Tanh", "Tanh"]
    has_cell_state = True

    def cell_options(self, ctx):
        return {"input_forget": ctx.attr("input_forget", 0)}

    def cell(self, xw, h, c, w):
        f, g, act_h = w["f"]
        n = w["hidden"]
        P, clip = w["P"], w["clip"]
        pre = xw + h @ w["R"].T + w["Wb"] + w["Rb"]
        pi, po, pf = (None, None, None) if P is None else (P[:n], P[n:2 * n], P[2 * n:])
        i_pre, o_pre, f_pre, c_pre = pre[:, :n], pre[:, n:2 * n], pre[:, 2 * n:3 * n], pre[:, 3 * n:]
        if P is not None:
            i_pre = i_pre + pi * c
            f_pre = f_pre + pf * c
        forget = f(self.clipped(f_pre, clip))
        inp = 1 - forget if w["input_forget"] else f(self.clipped(i_pre, clip))
        c_new = forget * c + inp * g(self.clipped(c_pre, clip))
        if P is not None:
            o_pre = o_pre + po * c_new
        out = f(self.clipped(o_pre, clip))
        return out * act_h(c_new), c_new
