"""Row kernels: Softmax, LogSoftmax, LayerNormalization and axis reductions (with the fused ops around them)
as one kernel each, one thread block per row.

A *row* is one index of the kept axes; its *columns* are the reduced axes. Every reduction of the group
(the fusion pass's ``row-reduction`` rule guarantees they share the rows) is a *phase*: the block's threads
stride over the columns, each accumulating its own columns in order, then ``graphc_block_reduce`` combines
the threads (warp shuffles, then the warps' partials through shared memory, in a fixed order: deterministic)
and hands every thread the row statistic. The group's outputs are then written in one more pass over the
columns, with the statistics standing in for the reductions. Prologue ops (a residual Add, a Transpose) are
recomputed in each pass instead of being written to memory.

The group qualifies when every reduction has the same input shape and axes and every output of the group has
that full shape; otherwise (a ReduceMean whose result leaves the kernel) the grid-stride loop kernel runs it.
"""

from __future__ import annotations

import numpy as np

from .codegen_expr import _REDUCE, dtype_of, reduce_axes, static_shape
from .dtypes import Unsupported, c_type, literal, math_fn
from .emitter import delinearize
from .kernel import Frame, Kernel

ROW_OPS = {"Softmax", "LogSoftmax", "LayerNormalization"} | set(_REDUCE)
NEEDS_ROW = {"Softmax", "LogSoftmax", "LayerNormalization"}
MAX_ROWS_GRID = 65535


class NotARow(Exception):
    """The group does not have the row shape; use the loop kernel."""


def row_geometry(frame: Frame, node) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = static_shape(node.inputs[0])
    rank = len(shape)
    if node.op_type in ("Softmax", "LogSoftmax"):
        axis = int(frame.gen.ctx(node).attr("axis", -1 if node.opset >= 13 else 1)) % max(rank, 1)
        axes = (axis,) if node.opset >= 13 else tuple(range(axis, rank))
    elif node.op_type == "LayerNormalization":
        axis = int(frame.gen.ctx(node).attr("axis", -1)) % max(rank, 1)
        axes = tuple(range(axis, rank))
    else:
        axes, _ = reduce_axes(frame.gen, node)
        axes = tuple(axes)
        if not axes:
            raise NotARow()
    return shape, axes


def row_kernel(frame: Frame, rows: list) -> Kernel:
    try:
        return _row_kernel(frame, rows)
    except NotARow:
        if any(r.op_type in NEEDS_ROW for r in rows):
            raise Unsupported("Softmax/LayerNormalization whose group does not have the row shape") from None
        from .codegen_loop import loop_kernel

        return loop_kernel(Frame(frame.node, frame.name))


def _row_kernel(frame: Frame, rows: list) -> Kernel:
    shape, axes = row_geometry(frame, rows[0])
    for r in rows[1:]:
        if row_geometry(frame, r) != (shape, axes):
            raise NotARow()
    if any(static_shape(o) != shape for o in frame.inner_outputs):
        raise NotARow()
    kept = [a for a in range(len(shape)) if a not in axes]
    n_rows = int(np.prod([shape[a] for a in kept])) if kept else 1
    n_cols = int(np.prod([shape[a] for a in axes]))
    em, gen = frame.em, frame.gen
    block = min(256, max(32, -(-n_cols // 32) * 32))
    scratch: dict[str, str] = {}

    def scratch_for(ctype: str) -> str:
        if ctype not in scratch:
            scratch[ctype] = f"scratch_{ctype.replace(' ', '_')}"
        return scratch[ctype]

    body_start = len(em.lines)

    def full_index(row_idx, col: str) -> list[str]:
        col_idx = delinearize(em, col, [shape[a] for a in axes])
        out, r, c = [], iter(row_idx), iter(col_idx)
        for a in range(len(shape)):
            out.append(next(c) if a in axes else next(r))
        return out

    def phase(dt, kind: str, element) -> str:
        """Reduce ``element(idx)`` over the row's columns; every thread gets the result."""
        ctype = c_type(dt)
        init = {"sum": 0, "max": -np.inf}[kind]
        acc = em.var(ctype, literal(init, dt), "acc")
        with em.block(f"for (int c = threadIdx.x; c < {n_cols}; c += blockDim.x)"):
            x = element(full_index(row_idx, "c"))
            if kind == "sum":
                em.line(f"{acc} += {x};")
            else:
                em.line(f"if ({x} > {acc} || {x} != {x}) {acc} = {x};")
        op = "graphc_sum()" if kind == "sum" else "graphc_max()"
        return em.let(ctype, f"graphc_block_reduce<{ctype}>({acc}, {scratch_for(ctype)}, {op})", "s")

    with em.block(f"for (int row = blockIdx.x; row < {n_rows}; row += gridDim.x)"):
        row_idx = delinearize(em, "row", [shape[a] for a in kept])
        for r in rows:
            _phases(frame, r, phase, n_cols)
        with em.block(f"for (int c = threadIdx.x; c < {n_cols}; c += blockDim.x)"):
            idx = full_index(row_idx, "c")
            from .emitter import linear

            lin = em.let("int", linear(idx, shape), "o")
            for inner in frame.inner_outputs:
                em.line(f"{frame.out_names[id(inner)]}[{lin}] = {gen.value(inner, idx)};")
    decls = [f"    __shared__ {ctype} {name}[32];" for ctype, name in scratch.items()]
    em.lines[body_start:body_start] = decls
    grid = (max(1, min(n_rows, MAX_ROWS_GRID)), 1, 1)
    return Kernel(frame.name, frame.source(em.text(), launch_bounds=block), frame.args, grid, (block, 1, 1),
                  shared_bytes=0, cooperative=True, strategy="row")


def _phases(frame: Frame, node, phase, n_cols: int) -> None:
    gen = frame.gen
    x = node.inputs[0]
    dt = dtype_of(node.outputs[0])
    f = lambda name: math_fn(name, dt)  # noqa: E731
    op = node.op_type
    if op in ("Softmax", "LogSoftmax"):
        mx = phase(dt, "max", lambda idx: gen.value(x, idx))
        total = phase(dt, "sum", lambda idx: f"{f('exp')}({gen.value(x, idx)} - {mx})")
        if op == "Softmax":
            gen.overrides[id(node.outputs[0])] = lambda idx: f"{f('exp')}({gen.value(x, idx)} - {mx}) / {total}"
        else:
            log_total = gen.em.let(c_type(dt), f"{f('log')}({total})", "s")
            gen.overrides[id(node.outputs[0])] = lambda idx: f"({gen.value(x, idx)} - {mx}) - {log_total}"
        return
    if op == "LayerNormalization":
        if any(o is not None and o.uses for o in node.outputs[1:]) or \
                any(o is not None and o in frame.inner_outputs for o in node.outputs[1:]):
            raise Unsupported("LayerNormalization whose mean/inv-std outputs are read")
        ctx = gen.ctx(node)
        eps = literal(float(ctx.attr("epsilon", 1e-5)), dt)
        n = literal(n_cols, dt)
        total = phase(dt, "sum", lambda idx: gen.value(x, idx))
        mean = gen.em.let(c_type(dt), f"{total} / {n}", "mean")

        def centered_sq(idx):
            d = gen.em.let(c_type(dt), f"{gen.value(x, idx)} - {mean}", "d")
            return f"{d} * {d}"

        var = phase(dt, "sum", centered_sq)
        inv = gen.em.let(c_type(dt), f"{literal(1, dt)} / {f('sqrt')}({var} / {n} + {eps})", "inv")
        scale = node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        full = static_shape(x)

        def out(idx):
            from .emitter import broadcast_index

            y = f"({gen.value(x, idx)} - {mean}) * {inv} * {gen.value(scale, broadcast_index(idx, full, static_shape(scale)))}"
            if bias is not None:
                y = f"{y} + {gen.value(bias, broadcast_index(idx, full, static_shape(bias)))}"
            return y

        gen.overrides[id(node.outputs[0])] = out
        return
    kind, pre, post = _REDUCE[op]
    if kind not in ("sum", "max"):
        raise NotARow()

    def element(idx):
        v = gen.value(x, idx)
        if pre == "sq":
            return f"{v} * {v}"
        if pre == "abs":
            return f"({v} < 0 ? -{v} : {v})"
        return v

    s = phase(dt, kind, element)
    if post == "mean":
        s = gen.em.let(c_type(dt), f"{s} / {literal(n_cols, dt)}", "s")
    elif post == "sqrt":
        s = gen.em.let(c_type(dt), f"{f('sqrt')}({s})", "s")
    elif post == "log":
        s = gen.em.let(c_type(dt), f"{f('log')}({s})", "s")
    gen.overrides[id(node.outputs[0])] = lambda idx, s=s: s
