"""What a kernel emitter sees: :class:`KernelBuilder`, one LLVM function per kernel, and the emitter registries.

Every kernel is a function ``void kernel(i8** slots, i64 tid, i64 nthreads)``:

- ``slots`` is the table of base addresses of one run (the arena, the scratch and temporaries regions, each
  graph input and output, each weight). A tensor lives at ``slots[slot] + offset``; emitters never see slots,
  they ask :meth:`KernelBuilder.ptr` for a typed pointer to a value's first element;
- all threads of a run call every kernel (SPMD); a kernel splits its work with :meth:`thread_range` and must
  not assume anything about the other threads' progress: the entry function puts a barrier after each kernel;
- shapes are static: :meth:`shape` gives the concrete dims of a value (symbolic dims are bound before code
  generation; a value whose shape is not known at code-generation time never reaches an emitter);
- tensors are dense, C-contiguous, 64-byte aligned at their base (arena offsets, inputs are copied when not).

Emitters register for one op (:func:`node_emitter`, the node's inputs/outputs are tensors in memory) or for a
whole fused body (:func:`fused_emitter`, tried in order before the body is split into its nodes). An emitter
that cannot handle what it was given raises :class:`Unsupported` (at any point: the half-built function is
discarded); the program then splits the fused body, or runs the node with the reference kernel (a fallback,
listed in ``report()["fallback_ops"]``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
from llvmlite import ir

from ...ir.graph import Graph, Node, Value
from .layout import Storage  # noqa: F401  (defined with the rest of what a stored program keeps)

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
F64 = ir.DoubleType()
VOID = ir.VoidType()
I8P = I8.as_pointer()
KERNEL_TYPE = ir.FunctionType(VOID, [I8P.as_pointer(), I64, I64])

_LLVM_TYPES = {
    np.dtype(np.float32): F32, np.dtype(np.float64): F64,
    np.dtype(np.int8): I8, np.dtype(np.uint8): I8, np.dtype(np.bool_): I8,
    np.dtype(np.int16): ir.IntType(16), np.dtype(np.uint16): ir.IntType(16),
    np.dtype(np.int32): I32, np.dtype(np.uint32): I32,
    np.dtype(np.int64): I64, np.dtype(np.uint64): I64,
}


class Unsupported(Exception):
    """Raised by an emitter that does not handle this node/body (the reason ends up in the debug log)."""


def llvm_type(dtype) -> ir.Type:
    """The LLVM scalar type that stores ``dtype`` (bool is one byte; signedness lives in the operations)."""
    try:
        return _LLVM_TYPES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise Unsupported(f"no LLVM type for dtype {dtype}") from None


class KernelBuilder:
    """Builds one kernel function into the program's module.

    Attributes an emitter uses: ``module``, ``function``, ``builder`` (positioned in the body), ``tid`` and
    ``nthreads`` (i64 values of this call). Everything an emitter registers (constant arrays, scratch) takes
    effect only when the emitter returns without raising :class:`Unsupported`.
    """

    def __init__(self, program, name: str):
        self.program = program
        self.module: ir.Module = program.module
        self.name = name
        self.function = ir.Function(self.module, KERNEL_TYPE, name=name)
        self.function.linkage = "internal"
        self.function.attributes.add("nounwind")
        # never inlined into the entry: one caller each, but optimising a single giant entry function grows
        # worse than linearly (ResNet-50 took 34 s to compile inlined, about 6 s of CPU not)
        self.function.attributes.add("noinline")
        self.slots, self.tid, self.nthreads = self.function.args
        self.slots.add_attribute("noalias")
        # "entry" holds what every path needs (pointers into the slots); it branches to "body" in finish()
        self._entry = self.function.append_basic_block("entry")
        self.builder = ir.IRBuilder(self.function.append_basic_block("body"))
        self._body = self.builder.block
        self._ptr_cache: dict[int, ir.Value] = {}
        self.pending_constants: list[tuple[int, np.ndarray]] = []
        self.can_fail = False
        self.scratch_bytes = 0  # per thread

    # -- values ------------------------------------------------------------------------------------------------
    def storage(self, value: Value) -> Storage:
        st = self.program.storage_of(value)
        if st is None:
            raise Unsupported(f"{value.name!r} has no static storage")
        return st

    def shape(self, value: Value) -> tuple[int, ...]:
        return self.storage(value).shape

    def dtype(self, value: Value) -> np.dtype:
        return self.storage(value).dtype

    def const_value(self, value: Value) -> np.ndarray | None:
        """The compile-time contents of a weight (None for activations)."""
        return value.const if value is not None and value.is_constant else None

    def ptr(self, value: Value) -> ir.Value:
        """A pointer to the value's first element, typed by its dtype (built once per kernel, in the entry)."""
        key = id(value)
        if key not in self._ptr_cache:
            st = self.storage(value)
            self._ptr_cache[key] = self._slot_pointer(st.slot, st.offset, llvm_type(st.dtype))
        return self._ptr_cache[key]

    def _slot_pointer(self, slot: int, offset: int, elem: ir.Type) -> ir.Value:
        b = ir.IRBuilder(self._entry)
        base = b.load(b.gep(self.slots, [ir.Constant(I64, slot)], inbounds=True))
        addr = b.gep(base, [ir.Constant(I64, offset)], inbounds=True) if offset else base
        return b.bitcast(addr, elem.as_pointer())

    def constant_array(self, array: np.ndarray, elem: ir.Type | None = None) -> ir.Value:
        """A pointer to a compile-time array (packed weights, tables) that lives as long as the program."""
        array = np.ascontiguousarray(array)
        slot = self.program.reserve_constant_slot()
        self.pending_constants.append((slot, array))
        return self._slot_pointer(slot, 0, elem or llvm_type(array.dtype))

    def scratch(self, nbytes: int, elem: ir.Type = F32) -> ir.Value:
        """Per-thread scratch memory of ``nbytes`` (64-byte aligned, uninitialised, valid in this kernel only).

        Several calls in one kernel get disjoint pieces."""
        offset = self.scratch_bytes
        self.scratch_bytes += -(-int(nbytes) // 64) * 64
        b = ir.IRBuilder(self._entry)
        base = b.load(b.gep(self.slots, [ir.Constant(I64, self.program.SCRATCH_SLOT)], inbounds=True))
        per_thread = b.load(self.program.scratch_stride)
        start = b.add(b.mul(self.tid, per_thread), ir.Constant(I64, offset))
        return b.bitcast(b.gep(base, [start], inbounds=True), elem.as_pointer())

    def shared_scratch(self, nbytes: int, elem: ir.Type = F32) -> ir.Value:
        """Memory of ``nbytes`` shared by all threads of the run (64-byte aligned, uninitialised, valid in this
        kernel only). Threads that write it and then read each other's parts must :meth:`barrier` between."""
        offset = self.program.reserve_temp(nbytes)
        return self._slot_pointer(self.program.TEMP_SLOT, offset, elem)

    def barrier(self) -> None:
        """Wait until every thread of the run reaches this point (all threads must call it equally often).

        It returns early once the run's abort word is set; the kernel then finishes on whatever it has and
        the entry function ends the run after the kernel."""
        from .sync import barrier_function

        b = ir.IRBuilder(self._entry)
        sync = b.load(b.gep(self.slots, [ir.Constant(I64, self.program.SYNC_SLOT)], inbounds=True))
        self.builder.call(barrier_function(self.module), [sync, self.nthreads])

    def fail_if(self, condition: ir.Value, message: str) -> None:
        """End the run with ``ExecutionError(message)`` when ``condition`` (i1) holds (bad indices in the data).

        The kernel goes on (whatever it computes is discarded); after its barrier every thread returns and
        the run raises. ``message`` should name the node and say what was wrong."""
        from .layout import ERROR_OFFSET, FIRST_ERROR_CODE

        code = FIRST_ERROR_CODE + len(self.program.error_messages)
        self.program.error_messages.append(message)
        self.can_fail = True
        b = self.builder
        with b.if_then(condition, likely=False):
            pro = ir.IRBuilder(self._entry)  # one builder: two would each insert at the end they saw
            base = pro.load(pro.gep(self.slots, [ir.Constant(I64, self.program.SYNC_SLOT)], inbounds=True))
            ptr = b.bitcast(b.gep(base, [ir.Constant(I64, ERROR_OFFSET)]), I32.as_pointer())
            b.store_atomic(ir.Constant(I32, code), ptr, "monotonic", 4)

    # -- control flow ------------------------------------------------------------------------------------------
    def thread_range(self, n: int | ir.Value, grain: int = 1) -> tuple[ir.Value, ir.Value]:
        """This thread's share ``[start, end)`` of ``range(n)``: contiguous, balanced, multiples of ``grain``
        (apart from the last thread's end, which is ``n``)."""
        b = self.builder
        n_val = ir.Constant(I64, int(n)) if isinstance(n, (int, np.integer)) else n
        chunks = b.udiv(b.add(n_val, ir.Constant(I64, grain - 1)), ir.Constant(I64, grain)) if grain > 1 else n_val
        lo = b.udiv(b.mul(chunks, self.tid), self.nthreads)
        hi = b.udiv(b.mul(chunks, b.add(self.tid, ir.Constant(I64, 1))), self.nthreads)
        if grain > 1:
            lo = b.mul(lo, ir.Constant(I64, grain))
            hi = self.umin(b.mul(hi, ir.Constant(I64, grain)), n_val)
        return lo, hi

    def for_range(self, start, end, step: int = 1, name: str = "i"):
        """``for (i = start; i < end; i += step)`` (signed compare); the body is emitted inside the with-block."""
        return builder_loop(self.builder, start, end, step, name)

    # -- small helpers -----------------------------------------------------------------------------------------
    def i64(self, n: int) -> ir.Constant:
        return ir.Constant(I64, int(n))

    def umin(self, a: ir.Value, b_: ir.Value) -> ir.Value:
        b = self.builder
        return b.select(b.icmp_unsigned("<", a, b_), a, b_)

    def intrinsic(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        """Declare (once) and return an LLVM intrinsic or C library function of this signature."""
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, args), name=name)
        return fn

    def finish(self) -> None:
        if not self.builder.block.is_terminated:
            self.builder.ret_void()
        ir.IRBuilder(self._entry).branch(self._body)


@contextlib.contextmanager
def builder_loop(b: ir.IRBuilder, start, end, step: int = 1, name: str = "i") -> Iterator[ir.Value]:
    """The loop of :meth:`KernelBuilder.for_range` on a plain builder (shared helper functions have none)."""
    start = ir.Constant(I64, int(start)) if isinstance(start, (int, np.integer)) else start
    end = ir.Constant(I64, int(end)) if isinstance(end, (int, np.integer)) else end
    pre = b.block
    cond = b.append_basic_block(f"{name}.cond")
    body = b.append_basic_block(f"{name}.body")
    done = b.append_basic_block(f"{name}.end")
    b.branch(cond)
    b.position_at_end(cond)
    i = b.phi(I64, name=name)
    i.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", i, end), body, done)
    b.position_at_end(body)
    yield i
    nxt = b.add(i, ir.Constant(I64, step), name=f"{name}.next")
    i.add_incoming(nxt, b.block)
    b.branch(cond)
    b.position_at_end(done)


# -- emitter registries ----------------------------------------------------------------------------------------
NodeEmitter = Callable[[KernelBuilder, Node], None]
FusedEmitter = Callable[[KernelBuilder, Node, Graph], None]

NODE_EMITTERS: dict[str, NodeEmitter] = {}
FUSED_EMITTERS: list[tuple[str, FusedEmitter]] = []


def node_emitter(*op_types: str):
    """Register ``fn(kb, node)`` as the code generator of ONNX (default-domain) ops ``op_types``."""

    def deco(fn: NodeEmitter) -> NodeEmitter:
        for op in op_types:
            NODE_EMITTERS[op] = fn
        return fn

    return deco


def fused_emitter(name: str):
    """Register ``fn(kb, kernel_node, body)`` as a whole-body code generator for FusedKernel nodes.

    Inside, a body value is addressed like any other: ``kb.ptr(body.inputs[i])`` is the kernel's i-th input,
    ``kb.ptr(body.outputs[j])`` the kernel's j-th output; values internal to the body have no storage (a
    fused emitter keeps them in registers)."""

    def deco(fn: FusedEmitter) -> FusedEmitter:
        FUSED_EMITTERS.append((name, fn))
        return fn

    return deco
