"""Element expressions: the C code that computes one element of a value at a given index.

:class:`ElementGen` is how every fused group becomes code. Asked for value ``v`` at index ``idx`` (one C
expression per dim of ``v``), it emits the statements that compute it into an :class:`~.emitter.Emitter` and
returns the C variable holding it:

- a kernel argument is loaded (``p3[linear index]``), a broadcast operand at its broadcast index;
- a value made inside the kernel is computed by its producer's rule from its inputs at the indices that the
  producer reads (elementwise: the same index after broadcasting; Transpose/Reshape/Concat/Slice/Gather...:
  remapped indices; windowed and axis reductions, direct convolution and small matrix products: a loop);
- an *override* (a GEMM accumulator, a row statistic of a Softmax) stands in for a value.

Values are computed once per (value, index) in a block: an elementwise chain reads each input once; a Concat
or Pad computes an operand only inside the branch that needs it (no out-of-bounds read).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...ir.graph import Node
from ...ops import OpContext, lookup
from . import codegen_math as cm
from .dtypes import Unsupported, c_type, is_float, literal, math_fn
from .emitter import Emitter, broadcast_index, delinearize, linear


def static_shape(v) -> tuple[int, ...]:
    t = getattr(v, "type", None)
    shape = getattr(t, "shape", None)
    if shape is None or not all(isinstance(d, int) for d in shape):
        raise Unsupported(f"value {getattr(v, 'name', v)!r} has no static shape")
    return tuple(int(d) for d in shape)


def dtype_of(v) -> np.dtype:
    dt = getattr(getattr(v, "type", None), "dtype", None)
    if dt is None:
        raise Unsupported(f"value {v.name!r} has no known dtype")
    return np.dtype(dt)


class ElementGen:
    def __init__(self, em: Emitter, args: dict[int, str]):
        self.em = em
        self.args = args  # id(value) -> pointer parameter name
        self.overrides: dict[int, Callable[[list[str]], str]] = {}
        self.component: str | None = None  # vector mode: "x".."w" selects a lane of a float4 load
        self.vector_inputs: dict[int, str] = {}  # id(value) -> float4 variable (vector mode)
        self._ctx: dict[int, OpContext] = {}
        self.constants: dict[int, np.ndarray] = {}  # id(body input) -> the scalar weight it stands for

    def const_of(self, v):
        """The compile-time value of ``v`` (a weight, or a body input standing for a scalar weight), or None."""
        if v is None:
            return None
        return v.const if v.const is not None else self.constants.get(id(v))

    # -- entry point ----------------------------------------------------------------------------------------
    def value(self, v, idx: list[str]) -> str:
        key = (id(v), tuple(idx), self.component)
        hit = self.em.memo_get(key)
        if hit is not None:
            return hit
        ctype = c_type(dtype_of(v))
        if id(v) in self.overrides:
            expr = self.overrides[id(v)](idx)
        elif self.component is not None and id(v) in self.vector_inputs:
            expr = f"{self.vector_inputs[id(v)]}.{self.component}"
        elif id(v) in self.args:
            expr = f"{self.args[id(v)]}[{linear(idx, static_shape(v))}]"
        elif v.is_constant and np.asarray(v.const).size == 1:
            expr = literal(np.asarray(v.const).reshape(-1)[0], dtype_of(v))
        elif v.producer is not None:
            node = v.producer
            rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if rule is None:
                raise Unsupported(f"{node.op_type} has no CUDA element rule")
            expr = rule(self, node, list(node.outputs).index(v), idx)
        else:
            raise Unsupported(f"value {v.name!r} is neither an argument nor computed in the kernel")
        name = self.em.let(ctype, expr)
        self.em.memo_put(key, name)
        return name

    def ctx(self, node: Node) -> OpContext:
        c = self._ctx.get(id(node))
        if c is None:
            opdef = lookup(node.domain, node.op_type)
            if opdef is None:
                raise Unsupported(f"unknown op {node.op_type}")
            c = self._ctx[id(node)] = OpContext(node, opdef)
        return c

    def operand(self, node: Node, i: int, idx: list[str]) -> str:
        """Input ``i`` of an elementwise node at the broadcast of output index ``idx``."""
        x = node.inputs[i]
        return self.value(x, broadcast_index(idx, static_shape(node.outputs[0]), static_shape(x)))


# -- elementwise ---------------------------------------------------------------------------------------------------

def _elementwise(gen: ElementGen, node: Node, k: int, idx):
    op = node.op_type
    out_dt = dtype_of(node.outputs[0])
    attrs = gen.ctx(node).attrs
    present = [i for i, x in enumerate(node.inputs) if x is not None]
    if op in cm.UNARY:
        return cm.unary(op, gen.operand(node, 0, idx), out_dt, attrs)
    if op in cm.NARY:
        xs = [gen.operand(node, i, idx) for i in present]
        acc = xs[0]
        for y in xs[1:]:
            acc = gen.em.let(c_type(out_dt), cm.binary("Add" if op in ("Sum", "Mean") else op, acc, y, out_dt, attrs))
        if op == "Mean":
            acc = f"({acc} / {literal(len(xs), out_dt)})"
        return acc
    if op in cm.BINARY:
        in_dt = dtype_of(node.inputs[0])
        return cm.binary(op, gen.operand(node, 0, idx), gen.operand(node, 1, idx), in_dt, attrs)
    raise Unsupported(op)


def _cast(gen, node, k, idx):
    out_dt = dtype_of(node.outputs[0])
    in_dt = dtype_of(node.inputs[0])
    x = gen.operand(node, 0, idx)
    if out_dt == np.bool_:
        return f"({x} != 0)"
    if is_float(in_dt) and not is_float(out_dt):
        raise Unsupported("float -> int Cast (NaN/overflow semantics)")
    return f"(({c_type(out_dt)}){x})"


def _where(gen, node, k, idx):
    c, a, b = (gen.operand(node, i, idx) for i in range(3))
    return f"({c} ? {a} : {b})"


def _clip(gen, node, k, idx):
    ctx = gen.ctx(node)
    dt = dtype_of(node.outputs[0])
    x = gen.operand(node, 0, idx)
    if node.opset < 11:
        lo, hi = ctx.attr("min"), ctx.attr("max")
    else:
        lo = hi = None
        for i in (1, 2):
            if i < len(node.inputs) and node.inputs[i] is not None:
                c = gen.const_of(node.inputs[i])
                if c is None:
                    raise Unsupported("Clip with non-constant bounds")
                if i == 1:
                    lo = np.asarray(c).reshape(-1)[0]
                else:
                    hi = np.asarray(c).reshape(-1)[0]
    out = x
    if lo is not None:
        out = f"({out} < {literal(lo, dt)} ? {literal(lo, dt)} : {out})"
    if hi is not None:
        out = f"({out} > {literal(hi, dt)} ? {literal(hi, dt)} : {out})"
    return out


def _batchnorm(gen, node, k, idx):
    if k != 0 or any(o is not None and o.uses for o in node.outputs[1:]):
        raise Unsupported("BatchNormalization in training mode")
    dt = dtype_of(node.outputs[0])
    eps = literal(gen.ctx(node).attr("epsilon", 1e-5), dt)
    c = [idx[1]] if len(idx) > 1 else ["0"]
    x = gen.value(node.inputs[0], idx)
    scale, bias, mean, var = (gen.value(node.inputs[i], c) for i in (1, 2, 3, 4))
    return f"(({x} - {mean}) * ({scale} / {math_fn('sqrt', dt)}({var} + {eps})) + {bias})"


# -- injective -----------------------------------------------------------------------------------------------------

def _reshape(gen, node, k, idx):
    x = node.inputs[0]
    lin = gen.em.let("int", linear(idx, static_shape(node.outputs[0])), "l")
    return gen.value(x, delinearize(gen.em, lin, static_shape(x)))


def _transpose(gen, node, k, idx):
    rank = len(idx)
    perm = gen.ctx(node).attr("perm") or list(reversed(range(rank)))
    src = [None] * rank
    for j, p in enumerate(perm):
        src[int(p)] = idx[j]
    return gen.value(node.inputs[0], src)


def _expand(gen, node, k, idx):
    return gen.operand(node, 0, idx)


def _tile(gen, node, k, idx):
    shape = static_shape(node.inputs[0])
    return gen.value(node.inputs[0], ["0" if d == 1 else f"({i}) % {d}" for i, d in zip(idx, shape)])


def _branches(gen, node, cases, dt, default=None):
    """``cases``: list of (condition or None for else, thunk computing the value). Returns the result variable."""
    out = gen.em.var(c_type(dt), None, "r")
    for n, (cond, thunk) in enumerate(cases):
        header = ("if" if n == 0 else "else if") + f" ({cond})" if cond is not None else "else"
        with gen.em.block(header):
            gen.em.line(f"{out} = {thunk()};")
    return out


def _concat(gen, node, k, idx):
    out_shape = static_shape(node.outputs[0])
    axis = int(gen.ctx(node).attr("axis")) % len(out_shape)
    inputs = [x for x in node.inputs if x is not None and static_shape(x)[axis] > 0]
    cases, start = [], 0
    for n, x in enumerate(inputs):
        size = static_shape(x)[axis]
        sub = list(idx)
        sub[axis] = idx[axis] if start == 0 else f"({idx[axis]} - {start})"
        cond = None if n == len(inputs) - 1 else f"{idx[axis]} < {start + size}"
        cases.append((cond, lambda x=x, sub=sub: gen.value(x, sub)))
        start += size
    if len(cases) == 1:
        return cases[0][1]()
    return _branches(gen, node, cases, dtype_of(node.outputs[0]))


def _split(gen, node, k, idx):
    axis = int(gen.ctx(node).attr("axis", 0)) % len(idx)
    offset = sum(static_shape(o)[axis] for o in node.outputs[:k])
    sub = list(idx)
    sub[axis] = idx[axis] if offset == 0 else f"({idx[axis]} + {offset})"
    return gen.value(node.inputs[0], sub)


def _slice(gen, node, k, idx):
    from ...ops.tensor import _slice_args, _slice_operands, slice_bounds

    ctx = gen.ctx(node)
    shape = static_shape(node.inputs[0])
    starts, ends, axes, steps = _slice_operands(ctx)
    if any(not isinstance(x, list) and x is not None for x in (starts, ends, axes, steps)):
        raise Unsupported("Slice with non-constant operands")
    sub = list(idx)
    for axis, start, end, step in _slice_args(ctx, len(shape), starts, ends, axes, steps, ctx.shape_error):
        first, _, stride = slice_bounds(start, end, step, shape[axis]).indices(shape[axis])
        term = idx[axis] if stride == 1 else f"{idx[axis]} * {stride}"
        sub[axis] = term if first == 0 else f"({first} + {term})"
    return gen.value(node.inputs[0], sub)


def _pad(gen, node, k, idx):
    from ...ops.tensor import _pad_operands

    ctx = gen.ctx(node)
    if ctx.attr("mode", "constant") != "constant":
        raise Unsupported("Pad modes other than constant")
    pads, value = _pad_operands(ctx, len(idx))
    if pads is None or (value is not None and not isinstance(value, (int, float, np.ndarray, np.generic))):
        raise Unsupported("Pad with non-constant pads")
    if any(b < 0 or e < 0 for b, e in pads):
        raise Unsupported("Pad with negative pads")
    dt = dtype_of(node.outputs[0])
    fill = literal(0 if value is None else np.asarray(value).reshape(-1)[0], dt)
    shape = static_shape(node.inputs[0])
    sub, conds = [], []
    for i, (b, _), d in zip(idx, pads, shape):
        s = i if b == 0 else gen.em.let("int", f"{i} - {b}", "i")
        sub.append(s)
        if (b, _) != (0, 0):
            conds.append(f"{s} >= 0 && {s} < {d}")
    if not conds:
        return gen.value(node.inputs[0], sub)
    return _branches(gen, node, [(" && ".join(conds), lambda: gen.value(node.inputs[0], sub)),
                                 (None, lambda: fill)], dt)


def _gather(gen, node, k, idx):
    data, indices = node.inputs[0], node.inputs[1]
    dshape, ishape = static_shape(data), static_shape(indices)
    axis = int(gen.ctx(node).attr("axis", 0)) % len(dshape)
    r = len(ishape)
    raw = gen.value(indices, idx[axis:axis + r])
    i = gen.em.let("long long", f"(long long){raw}", "g")
    i = gen.em.let("int", f"(int)({i} < 0 ? {i} + {dshape[axis]} : {i})", "g")
    return gen.value(data, idx[:axis] + [i] + idx[axis + r:])


# -- loops: reductions, pools, direct convolution, small matrix products --------------------------------------

def _for(gen, var_prefix: str, n: int | str):
    v = gen.em.fresh(var_prefix)
    return v, gen.em.block(f"for (int {v} = 0; {v} < {n}; ++{v})")


class _Reducer:
    """An accumulator in the emitter: ``init``, ``add(x)``, ``result``."""

    def __init__(self, gen, kind: str, dt):
        self.gen, self.kind, self.dt = gen, kind, dt
        init = {"sum": 0, "prod": 1, "max": -np.inf, "min": np.inf}[kind]
        if not is_float(dt) and kind in ("max", "min"):
            info = np.iinfo(dt) if dt != np.bool_ else None
            init = info.min if kind == "max" else info.max
        self.acc = gen.em.var(c_type(dt), literal(init, dt), "acc")

    def add(self, x: str) -> None:
        a = self.acc
        if self.kind == "sum":
            self.gen.em.line(f"{a} += {x};")
        elif self.kind == "prod":
            self.gen.em.line(f"{a} *= {x};")
        elif self.kind == "max":
            self.gen.em.line(f"if ({x} > {a} || {x} != {x}) {a} = {x};")
        else:
            self.gen.em.line(f"if ({x} < {a} || {x} != {x}) {a} = {x};")


_REDUCE = {"ReduceSum": ("sum", None, None), "ReduceMean": ("sum", None, "mean"), "ReduceMax": ("max", None, None),
           "ReduceMin": ("min", None, None), "ReduceProd": ("prod", None, None),
           "ReduceSumSquare": ("sum", "sq", None), "ReduceL1": ("sum", "abs", None),
           "ReduceL2": ("sum", "sq", "sqrt"), "ReduceLogSum": ("sum", None, "log")}


def reduce_axes(gen, node) -> tuple[list[int], bool]:
    ctx = gen.ctx(node)
    rank = len(static_shape(node.inputs[0]))
    try:
        axes = ctx.opdef._axes(ctx, ctx.const(1))
    except LookupError:
        raise Unsupported(f"{node.op_type} with non-constant axes") from None
    if axes == []:
        return [], True
    axes = list(range(rank)) if axes is None else sorted({int(a) % rank for a in axes})
    return axes, bool(ctx.attr("keepdims", 1))


def _reduce(gen, node, k, idx):
    kind, pre, post = _REDUCE[node.op_type]
    x = node.inputs[0]
    shape = static_shape(x)
    dt = dtype_of(node.outputs[0])
    axes, keep = reduce_axes(gen, node)
    if not axes:
        return gen.value(x, idx)
    red = _Reducer(gen, kind, dt)
    out_dims = iter(idx)
    src = []
    loops = []
    for a in range(len(shape)):
        if a in axes:
            if keep:
                next(out_dims)
            v = gen.em.fresh("r")
            loops.append(gen.em.block(f"for (int {v} = 0; {v} < {shape[a]}; ++{v})"))
            src.append(v)
        else:
            src.append(next(out_dims))
    for loop in loops:
        loop.__enter__()
    val = gen.value(x, src)
    if pre == "sq":
        val = f"{val} * {val}"
    elif pre == "abs":
        val = f"({val} < 0 ? -{val} : {val})"
    red.add(val)
    for loop in reversed(loops):
        loop.__exit__(None, None, None)
    count = int(np.prod([shape[a] for a in axes]))
    if post == "mean":
        return f"({red.acc} / {literal(count, dt)})"
    if post == "sqrt":
        return f"{math_fn('sqrt', dt)}({red.acc})"
    if post == "log":
        return f"{math_fn('log', dt)}({red.acc})"
    return red.acc


def window_pads(ctx, in_sp, out_sp, kernel, strides, dilations) -> list[int]:
    """Begin pads per spatial dim (auto_pad resolved from the shapes)."""
    auto = ctx.attr("auto_pad", "NOTSET")
    n = len(kernel)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(n):
            total = max((out_sp[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sp[i], 0)
            out.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
        return out
    if auto == "VALID":
        return [0] * n
    pads = ctx.attr("pads") or [0] * (2 * n)
    return [int(p) for p in pads[:n]]


def _window_loops(gen, idx_sp, kernel, strides, dilations, pads, in_sp, bounded=True):
    """Nested loops over a window; yields (loop contexts, input positions, bounds condition)."""
    loops, pos, conds = [], [], []
    for i, kdim in enumerate(kernel):
        v = gen.em.fresh("k")
        loops.append((v, kdim))
        base = f"{idx_sp[i]} * {strides[i]}" if strides[i] != 1 else idx_sp[i]
        off = f"{v} * {dilations[i]}" if dilations[i] != 1 else v
        p = f"{base} + {off}" + (f" - {pads[i]}" if pads[i] else "")
        pos.append(p)
        conds.append((p, in_sp[i]))
    return loops, pos, conds


def _pool(gen, node, k, idx):
    if k != 0 or (len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses):
        raise Unsupported("MaxPool indices")
    ctx = gen.ctx(node)
    x = node.inputs[0]
    shape, out_shape = static_shape(x), static_shape(node.outputs[0])
    dt = dtype_of(node.outputs[0])
    nsp = len(shape) - 2
    glob = node.op_type.startswith("Global")
    kernel = list(shape[2:]) if glob else [int(v) for v in ctx.attr("kernel_shape")]
    strides = [1] * nsp if glob else [int(v) for v in (ctx.attr("strides") or [1] * nsp)]
    dilations = [1] * nsp if glob else [int(v) for v in (ctx.attr("dilations") or [1] * nsp)]
    pads = [0] * nsp if glob else window_pads(ctx, shape[2:], out_shape[2:], kernel, strides, dilations)
    is_max = "Max" in node.op_type
    red = _Reducer(gen, "max" if is_max else "sum", dt)
    count = gen.em.var("int", "0", "n") if not glob and not is_max else None
    loops, pos, conds = _window_loops(gen, idx[2:], kernel, strides, dilations, pads, shape[2:])
    ps = []
    blocks = []
    for (v, kdim), (p, d) in zip(loops, conds):
        blocks.append(gen.em.block(f"for (int {v} = 0; {v} < {kdim}; ++{v})"))
        blocks[-1].__enter__()
        pv = gen.em.let("int", p, "p")
        ps.append((pv, d))
    include_pad = bool(ctx.attr("count_include_pad", 0)) and not is_max and not glob
    inside = " && ".join(f"{pv} >= 0 && {pv} < {d}" for pv, d in ps if not glob)
    if include_pad:
        # a window position counts when it lies inside the padded input (begin + end pads)
        end_pads = _end_pads(ctx, shape[2:], out_shape[2:], kernel, strides, dilations, pads)
        padded = " && ".join(f"{pv} >= -{b} && {pv} < {d + e}" for (pv, d), b, e in zip(ps, pads, end_pads))
        gen.em.line(f"if ({padded}) ++{count};")
    if inside:
        blk = gen.em.block(f"if ({inside})")
        blk.__enter__()
    red.add(gen.value(x, idx[:2] + [pv for pv, _ in ps]))
    if count is not None and not include_pad:
        gen.em.line(f"++{count};")
    if inside:
        blk.__exit__(None, None, None)
    for b in reversed(blocks):
        b.__exit__(None, None, None)
    if is_max:
        return red.acc
    if glob:
        return f"({red.acc} / {literal(int(np.prod(kernel)), dt)})"
    return f"({red.acc} / ({c_type(dt)}){count})"


def _end_pads(ctx, in_sp, out_sp, kernel, strides, dilations, begin):
    auto = ctx.attr("auto_pad", "NOTSET")
    n = len(kernel)
    if auto in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        out = []
        for i in range(n):
            total = max((out_sp[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sp[i], 0)
            out.append(0 if auto == "VALID" else total - begin[i])
        return out
    pads = ctx.attr("pads") or [0] * (2 * n)
    ends = [int(p) for p in pads[n:]]
    # ceil_mode windows may run past the end pad; ONNX counts only up to the padded end
    return ends


def _lrn(gen, node, k, idx):
    ctx = gen.ctx(node)
    x = node.inputs[0]
    shape = static_shape(x)
    dt = dtype_of(node.outputs[0])
    size = int(ctx.attr("size"))
    alpha, beta, bias = (float(ctx.attr(n, d)) for n, d in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
    lo = (size - 1) // 2
    red = _Reducer(gen, "sum", dt)
    v = gen.em.fresh("c")
    with gen.em.block(f"for (int {v} = {idx[1]} - {lo}; {v} <= {idx[1]} + {size - 1 - lo}; ++{v})"):
        with gen.em.block(f"if ({v} >= 0 && {v} < {shape[1]})"):
            xv = gen.value(x, [idx[0], v] + idx[2:])
            red.add(f"{xv} * {xv}")
    center = gen.value(x, idx)
    base = f"({literal(bias, dt)} + {literal(alpha / size, dt)} * {red.acc})"
    return f"({center} / {math_fn('pow', dt)}({base}, {literal(beta, dt)}))"


def conv_geometry(gen, node):
    ctx = gen.ctx(node)
    x, w = node.inputs[0], node.inputs[1]
    xs, ws, ys = static_shape(x), static_shape(w), static_shape(node.outputs[0])
    nsp = len(xs) - 2
    group = int(ctx.attr("group", 1))
    kernel = list(ws[2:])
    strides = [int(v) for v in (ctx.attr("strides") or [1] * nsp)]
    dilations = [int(v) for v in (ctx.attr("dilations") or [1] * nsp)]
    pads = window_pads(ctx, xs[2:], ys[2:], kernel, strides, dilations)
    return dict(xs=xs, ws=ws, ys=ys, group=group, kernel=kernel, strides=strides, dilations=dilations, pads=pads,
                icg=ws[1], ocg=ys[1] // group)


def _conv(gen, node, k, idx):
    """Direct convolution: one output element = a loop over its input channels and window (depthwise convs and
    other small reductions take this path; large ones become tiled implicit GEMM kernels)."""
    g = conv_geometry(gen, node)
    x, w = node.inputs[0], node.inputs[1]
    dt = dtype_of(node.outputs[0])
    red = _Reducer(gen, "sum", dt)
    grp = gen.em.let("int", f"({idx[1]}) / {g['ocg']}" if g["group"] > 1 else "0", "grp")
    ic, blk_ic = _for(gen, "ic", g["icg"])
    with blk_ic:
        cin = gen.em.let("int", f"{grp} * {g['icg']} + {ic}" if g["group"] > 1 else ic, "ci")
        loops, pos, conds = _window_loops(gen, idx[2:], g["kernel"], g["strides"], g["dilations"], g["pads"],
                                          g["xs"][2:])
        blocks, ps = [], []
        for (v, kdim), (p, d) in zip(loops, conds):
            blocks.append(gen.em.block(f"for (int {v} = 0; {v} < {kdim}; ++{v})"))
            blocks[-1].__enter__()
            ps.append((gen.em.let("int", p, "p"), d))
        cond = " && ".join(f"{pv} >= 0 && {pv} < {d}" for pv, d in ps if True)
        with gen.em.block(f"if ({cond})"):
            xv = gen.value(x, [idx[0], cin] + [pv for pv, _ in ps])
            wv = gen.value(w, [idx[1], ic] + [v for v, _ in loops])
            red.add(f"{xv} * {wv}")
        for b in reversed(blocks):
            b.__exit__(None, None, None)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        return f"({red.acc} + {gen.value(node.inputs[2], [idx[1]])})"
    return red.acc


def matmul_operands(gen, node):
    """(a index fn, b index fn, K, bias fn or None, alpha, beta) of Gemm/MatMul for output index -> k."""
    a, b = node.inputs[0], node.inputs[1]
    ash, bsh, ysh = static_shape(a), static_shape(b), static_shape(node.outputs[0])
    if node.op_type == "Gemm":
        ctx = gen.ctx(node)
        ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
        K = ash[0] if ta else ash[1]
        a_at = (lambda o, kk: [kk, o[0]]) if ta else (lambda o, kk: [o[0], kk])
        b_at = (lambda o, kk: [o[1], kk]) if tb else (lambda o, kk: [kk, o[1]])
        c = node.inputs[2] if len(node.inputs) > 2 else None
        bias = None if c is None else (lambda o: gen.value(c, broadcast_index(o, ysh, static_shape(c))))
        return a_at, b_at, K, bias, float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    ra, rb = len(ash), len(bsh)
    K = ash[-1]
    nb = len(ysh) - (ra >= 2) - (rb >= 2)

    def a_at(o, kk):
        if ra == 1:
            return [kk]
        batch = o[:nb][nb - (ra - 2):] if ra > 2 else []
        batch = ["0" if d == 1 else i for i, d in zip(batch, ash[:-2])]
        return batch + [o[nb], kk]

    def b_at(o, kk):
        if rb == 1:
            return [kk]
        batch = o[:nb][nb - (rb - 2):] if rb > 2 else []
        batch = ["0" if d == 1 else i for i, d in zip(batch, bsh[:-2])]
        return batch + [kk, o[-1]]

    return a_at, b_at, K, None, 1.0, 1.0


def _matmul(gen, node, k, idx):
    a_at, b_at, K, bias, alpha, beta = matmul_operands(gen, node)
    dt = dtype_of(node.outputs[0])
    red = _Reducer(gen, "sum", dt)
    kk, blk = _for(gen, "kk", K)
    with blk:
        av = gen.value(node.inputs[0], a_at(idx, kk))
        bv = gen.value(node.inputs[1], b_at(idx, kk))
        red.add(f"{av} * {bv}")
    out = red.acc if alpha == 1.0 else f"({literal(alpha, dt)} * {red.acc})"
    if bias is not None:
        c = bias(idx)
        out = f"({out} + {c})" if beta == 1.0 else f"({out} + {literal(beta, dt)} * {c})"
    return out


def _constant_of_shape(gen, node, k, idx):
    """The fill value (attribute ``value``, a one-element tensor; 0.0f when absent) at every index."""
    value = gen.ctx(node).attrs.get("value")
    first = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return literal(first[0], dtype_of(node.outputs[0]))


RULES: dict[str, Callable] = {}
for _op in cm.UNARY | cm.BINARY | cm.NARY:
    RULES[_op] = _elementwise
RULES.update({
    "Cast": _cast, "Where": _where, "Clip": _clip, "BatchNormalization": _batchnorm,
    "Reshape": _reshape, "Flatten": _reshape, "Squeeze": _reshape, "Unsqueeze": _reshape,
    "Transpose": _transpose, "Expand": _expand, "Tile": _tile, "Concat": _concat, "Split": _split,
    "Slice": _slice, "Pad": _pad, "Gather": _gather,
    "MaxPool": _pool, "AveragePool": _pool, "GlobalAveragePool": _pool, "GlobalMaxPool": _pool, "LRN": _lrn,
    "Conv": _conv, "Gemm": _matmul, "MatMul": _matmul, "ConstantOfShape": _constant_of_shape,
})
RULES.update({op: _reduce for op in _REDUCE})
