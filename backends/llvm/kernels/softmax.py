"""Code generators: Softmax and LogSoftmax (float32/float64), both axis semantics.

Before opset 13 the op acts on all trailing axes from ``axis`` on (the input coerced to 2-D); from 13 on on the
single axis ``axis`` (graphc.ops.reduce.softmax_axes decides). The arithmetic is the reference's:
``m = max`` (replaced by 0 when not finite), ``e = x - m``; Softmax is ``exp(e) / sum(exp(e))``, LogSoftmax
``e - log(sum(exp(e)))``. Three passes over each row, which stays in cache: the max; exp(x - m) written to the
output while it is summed; the output divided by the sum in place (LogSoftmax needs no exp in its last pass).
Each pass reads an element before writing it, so the output may share the input's memory.
"""

from __future__ import annotations

from ..kernel import Unsupported, node_emitter
from ....ops.reduce import softmax_axes
from .rowwise import Arith, RowProgram, Stat, emit_rows, float_dtype, layout_of, node_context


def _shifted_max() -> Stat:
    return Stat(float("-inf"), "max", lambda ar, x, v, p: x,
                lambda ar, m, v: ar.b.select(ar.isfinite(m), m, ar.const(0)))


def softmax_program(ar: Arith, y_ptr, log: bool) -> RowProgram:
    if log:
        total = Stat(0, "add", lambda ar, x, v, p: ar.exp(ar.sub(x, v[0])), lambda ar, s, v: ar.log(s))

        def write(ar, x, v, pos):
            ar.store(ar.sub(ar.sub(x, v[0]), v[1]), y_ptr, pos.flat)

        return RowProgram([_shifted_max(), total], write=write)

    def exp_and_keep(ar, x, v, pos):
        e = ar.exp(ar.sub(x, v[0]))
        ar.store(e, y_ptr, pos.flat)
        return e

    def divide(ar, x, v, pos):
        ar.store(ar.div(ar.load(y_ptr, pos.flat), v[1]), y_ptr, pos.flat)

    return RowProgram([_shifted_max(), Stat(0, "add", exp_and_keep)], write=divide)


@node_emitter("Softmax", "LogSoftmax")
def emit_softmax(kb, node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    dtype = float_dtype(kb.dtype(x))
    shape = kb.shape(x)
    if not shape:
        raise Unsupported("scalar softmax")
    ctx = node_context(node)
    axis = int(ctx.attr("axis"))
    if not -len(shape) <= axis < len(shape):
        raise Unsupported("axis out of range")
    layout = layout_of(shape, softmax_axes(ctx, len(shape)))
    ar = Arith(kb, dtype)
    prog = softmax_program(ar, kb.ptr(y), node.op_type == "LogSoftmax")
    emit_rows(kb, layout, kb.ptr(x), dtype, ar, prog, grain=max(1, 1024 // max(layout.count, 1)))
