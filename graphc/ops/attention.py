"""Ops: attention and the small ops of LLM blocks — Attention, FlexAttention, LinearAttention, RotaryEmbedding,
SwiGLU, CausalConvWithState.

Attention (opset 23-25) in the order its schema states: optional past K/V concatenated (the present outputs),
Q and K each scaled by sqrt(scale), QK^T, softcap, an additive bias (attn_mask, the causal frontier, the
sliding window, the nonpad_kv_seqlen padding), softmax, probabilities @ V. Grouped-query attention repeats each
KV head for ``q_num_heads / kv_num_heads`` consecutive query heads. The causal frontier is bottom-right aligned:
query i attends key j iff ``j <= i + offset``, offset being the past length (internal cache), or
``nonpad_kv_seqlen - q_len`` per batch (external cache), else 0. A query row whose bias is -inf everywhere
attends nothing and gives zeros (not NaN).

The computations keep the intermediate roundings of ONNX's reference (scores and probabilities in the input
type, softmax in ``softmax_precision``): the conformance data were generated that way.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..ir.types import TensorType
from .linalg import compute_dtype, matmul
from .registry import Cost, FusionClass, OpDef, elementwise_infer, register
from .reduce import softmax


def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """(B, S, H*D) -> (B, H, S, D)."""
    b, s, hidden = x.shape
    return x.reshape(b, s, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, H, S, D) -> (B, S, H*D)."""
    b, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def repeat_kv(x: np.ndarray, q_heads: int) -> np.ndarray:
    """Grouped-query attention: KV head h serves query heads h*g ... h*g+g-1 (g = q_heads / kv_heads)."""
    kv_heads = x.shape[1]
    if kv_heads == q_heads:
        return x
    return np.repeat(x, q_heads // kv_heads, axis=1)


def _dim_div(a, b):
    return a // b if isinstance(a, int) and isinstance(b, int) else None


def _dim_mul(a, b):
    return a * b if isinstance(a, int) and isinstance(b, int) else None


def _dim_add(a, b):
    if isinstance(b, int) and b == 0:
        return a
    return a + b if isinstance(a, int) and isinstance(b, int) else None


def _bf16_safe(dtype: np.dtype) -> np.dtype:
    """numpy's ufuncs on the ml_dtypes floats are slow or missing: compute them in float32."""
    return np.dtype(np.float32) if dtype.kind == "V" else dtype


# -- Attention ------------------------------------------------------------------------------------------------


@register
class Attention(OpDef):
    op_type = "Attention"
    fusion = FusionClass.OPAQUE
    attrs = {"is_causal": 0, "softcap": 0.0, "qk_matmul_output_mode": 0}

    @staticmethod
    def _bias(ctx, dtype, sq, skv, attn_mask, past_len, nonpad):
        """The additive bias broadcastable to (B, Hq, Sq, Skv): attn_mask plus -inf where the causal frontier,
        the window or the padding forbids a key. Returned in ``dtype``."""
        neg_inf = dtype.type(-np.inf)
        bias = np.zeros((sq, skv), dtype)
        if attn_mask is not None:
            pad = skv - attn_mask.shape[-1]  # a short mask is padded with "not attended"
            if pad > 0:
                fill = False if attn_mask.dtype == np.bool_ else -np.inf
                attn_mask = np.pad(attn_mask, [(0, 0)] * (attn_mask.ndim - 1) + [(0, pad)], constant_values=fill)
            if attn_mask.dtype == np.bool_:
                attn_mask = np.where(attn_mask, dtype.type(0), neg_inf)
            bias = bias + attn_mask.astype(dtype, copy=False)
        # position of query i is i + offset; offset is per batch (B, 1, 1, 1) for an external cache
        if nonpad is not None and past_len == 0:
            offset = (nonpad.astype(np.int64) - sq).reshape(-1, 1, 1, 1)
        else:
            offset = past_len
        diff = (np.arange(sq)[:, None] + offset) - np.arange(skv)  # query position - key index
        allowed = np.ones(diff.shape, bool)
        if ctx.attr("is_causal"):
            allowed &= diff >= 0
        left, right = ctx.attr("left_window_size", -1), ctx.attr("right_window_size", -1)
        if left >= 0:
            allowed &= diff <= left
        if right >= 0:
            allowed &= -diff <= right
        if nonpad is not None:
            allowed = allowed & (np.arange(skv) < nonpad.reshape(-1, 1, 1, 1))
        if not allowed.all():
            bias = bias + np.where(allowed, dtype.type(0), neg_inf)
        return bias

    def compute(self, ctx, q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
        dtype = q.dtype
        three_d = q.ndim == 3
        if three_d:
            q = split_heads(q, ctx.attr("q_num_heads"))
            k = split_heads(k, ctx.attr("kv_num_heads"))
            v = split_heads(v, ctx.attr("kv_num_heads"))
        past_len = 0
        if past_key is not None:
            past_len = past_key.shape[2]
            k = np.concatenate([past_key, k], axis=2)
            v = np.concatenate([past_value, v], axis=2)
        present_k, present_v = k, v
        heads, sq, head_size = q.shape[1], q.shape[2], q.shape[3]
        skv = k.shape[2]

        scale = ctx.attr("scale")
        scale = 1.0 / np.sqrt(head_size) if scale is None else scale
        root = dtype.type(np.sqrt(scale))  # Q and K are each scaled by sqrt(scale), against overflow
        scores = matmul(q * root, np.swapaxes(repeat_kv(k, heads) * root, -1, -2))
        raw = scores
        softcap = ctx.attr("softcap")
        if softcap > 0:
            scores = (np.tanh(scores / dtype.type(softcap)) * dtype.type(softcap)).astype(dtype, copy=False)
        capped = scores
        bias = self._bias(ctx, dtype, sq, skv, attn_mask, past_len, nonpad_kv_seqlen)
        scores = scores + bias

        precision = ctx.attr("softmax_precision")
        sm_dtype = dtype if precision is None else np.dtype(helper.tensor_dtype_to_np_dtype(precision))
        with np.errstate(invalid="ignore", divide="ignore"):
            probs = softmax(scores.astype(sm_dtype, copy=False), -1)
        masked_rows = np.isneginf(np.max(bias, axis=-1, keepdims=True))
        probs = np.where(masked_rows, sm_dtype.type(0), probs).astype(dtype, copy=False)
        y = matmul(probs, repeat_kv(v, heads))

        mode = ctx.attr("qk_matmul_output_mode")
        qk_out = {0: raw, 1: capped, 2: scores, 3: probs}[mode]
        return [merge_heads(y) if three_d else y, present_k, present_v, qk_out.astype(dtype, copy=False)]

    def infer(self, ctx):
        tq, tk, tv = ctx.input_type(0), ctx.input_type(1), ctx.input_type(2)
        if tq is None or tk is None or tv is None or tq.dtype is None:
            return None
        if tq.shape is None or tk.shape is None or tv.shape is None:
            return [TensorType(tq.dtype, None)] * 4
        tpast = ctx.input_type(4)
        past = tpast.shape[2] if tpast is not None and tpast.shape is not None else 0
        if len(tq.shape) == 3:
            hq, hkv = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
            b, sq = tq.shape[:2]
            skv, d, dv = tk.shape[1], _dim_div(tk.shape[2], hkv), _dim_div(tv.shape[2], hkv)
            y = (b, sq, _dim_mul(hq, dv))
        else:
            b, hq, sq = tq.shape[:3]
            hkv, skv, d, dv = tk.shape[1], tk.shape[2], tk.shape[3], tv.shape[3]
            y = (b, hq, sq, dv)
        total = _dim_add(skv, past)
        return [TensorType(tq.dtype, y), TensorType(tq.dtype, (b, hkv, total, d)),
                TensorType(tv.dtype, (b, hkv, total, dv)), TensorType(tq.dtype, (b, hq, sq, total))]

    def cost(self, ctx):
        """2*Sq*Skv*(D + Dv) per head for the two matmuls, plus ~5 per score for the softmax."""
        base = super().cost(ctx)
        types = self.infer(ctx)
        if not types or types[3] is None or types[1] is None or types[2] is None:
            return base
        scores = types[3].numel()
        d, dv = types[1].shape[3], types[2].shape[3]
        if scores is None or not isinstance(d, int) or not isinstance(dv, int):
            return base
        return Cost(scores * (2 * (d + dv) + 5), base.bytes_read, base.bytes_written)


# -- FlexAttention (ai.onnx.preview) --------------------------------------------------------------------------


@register
class FlexAttention(OpDef):
    """Attention over 4-D inputs whose scores and probabilities may be rewritten by subgraphs (score_mod,
    prob_mod), computed in ``softmax_precision`` (float32 for inputs narrower than that, by default)."""

    op_type = "FlexAttention"
    domain = "ai.onnx.preview"
    fusion = FusionClass.OPAQUE

    def compute(self, ctx, q, k, v):
        dtype = q.dtype
        heads, head_size = q.shape[1], q.shape[3]
        scale = ctx.attr("scale")
        scale = 1.0 / np.sqrt(head_size) if scale is None else scale
        root = np.asarray(np.sqrt(np.float32(scale)), dtype=dtype)
        scores = matmul(q * root, np.swapaxes(repeat_kv(k, heads) * root, -1, -2))
        precision = ctx.attr("softmax_precision")
        sm_dtype = (np.dtype(helper.tensor_dtype_to_np_dtype(precision)) if precision is not None
                    else np.dtype(np.float32) if dtype.itemsize < 4 else dtype)
        scores = scores.astype(sm_dtype)
        if ctx.attr("score_mod") is not None:
            scores = np.asarray(ctx.run_subgraph(ctx.attr("score_mod"), [scores])[0], dtype=sm_dtype)
        probs = softmax(scores, -1)
        if ctx.attr("prob_mod") is not None:
            probs = np.asarray(ctx.run_subgraph(ctx.attr("prob_mod"), [probs])[0], dtype=sm_dtype)
        return matmul(probs, repeat_kv(v, heads).astype(sm_dtype)).astype(v.dtype)

    def infer(self, ctx):
        tq, tv = ctx.input_type(0), ctx.input_type(2)
        if tq is None or tv is None:
            return None
        if tq.shape is None or tv.shape is None:
            return [TensorType(tv.dtype, None)]
        return [TensorType(tv.dtype, tuple(tq.shape[:3]) + (tv.shape[3],))]


# -- LinearAttention ------------------------------------------------------------------------------------------


@register
class LinearAttention(OpDef):
    """The recurrence S_t = decay_t * S_{t-1} + k_t (x) v'_t, o_t = scale * q_t^T S_t, token by token, in float32.

    v'_t is v_t, or beta_t * (v_t - (decay_t * S_{t-1})^T k_t) for the delta rules; decay_t is exp(g_t) for
    the gated rules, else 1. The state S has shape (B, H_kv, d_k, d_v).
    """

    op_type = "LinearAttention"
    fusion = FusionClass.OPAQUE
    attrs = {"update_rule": "gated_delta", "scale": 0.0}

    def compute(self, ctx, query, key, value, past_state=None, decay=None, beta=None):
        rule = ctx.attr("update_rule")
        if rule not in ("linear", "gated", "delta", "gated_delta"):
            raise ctx.fail(f"unknown update_rule {rule!r}")
        hq, hkv = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
        if (decay is None) == gated or (beta is None) == delta:
            raise ctx.fail(f"update_rule {rule!r} needs decay {'given' if gated else 'absent'} and beta "
                           f"{'given' if delta else 'absent'}")
        b, t, _ = query.shape
        f32 = np.float32
        q, k, v = (split_heads(x, h).astype(f32) for x, h in ((query, hq), (key, hkv), (value, hkv)))
        d_k, d_v = q.shape[3], v.shape[3]
        # decay and beta as (B, H_kv, T, d_k or 1); per-head values broadcast over d_k
        if gated:
            decay = (split_heads(decay, hkv) if decay.shape[-1] == hkv * d_k
                     else decay.reshape(b, t, -1, 1).transpose(0, 2, 1, 3))
            decay = np.exp(decay.astype(f32))
        if delta:
            beta = beta.reshape(b, t, -1, 1).transpose(0, 2, 1, 3).astype(f32)
        state = (np.zeros((b, hkv, d_k, d_v), f32) if past_state is None else past_state.astype(f32))
        scale = ctx.attr("scale") or 1.0 / np.sqrt(d_k)
        group = hq // hkv
        out = np.empty((b, hq, t, d_v), f32)
        for i in range(t):
            if gated:
                state = state * decay[:, :, i, :, None]
            v_t = v[:, :, i]
            if delta:
                v_t = beta[:, :, i] * (v_t - np.einsum("bhkv,bhk->bhv", state, k[:, :, i]))
            state = state + k[:, :, i, :, None] * v_t[:, :, None, :]
            q_t = q[:, :, i].reshape(b, hkv, group, d_k)  # query heads grouped by their KV head
            out[:, :, i] = scale * np.einsum("bhgk,bhkv->bhgv", q_t, state).reshape(b, hq, d_v)
        state_dtype = query.dtype if past_state is None else past_state.dtype
        return [merge_heads(out).astype(query.dtype), state.astype(state_dtype)]

    def infer(self, ctx):
        tq, tv, tpast = ctx.input_type(0), ctx.input_type(2), ctx.input_type(3)
        if tq is None or tv is None or tq.shape is None or tv.shape is None:
            return None
        hq, hkv = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        d_k, d_v = _dim_div(tq.shape[2], hq), _dim_div(tv.shape[2], hkv)
        b, t = tq.shape[:2]
        state_dtype = tpast.dtype if tpast is not None else tq.dtype
        return [TensorType(tq.dtype, (b, t, _dim_mul(hq, d_v))), TensorType(state_dtype, (b, hkv, d_k, d_v))]


# -- RotaryEmbedding ------------------------------------------------------------------------------------------


@register
class RotaryEmbedding(OpDef):
    """Rotates pairs of channels of each head by position-dependent angles (cos/sin caches).

    Pairs are (i, i + rot/2) (halves), or (2i, 2i + 1) with ``interleaved``; only the first
    ``rotary_embedding_dim`` channels of a head rotate (all when 0). ``position_ids`` (B, S) index the caches;
    without them the caches are already (B, S, rot/2).
    """

    op_type = "RotaryEmbedding"
    fusion = FusionClass.OPAQUE  # each output mixes two input channels and gathered caches
    attrs = {"interleaved": 0, "rotary_embedding_dim": 0}
    flops_per_element = 3

    def compute(self, ctx, x, cos, sin, position_ids=None):
        dtype = x.dtype
        if x.ndim == 4:  # (B, H, S, D) -> (B, S, H, D)
            xs = x.transpose(0, 2, 1, 3)
        else:
            heads = ctx.attr("num_heads")
            if not heads:
                raise ctx.fail("3-D input needs the num_heads attribute")
            xs = x.reshape(x.shape[0], x.shape[1], heads, -1)
        rot = ctx.attr("rotary_embedding_dim") or xs.shape[-1]
        if position_ids is not None:
            cos, sin = cos[position_ids], sin[position_ids]
        if cos.shape[-1] != rot // 2 or sin.shape[-1] != rot // 2:
            raise ctx.fail(f"cos/sin caches have {cos.shape[-1]} columns, rotary dimension {rot} needs {rot // 2}")
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
        rotate = xs[..., :rot]
        if ctx.attr("interleaved"):
            x1, x2 = rotate[..., 0::2], rotate[..., 1::2]
        else:
            x1, x2 = rotate[..., : rot // 2], rotate[..., rot // 2:]
        real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
        out = xs.copy()
        if ctx.attr("interleaved"):
            out[..., 0:rot:2], out[..., 1:rot:2] = real, imag
        else:
            out[..., : rot // 2], out[..., rot // 2: rot] = real, imag
        out = out.transpose(0, 2, 1, 3) if x.ndim == 4 else out.reshape(x.shape)
        return out.astype(dtype, copy=False)

    def infer(self, ctx):
        t = ctx.input_type(0)
        return None if t is None else [t]


# -- SwiGLU ---------------------------------------------------------------------------------------------------


def _swiglu(ctx, a, b):
    alpha = ctx.attr("alpha", 1.0)
    ca = a.astype(_bf16_safe(a.dtype), copy=False)
    gate = (1 / (1 + np.exp(-alpha * ca))).astype(a.dtype)  # the sigmoid rounds to the input type, as Swish
    return (a * gate * b).astype(a.dtype)


@register
class SwiGLU(OpDef):
    """Y = A * sigmoid(alpha * A) * B (no broadcasting: A and B have one shape)."""

    op_type = "SwiGLU"
    fusion = FusionClass.ELEMENTWISE
    attrs = {"alpha": 1.0}
    flops_per_element = 5

    def compute(self, ctx, a, b):
        if a.shape != b.shape:
            raise ctx.fail(f"A {a.shape} and B {b.shape} must have the same shape")
        return _swiglu(ctx, a, b)

    def infer(self, ctx):
        return elementwise_infer(ctx)


# -- CausalConvWithState --------------------------------------------------------------------------------------


@register
class CausalConvWithState(OpDef):
    """Depthwise causal 1-D convolution over (B, C, L) that carries the last k-1 inputs as state.

    The sequence is the past state (zeros when absent) followed by the input; output position t sees padded
    positions t ... t+k-1. present_state is the last k-1 positions of that padded sequence.
    """

    op_type = "CausalConvWithState"
    fusion = FusionClass.OPAQUE
    attrs = {"activation": "none"}

    def compute(self, ctx, x, weight, bias=None, past_state=None):
        activation = ctx.attr("activation")
        if activation not in ("none", "silu", "swish"):
            raise ctx.fail(f"unknown activation {activation!r}")
        b, c, length = x.shape
        k = weight.shape[2]
        past = np.zeros((b, c, k - 1), x.dtype) if past_state is None else past_state.astype(x.dtype)
        padded = np.concatenate([past, x], axis=2)
        windows = np.lib.stride_tricks.sliding_window_view(padded, k, axis=2)  # (B, C, L, k)
        cdt = compute_dtype(x.dtype)
        y = np.einsum("bclk,ck->bcl", windows.astype(cdt), weight[:, 0, :].astype(cdt))
        if bias is not None:
            y = y + bias.astype(cdt)[:, None]
        y = y.astype(x.dtype)
        if activation != "none":  # silu / swish: y * sigmoid(y) in float32
            y32 = y.astype(np.float32)
            y = (y32 / (1 + np.exp(-y32))).astype(x.dtype)
        return [y, padded[:, :, padded.shape[2] - (k - 1):]]

    def infer(self, ctx):
        tx, tw = ctx.input_type(0), ctx.input_type(1)
        if tx is None or tx.shape is None:
            return None
        k = tw.shape[2] if tw is not None and tw.shape is not None else None
        state = (tx.shape[0], tx.shape[1], k - 1 if isinstance(k, int) else None)
        return [tx, TensorType(tx.dtype, state)]
