"""Grid-stride kernels: one thread computes one output element of a fused group (or of a single node).

This covers elementwise and broadcast chains, every injective op (Transpose, Concat, Slice, Reshape as a
copy, Gather...), windowed and axis reductions (pools, LRN, ReduceX: a loop per output element), and direct
convolution / small matrix products (a loop over K per output element). Threads never cooperate, so the
host-emulation harness checks these kernels exactly as a GPU runs them.

Pure elementwise groups over float32 whose tensors all have the output's shape (or broadcast over trailing
dims whose product is a multiple of 4) load and store ``float4``: four elements per thread and iteration.
"""

from __future__ import annotations

import numpy as np

from . import codegen_math as cm
from .codegen_expr import dtype_of, static_shape
from .emitter import delinearize
from .kernel import BLOCK, Frame, Kernel, grid_for

_ELEMENTWISE = cm.UNARY | cm.BINARY | cm.NARY | {"Clip", "Where", "BatchNormalization"}


def loop_kernel(frame: Frame) -> Kernel:
    em, gen = frame.em, frame.gen
    by_shape: dict[tuple, list] = {}
    for inner in frame.inner_outputs:
        by_shape.setdefault(static_shape(inner), []).append(inner)
    work = 0
    vector = _vectorizable(frame) if len(by_shape) == 1 else False
    for shape, outs in by_shape.items():
        n = int(np.prod(shape)) if shape else 1
        if vector:
            work = max(work, n // 4)
            _vector_loop(frame, shape, outs, n)
            continue
        work = max(work, n)
        with em.block(f"for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < {n}; i += blockDim.x * gridDim.x)"):
            idx = delinearize(em, "i", shape)
            for inner in outs:
                value = gen.value(inner, idx)
                em.line(f"{frame.out_names[id(inner)]}[i] = {value};")
    loops = any(m.op_type not in _ELEMENTWISE and m.op_type not in _INJECTIVE for m in frame.members)
    strategy = "elementwise-float4" if vector else ("loop" if loops else "elementwise")
    return Kernel(frame.name, frame.source(em.text()), frame.args, grid_for(work), (BLOCK, 1, 1),
                  strategy=strategy)


_INJECTIVE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Expand", "Tile", "Concat", "Split",
              "Slice", "Pad", "Gather", "Identity", "Dropout", "Cast"}


def _vectorizable(frame: Frame) -> bool:
    if not all(m.op_type in _ELEMENTWISE for m in frame.members):
        return False
    shape = static_shape(frame.inner_outputs[0])
    n = int(np.prod(shape)) if shape else 1
    if n % 4 or n == 0:
        return False
    values = list(frame.inner_inputs) + list(frame.inner_outputs)
    if any(dtype_of(v) != np.float32 for v in values):
        return False
    for v in frame.inner_inputs:
        s = static_shape(v)
        if s == shape:
            continue
        if int(np.prod(s) if s else 1) == 1:
            continue
        # broadcast: the elements it varies over must stay constant across each aligned group of 4
        offset = len(shape) - len(s)
        last = max(offset + j for j, d in enumerate(s) if d != 1)
        if int(np.prod(shape[last + 1:])) % 4:
            return False
    if any(m.op_type == "BatchNormalization" for m in frame.members) and \
            (len(shape) < 2 or int(np.prod(shape[2:])) % 4):
        return False
    return True


def _vector_loop(frame: Frame, shape, outs, n: int) -> None:
    em, gen = frame.em, frame.gen
    with em.block(f"for (int i4 = blockIdx.x * blockDim.x + threadIdx.x; i4 < {n // 4}; "
                  f"i4 += blockDim.x * gridDim.x)"):
        idx = delinearize(em, "i4 * 4", shape)
        for inner in frame.inner_inputs:
            name = gen.args.get(id(inner))
            if name is not None and static_shape(inner) == shape:
                gen.vector_inputs[id(inner)] = em.let("float4", f"reinterpret_cast<const float4*>({name})[i4]", "v")
        results = {id(o): [] for o in outs}
        for comp in "xyzw":
            gen.component = comp
            for inner in outs:
                results[id(inner)].append(gen.value(inner, idx))
        gen.component = None
        gen.vector_inputs.clear()
        for inner in outs:
            em.line(f"reinterpret_cast<float4*>({frame.out_names[id(inner)]})[i4] = "
                    f"make_float4({', '.join(results[id(inner)])});")
