"""Ops: the training losses NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.

Both take class scores ``[N, C, d1, ...]`` and integer targets ``[N, d1, ...]``. Targets equal to
``ignore_index`` contribute nothing, neither loss nor weight, and may lie outside ``[0, C)``. ``reduction``
``mean`` divides by the total weight of the counted targets (their count without ``weight``), not by N.
"""

from __future__ import annotations

import numpy as np

from ..ir.types import TensorType
from .registry import Cost, FusionClass, OpContext, OpDef, register


def _nll(ctx: OpContext, log_prob: np.ndarray, target: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """The reduced loss of ``-log_prob[n, target[n, ...], ...] * weight[target]``."""
    ignore = ctx.attr("ignore_index")
    counted = np.ones(target.shape, bool) if ignore is None else target != ignore
    classes = np.where(counted, target, 0).astype(np.int64)
    num_classes = log_prob.shape[1]
    if ((classes < 0) | (classes >= num_classes)).any():
        raise ctx.fail(f"target values must lie in [0, {num_classes}) or equal ignore_index")
    picked = np.take_along_axis(log_prob, classes[:, None], axis=1)[:, 0]
    w = np.ones((), log_prob.dtype) if weight is None else weight[classes]
    w = np.where(counted, w, 0).astype(log_prob.dtype)
    loss = -picked * w
    reduction = ctx.attr("reduction", "mean")
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.asarray(loss.sum(), log_prob.dtype)
    if reduction == "mean":
        return np.asarray(loss.sum() / w.sum(), log_prob.dtype)
    raise ctx.fail(f"unknown reduction {reduction!r}")


class _Loss(OpDef):
    fusion = FusionClass.REDUCTION
    attrs = {"reduction": "mean", "ignore_index": None}

    def infer(self, ctx: OpContext):
        scores, target = ctx.input_type(0), ctx.input_type(1)
        if scores is None:
            return None
        if ctx.attr("reduction", "mean") != "none":
            loss_shape = ()
        else:
            loss_shape = target.shape if target is not None else None
            if loss_shape is None and scores.shape is not None:
                loss_shape = scores.shape[:1] + scores.shape[2:]
        out = [TensorType(scores.dtype, loss_shape)]
        return out + [TensorType(scores.dtype, scores.shape)] * (ctx.num_outputs - 1)

    def cost(self, ctx: OpContext) -> Cost:
        base = super().cost(ctx)
        scores = ctx.input_type(0)
        n = scores.numel() if scores is not None else None
        return Cost(self.flops_per_input * (n or 0), base.bytes_read, base.bytes_written)

    flops_per_input = 1


@register
class NegativeLogLikelihoodLoss(_Loss):
    op_type = "NegativeLogLikelihoodLoss"

    def compute(self, ctx, log_prob, target, weight=None):
        return _nll(ctx, log_prob, target, weight)


@register
class SoftmaxCrossEntropyLoss(_Loss):
    """The NLL loss of ``log_softmax(scores, axis=1)``; the optional second output is that log-softmax."""

    op_type = "SoftmaxCrossEntropyLoss"
    flops_per_input = 5  # max, subtract, exp, sum, log

    def compute(self, ctx, scores, labels, weights=None):
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_prob = (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))).astype(scores.dtype)
        return _nll(ctx, log_prob, labels, weights), log_prob
