"""One generated CUDA kernel: its source, parameters and launch configuration; and the kernel *frame* that
every generator shares (the function header, the arguments of a fused group, the grid-stride loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .dtypes import Unsupported, c_type
from .emitter import Emitter
from .codegen_expr import ElementGen, dtype_of, static_shape

BLOCK = 256
MAX_GRID = 65535
INT_LIMIT = 2 ** 31 - 1


@dataclass
class Kernel:
    name: str
    source: str
    args: list  # outer Values in parameter order
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int = 0
    cooperative: bool = False  # needs threads of a block to cooperate (__syncthreads, shared memory, shuffles)
    strategy: str = ""
    notes: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)  # C parameter declarations, in ``args`` order


class Frame:
    """The parameters of one kernel: inputs (const pointers) and outputs, for a node or a fused group.

    ``inner_inputs``/``inner_outputs`` are the values the generator reads/writes (a FusedKernel body's own
    inputs and outputs); ``outer`` are the graph values they stand for (which get buffers). A scalar weight
    is inlined as a literal instead of becoming a parameter.
    """

    def __init__(self, node, name: str):
        self.node = node
        self.name = name
        if node.op_type == "FusedKernel" and node.domain == "graphc":
            body = node.attrs["body"]
            self.members = list(body.nodes)
            self.inner_inputs, self.inner_outputs = list(body.inputs), list(body.outputs)
        else:
            self.members = [node]
            self.inner_inputs = [x for x in node.inputs if x is not None]
            self.inner_outputs = [o for o in node.outputs if o is not None]
        outer_in = [x for x in node.inputs if x is not None] if node.op_type == "FusedKernel" else self.inner_inputs
        outer_out = [o for o in node.outputs if o is not None] if node.op_type == "FusedKernel" else self.inner_outputs
        self.em = Emitter(depth=1)
        self.params: list[str] = []
        self.args: list = []
        names: dict[int, str] = {}
        self.gen = ElementGen(self.em, names)
        seen: dict[int, str] = {}
        for inner, outer in zip(self.inner_inputs, outer_in):
            if outer.is_constant and np.asarray(outer.const).size == 1 and np.asarray(outer.const).dtype != object:
                from .dtypes import literal

                lit = literal(np.asarray(outer.const).reshape(-1)[0], dtype_of(outer))
                self.gen.overrides[id(inner)] = lambda idx, lit=lit: lit
                self.gen.constants[id(inner)] = np.asarray(outer.const)
                continue
            if id(outer) in seen:
                names[id(inner)] = seen[id(outer)]
                continue
            pname = f"in{len(self.args)}"
            self._check(outer)
            self.params.append(f"const {c_type(dtype_of(outer))}* __restrict__ {pname}")
            self.args.append(outer)
            names[id(inner)] = seen[id(outer)] = pname
        self.out_names: dict[int, str] = {}
        for inner, outer in zip(self.inner_outputs, outer_out):
            pname = f"out{len(self.out_names)}"
            self._check(outer)
            self.params.append(f"{c_type(dtype_of(outer))}* __restrict__ {pname}")
            self.args.append(outer)
            self.out_names[id(inner)] = pname

    @staticmethod
    def _check(v) -> None:
        shape = static_shape(v)
        n = int(np.prod(shape)) if shape else 1
        if n > INT_LIMIT:
            raise Unsupported(f"{v.name!r} has {n} elements (32-bit indices)")

    def header(self, launch_bounds: int | None = None) -> str:
        lb = f"__launch_bounds__({launch_bounds}) " if launch_bounds else ""
        members = " + ".join(m.op_type for m in self.members)
        origin = self.node.name or self.node.op_type
        return (f"// {origin}: {members}\n"
                f"extern \"C\" __global__ void {lb}{self.name}(" + ", ".join(self.params) + ")")

    def source(self, body: str, launch_bounds: int | None = None) -> str:
        return self.header(launch_bounds) + " {\n" + body + "\n}\n"


def grid_for(work: int, block: int = BLOCK) -> tuple[int, int, int]:
    return (max(1, min(-(-work // block), MAX_GRID)), 1, 1)
