"""Ops: miscellany — NonMaxSuppression, the random generators, the preview training optimizers and the string
ops (StringConcat, StringSplit, StringNormalizer, RegexFullMatch). The ``ai.onnx.ml`` ops live in
:mod:`graphc.ops.ml`.

Random ops draw from a ``numpy.random.Generator`` seeded with the ``seed`` attribute when one is given (so a
seeded node is reproducible within graphc, though not bit-equal to other runtimes) and from fresh entropy
otherwise.

The optimizers (Adagrad, Adam, Momentum of domain ``ai.onnx.preview.training``) update several tensors at
once: their inputs are ``R, T`` followed by one group per state kind (``X...``, ``G...``, then ``H...`` and/or
``V...``), and their outputs one group per updated kind, in the same order.

String tensors are object arrays of Python ``str`` (bytes are decoded as UTF-8 on the way in).
"""

from __future__ import annotations

import numpy as np

from ..ir.types import TensorType, dtype_from_onnx
from .registry import REQUIRED, FusionClass, OpContext, OpDef, register


# -- NonMaxSuppression -------------------------------------------------------------------------------------------

def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """Boxes as [..., (y1, x1, y2, x2)] with y1 <= y2 and x1 <= x2 (ONNX allows either diagonal)."""
    boxes = boxes.astype(np.float64)
    if center_point_box:
        x, y, w, h = np.moveaxis(boxes, -1, 0)
        return np.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], axis=-1)
    y1, x1, y2, x2 = np.moveaxis(boxes, -1, 0)
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], axis=-1)


def _iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise intersection-over-union of [n, 4] corner boxes (0 where the union is empty)."""
    y1, x1, y2, x2 = boxes.T
    area = (y2 - y1) * (x2 - x1)
    ih = np.clip(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None)
    iw = np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None)
    inter = ih * iw
    union = area[:, None] + area - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@register
class NonMaxSuppression(OpDef):
    """Greedy NMS per (batch, class): take boxes by decreasing score (above ``score_threshold``), dropping
    those whose IoU with an already selected box is strictly above ``iou_threshold``. Output rows are
    ``(batch, class, box)`` int64 triples."""

    op_type = "NonMaxSuppression"
    attrs = {"center_point_box": 0}

    def compute(self, ctx, boxes, scores, max_output_boxes_per_class=None, iou_threshold=None,
                score_threshold=None):
        limit = 0 if max_output_boxes_per_class is None else int(np.asarray(max_output_boxes_per_class).reshape(-1)[0])
        iou_limit = 0.0 if iou_threshold is None else float(np.asarray(iou_threshold).reshape(-1)[0])
        min_score = None if score_threshold is None else float(np.asarray(score_threshold).reshape(-1)[0])
        selected = []
        if limit > 0:
            corners = _corners(boxes, ctx.attr("center_point_box", 0))
            for b in range(scores.shape[0]):
                iou = _iou_matrix(corners[b])
                for c in range(scores.shape[1]):
                    s = scores[b, c]
                    order = np.argsort(-s, kind="stable")
                    if min_score is not None:
                        order = order[s[order] > min_score]
                    suppressed = np.zeros(len(s), bool)
                    kept = 0
                    for i in order:
                        if suppressed[i]:
                            continue
                        selected.append((b, c, i))
                        kept += 1
                        if kept == limit:
                            break
                        suppressed |= iou[i] > iou_limit
        return np.asarray(selected, dtype=np.int64).reshape(-1, 3)

    def infer(self, ctx):
        return [TensorType(np.int64, (None, 3))]


# -- random generators -------------------------------------------------------------------------------------------

def _rng(ctx: OpContext) -> np.random.Generator:
    seed = ctx.attr("seed")
    # the seed is a float attribute: its bit pattern keeps fractional and negative seeds distinct and valid
    return np.random.default_rng(None if seed is None else int(np.float32(seed).view(np.uint32)))


class _Random(OpDef):
    """Shared parts of the random ops. The ``*Like`` variants take shape (and default dtype) from an input."""

    fusion = FusionClass.OPAQUE
    deterministic = False
    like = False

    def out_dtype(self, ctx: OpContext, input_dtype) -> np.dtype:
        dtype = ctx.attr("dtype")
        if dtype is not None:
            return dtype_from_onnx(dtype)
        return np.dtype(input_dtype) if input_dtype is not None else np.dtype(np.float32)

    def compute(self, ctx, x=None):
        shape = x.shape if self.like else tuple(ctx.attr("shape"))
        dtype = self.out_dtype(ctx, None if x is None else x.dtype)
        return np.asarray(self.draw(ctx, _rng(ctx), shape, x), dtype=dtype)

    def draw(self, ctx, rng, shape, x):
        raise NotImplementedError

    def infer(self, ctx):
        if self.like:
            t = ctx.input_type(0)
            return [TensorType(self.out_dtype(ctx, t.dtype if t else None), t.shape if t else None)]
        return [TensorType(self.out_dtype(ctx, None), tuple(ctx.attr("shape")))]


class _Uniform(_Random):
    attrs = {"low": 0.0, "high": 1.0}

    def draw(self, ctx, rng, shape, x):
        return rng.uniform(ctx.attr("low", 0.0), ctx.attr("high", 1.0), shape)


class _Normal(_Random):
    attrs = {"mean": 0.0, "scale": 1.0}

    def draw(self, ctx, rng, shape, x):
        return rng.normal(ctx.attr("mean", 0.0), ctx.attr("scale", 1.0), shape)


@register
class RandomUniform(_Uniform):
    op_type = "RandomUniform"
    attrs = {**_Uniform.attrs, "shape": REQUIRED}


@register
class RandomNormal(_Normal):
    op_type = "RandomNormal"
    attrs = {**_Normal.attrs, "shape": REQUIRED}


@register
class RandomUniformLike(_Uniform):
    op_type = "RandomUniformLike"
    like = True


@register
class RandomNormalLike(_Normal):
    op_type = "RandomNormalLike"
    like = True


@register
class Bernoulli(_Random):
    """1 with probability ``input`` (elementwise), else 0."""

    op_type = "Bernoulli"
    like = True

    def draw(self, ctx, rng, shape, x):
        return rng.uniform(0.0, 1.0, shape) < x


# -- training optimizers -----------------------------------------------------------------------------------------

class _Optimizer(OpDef):
    """``update(ctx, R, T, x, g, *states)`` returns the new (x, *states) of one optimized tensor; arithmetic
    runs in float64 and results take each tensor's own dtype."""

    domain = "ai.onnx.preview.training"
    fusion = FusionClass.ELEMENTWISE
    num_states = 1

    def compute(self, ctx, R, T, *tensors):
        n = len(tensors) // (2 + self.num_states)
        groups = [tensors[k * n:(k + 1) * n] for k in range(2 + self.num_states)]
        rate, step = float(np.asarray(R).reshape(-1)[0]), int(np.asarray(T).reshape(-1)[0])
        new = [[] for _ in range(1 + self.num_states)]
        for i in range(n):
            originals = [group[i] for group in groups]
            updated = self.update(ctx, rate, step, *(a.astype(np.float64) for a in originals))
            for out, value, like in zip(new, updated, [originals[0]] + originals[2:]):
                out.append(np.asarray(value, dtype=like.dtype))
        return tuple(v for group in new for v in group)

    def update(self, ctx, rate, step, x, g, *states):
        raise NotImplementedError

    def infer(self, ctx):
        n = (ctx.num_inputs - 2) // (2 + self.num_states)
        kinds = [0] + list(range(2, 2 + self.num_states))  # X, then the state groups
        return [ctx.input_type(2 + k * n + i) for k in kinds for i in range(n)]


@register
class Adagrad(_Optimizer):
    op_type = "Adagrad"
    attrs = {"decay_factor": 0.0, "epsilon": 1e-6, "norm_coefficient": 0.0}

    def update(self, ctx, rate, step, x, g, h):
        r = rate / (1 + step * ctx.attr("decay_factor", 0.0))
        g = ctx.attr("norm_coefficient", 0.0) * x + g
        h = h + g * g
        return x - r * g / (np.sqrt(h) + ctx.attr("epsilon", 1e-6)), h


@register
class Momentum(_Optimizer):
    """Standard (``X -= R * V``) or Nesterov (``X -= R * (G + alpha * V)``) momentum; beta is 1 at T = 0."""

    op_type = "Momentum"
    attrs = {"alpha": REQUIRED, "beta": REQUIRED, "mode": REQUIRED, "norm_coefficient": REQUIRED}

    def update(self, ctx, rate, step, x, g, v):
        alpha = ctx.attrs["alpha"]
        beta = ctx.attrs["beta"] if step > 0 else 1.0
        g = ctx.attrs["norm_coefficient"] * x + g
        v = alpha * v + beta * g
        direction = g + alpha * v if ctx.attrs["mode"] == "nesterov" else v
        return x - rate * direction, v


@register
class Adam(_Optimizer):
    """Adam with bias-corrected learning rate for T > 0 and optional post-update decay."""

    op_type = "Adam"
    attrs = {"alpha": 0.9, "beta": 0.999, "epsilon": 1e-6, "norm_coefficient": 0.0, "norm_coefficient_post": 0.0}
    num_states = 2

    def update(self, ctx, rate, step, x, g, v, h):
        alpha, beta = ctx.attr("alpha", 0.9), ctx.attr("beta", 0.999)
        g = ctx.attr("norm_coefficient", 0.0) * x + g
        v = alpha * v + (1 - alpha) * g
        h = beta * h + (1 - beta) * g * g
        if step > 0:
            rate = rate * np.sqrt(1 - beta ** step) / (1 - alpha ** step)
        x = x - rate * v / (np.sqrt(h) + ctx.attr("epsilon", 1e-6))
        return (1 - ctx.attr("norm_coefficient_post", 0.0)) * x, v, h


# -- strings (object arrays of Python str) -----------------------------------------------------------------------

def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _strings(x: np.ndarray) -> np.ndarray:
    return np.vectorize(_text, otypes=[object])(x) if x.size else x.astype(object)


class _StringOp(OpDef):
    fusion = FusionClass.OPAQUE


@register
class StringConcat(_StringOp):
    op_type = "StringConcat"

    def compute(self, ctx, a, b):
        return np.asarray(np.add(_strings(a), _strings(b), dtype=object), dtype=object)


@register
class RegexFullMatch(_StringOp):
    """Whether each string matches ``pattern`` entirely (RE2 syntax; Python's ``re`` accepts the common subset)."""

    op_type = "RegexFullMatch"
    attrs = {"pattern": REQUIRED}

    def compute(self, ctx, x):
        import re

        try:
            pattern = re.compile(ctx.attrs["pattern"])
        except re.error as exc:
            raise ctx.fail(f"invalid pattern {ctx.attrs['pattern']!r}: {exc}") from None
        match = np.vectorize(lambda s: pattern.fullmatch(_text(s)) is not None, otypes=[np.bool_])
        return match(x) if x.size else np.zeros(x.shape, np.bool_)


@register
class StringSplit(_StringOp):
    """Split each string on ``delimiter`` (on runs of whitespace when it is absent or empty) at most
    ``maxsplit`` times; outputs the pieces padded with "" to the longest split, and the piece counts."""

    op_type = "StringSplit"

    def compute(self, ctx, x):
        delimiter = ctx.attr("delimiter") or None
        maxsplit = ctx.attr("maxsplit", -1)
        pieces = [_text(s).split(delimiter, maxsplit) for s in x.reshape(-1)]
        width = max((len(p) for p in pieces), default=0)
        out = np.full((len(pieces), width), "", dtype=object)
        for i, p in enumerate(pieces):
            out[i, :len(p)] = p
        counts = np.array([len(p) for p in pieces], np.int64)
        return out.reshape(x.shape + (width,)), counts.reshape(x.shape)


@register
class StringNormalizer(_StringOp):
    """Drop ``stopwords`` from a [C] or [1, C] string tensor, then change case. An input left empty becomes
    one empty string (ONNX keeps the output non-empty)."""

    op_type = "StringNormalizer"
    attrs = {"case_change_action": "NONE", "is_case_sensitive": 0, "stopwords": None}

    def compute(self, ctx, x):
        words = [_text(s) for s in x.reshape(-1)]
        stop = ctx.attr("stopwords") or []
        if ctx.attr("is_case_sensitive", 0):
            words = [w for w in words if w not in set(stop)]
        else:
            folded = {s.casefold() for s in stop}
            words = [w for w in words if w.casefold() not in folded]
        action = ctx.attr("case_change_action", "NONE")
        if action == "LOWER":
            words = [w.lower() for w in words]
        elif action == "UPPER":
            words = [w.upper() for w in words]
        out = np.array(words or [""], dtype=object)
        return out.reshape(1, -1) if x.ndim == 2 else out
