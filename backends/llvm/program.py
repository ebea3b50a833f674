"""Lowering a plan (for one binding of its symbolic dims) to one LLVM module with a single entry function.

:class:`Program` decides where every tensor lives during a run (:class:`~.kernel.Storage`: the memory plan's
arena for planned intermediates, a slot per graph input, output and weight, a temporaries region for values the
plan left out and for the insides of fused bodies that had to be split), generates one kernel function per
schedule step through the emitters (``kernels/``), and writes the entry function

    i32 graphc_entry(i8** slots, i64 tid, i64 nthreads, i8* sync, i32 (i64)* fallback)

that every worker thread calls once per run: it runs the kernels in schedule order with a barrier after each,
and for a step without generated code calls ``fallback(step)`` on thread 0 (the reference kernel, in Python,
with the GIL) while the other threads wait at the barrier. A non-zero status from a fallback ends the run on
every thread. Values whose shape is only known at run time (data-dependent ops) never get storage: only
fallback steps read and write them.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from llvmlite import ir

from ...ir.graph import Graph, Node, Value
from ...ir.types import TensorType
from ...ops import OpContext, lookup
from ...plan import Plan
from ...plan.memory import memory_plan_of
from . import kernels as _kernels  # noqa: F401  (registers the emitters)
from .jit import new_module
from .kernel import (FUSED_EMITTERS, I8P, I32, I64, NODE_EMITTERS, KernelBuilder, Storage,
                     Unsupported)
from .layout import (ARENA_SLOT, BODY_TEMP_SLOT, ENTRY, ERROR_OFFSET, FIRST_ERROR_CODE, SCRATCH_SLOT,  # noqa: F401
                     SYNC_BYTES, SYNC_SLOT, TEMP_SLOT, FallbackStep, SlotSpec, Step, fallback_ops_of)
from .packed_weights import release_after_kernel
from .sync import barrier_function

log = logging.getLogger("graphc.llvm")

STRICT = os.environ.get("GRAPHC_LLVM_STRICT", "") not in ("", "0")
FALLBACK_TYPE = ir.FunctionType(I32, [I64])
ENTRY_TYPE = ir.FunctionType(I32, [I8P.as_pointer(), I64, I64, I8P, FALLBACK_TYPE.as_pointer()])
PROFILE_TABLE = "graphc_profile"  # i64[steps + 1]: cycle counter stamps of a profiling build
PROFILE_CLOCK = "graphc_cycles"  # i64 (): the cycle counter


def _align(n: int, a: int = 64) -> int:
    return -(-int(n) // a) * a


class _SlotRecordingBuilder(KernelBuilder):
    """A KernelBuilder that notes which slots its code loads. Every slot pointer a kernel uses is made by
    ``KernelBuilder._slot_pointer`` (kernel.py); a weight whose slot no kernel loads was read only at compile
    time (packed into panels, folded into the code), so a run never needs it as it is (packed_weights.py)."""

    def __init__(self, program, name: str):
        self.slots_read: set[int] = set()
        super().__init__(program, name)

    def _slot_pointer(self, slot: int, offset: int, elem):
        self.slots_read.add(int(slot))
        return super()._slot_pointer(slot, offset, elem)


@dataclass
class Program:
    """The lowered program: the LLVM module, the slot table layout and the steps (see module docstring)."""

    plan: Plan
    bindings: dict[str, int]
    input_shapes: list[tuple[int, ...] | None]
    threads: int = 0  # the worker threads that will run it (code generators size their splits by it)
    profile: bool = False  # thread 0 stamps the cycle counter after every step (graphc/profile.py)
    module: ir.Module = None
    slots: list[SlotSpec] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    fallbacks: list[FallbackStep] = field(default_factory=list)
    # float32 matrices the code generators packed, until release_packed_weights (packed_weights.py) is done
    packed_views: list = field(default_factory=list)
    slots_read: set = field(default_factory=set)  # slots the generated kernels load (see _SlotRecordingBuilder)
    released_bytes: int = 0  # weights now kept only as this program's panels

    ARENA_SLOT = ARENA_SLOT
    SCRATCH_SLOT = SCRATCH_SLOT
    TEMP_SLOT = TEMP_SLOT  # values the memory plan left out: each its own place, for the whole run
    BODY_TEMP_SLOT = BODY_TEMP_SLOT  # insides of split fused bodies: each body starts again at 0
    SYNC_SLOT = SYNC_SLOT  # the sync block (barrier words, status, the error word of KernelBuilder.fail_if)

    def __post_init__(self) -> None:
        graph = self.plan.graph
        self.module = new_module(graph.name or "graphc")
        self.scratch_stride = ir.GlobalVariable(self.module, I64, "graphc.scratch_stride")
        self.scratch_stride.global_constant = True
        self.scratch_stride.linkage = "internal"
        self.slots = [SlotSpec("arena"), SlotSpec("scratch"), SlotSpec("temp"), SlotSpec("temp"), SlotSpec("sync")]
        self.error_messages: list[str] = []  # code 2 + i: message i (see KernelBuilder.fail_if)
        self._storage: dict[int, Storage | None] = {}
        self._alias: dict[int, Value] = {}
        self._temp_top = 0  # persistent temporaries (values the memory plan left out)
        self._body_temps = 0  # temporaries of split bodies, reused from one body to the next
        self._body_temp_used = 0
        self._in_body = False
        self._max_scratch = 0
        self._counter = 0
        self._frozen = False
        self.emitted: dict[str, int] = {}
        self._assign_storage(graph)
        for node in graph.nodes:
            self._lower(node)
        self._write_entry()
        self.scratch_stride.initializer = ir.Constant(I64, self._max_scratch)
        self.slots[self.SCRATCH_SLOT].nbytes = self._max_scratch
        self.slots[self.TEMP_SLOT].nbytes = self._temp_top
        self.slots[self.BODY_TEMP_SLOT].nbytes = self._body_temps
        self._frozen = True

    # -- storage ----------------------------------------------------------------------------------------------
    def static_shape(self, value: Value) -> tuple[int, ...] | None:
        t = value.type
        if not isinstance(t, TensorType) or t.shape is None or t.dtype is None:
            return None
        if t.dtype.kind not in "biuf" or t.dtype.itemsize > 8:
            return None
        dims = []
        for d in t.shape:
            if isinstance(d, (int, np.integer)):
                dims.append(int(d))
            elif isinstance(d, str) and d in self.bindings:
                dims.append(int(self.bindings[d]))
            else:
                return None
        return tuple(dims)

    def _assign_storage(self, graph: Graph) -> None:
        for i, (v, shape) in enumerate(zip(graph.inputs, self.input_shapes)):
            if shape is not None and self.static_shape(v) is not None:
                self._storage[id(v)] = Storage(len(self.slots), 0, v.type.dtype, shape)
                self.slots.append(SlotSpec("input", index=i))
            else:
                self._storage[id(v)] = None
        inputs = {id(v) for v in graph.inputs}
        for j, v in enumerate(graph.outputs):
            if id(v) in self._storage or v.is_constant or id(v) in inputs:
                continue
            shape = self.static_shape(v)
            if shape is None:
                self._storage[id(v)] = None
                continue
            st = Storage(len(self.slots), 0, v.type.dtype, shape)
            self._storage[id(v)] = st
            self.slots.append(SlotSpec("output", index=j, nbytes=st.nbytes, value=v))
        memory = memory_plan_of(self.plan)
        if memory is not None:
            try:
                placed = memory.at(self.bindings).by_value()
            except KeyError:
                placed = {}
            self.slots[self.ARENA_SLOT].nbytes = memory.at(self.bindings).arena_bytes if placed else 0
            for node in graph.nodes:
                for out in node.outputs:
                    if out is None or id(out) in self._storage:
                        continue
                    buf = placed.get(out.name)
                    shape = self.static_shape(out)
                    if buf is None or shape is None:
                        continue
                    st = Storage(self.ARENA_SLOT, buf.offset, out.type.dtype, shape)
                    if st.nbytes != buf.size:  # the plan and the types disagree: keep the value out of the arena
                        log.debug("arena buffer of %s has %d bytes, its type %d", out.name, buf.size, st.nbytes)
                        continue
                    self._storage[id(out)] = st

    def storage_of(self, value: Value) -> Storage | None:
        value = self._alias.get(id(value), value)
        key = id(value)
        if key in self._storage:
            return self._storage[key]
        if self._frozen and not value.is_constant:
            raise KeyError(f"llvm backend: {value.name!r} got no storage while lowering")
        shape = self.static_shape(value)
        if shape is None:
            st = None
        elif value.is_constant:
            array = np.ascontiguousarray(value.const).reshape(np.shape(value.const))
            st = Storage(len(self.slots), 0, array.dtype, tuple(array.shape))
            self.slots.append(SlotSpec("const", array=array, value=value))  # the weight as it is (layout.py)
        else:
            st = self._temp(value.type.dtype, shape)
        self._storage[key] = st
        return st

    def _temp(self, dtype, shape) -> Storage:
        nbytes = _align(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        if self._in_body:  # lives only while its fused body runs
            offset = self._body_temp_used
            self._body_temp_used += nbytes
            self._body_temps = max(self._body_temps, self._body_temp_used)
            return Storage(self.BODY_TEMP_SLOT, offset, np.dtype(dtype), shape)
        offset = self._temp_top
        self._temp_top += nbytes
        return Storage(self.TEMP_SLOT, offset, np.dtype(dtype), shape)

    def reserve_temp(self, nbytes: int) -> int:
        """Offset of ``nbytes`` of the temporaries region for a kernel's own shared use."""
        offset = self._temp_top
        self._temp_top += _align(nbytes)
        return offset

    def reserve_constant_slot(self) -> int:
        self.slots.append(SlotSpec("const"))
        return len(self.slots) - 1

    # -- lowering ---------------------------------------------------------------------------------------------
    def _fresh(self, node: Node) -> str:
        self._counter += 1
        safe = "".join(c if c.isalnum() else "_" for c in (node.name or node.op_type))[:40]
        return f"k{self._counter}_{safe}"

    def _static_io(self, node: Node) -> bool:
        return all(self.storage_of(v) is not None for v in list(node.inputs) + list(node.outputs) if v is not None)

    def _try(self, node: Node, emit, label: str, *args) -> bool:
        kb = _SlotRecordingBuilder(self, self._fresh(node))
        self.packed_views = []  # (note_packed fills it for this kernel only)
        try:
            emit(kb, *args)
            kb.finish()
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, Unsupported):
                # A code generator bug. Tests (GRAPHC_LLVM_STRICT=1, set by tests/conftest.py) fail on it;
                # users get the reference kernel for this node and a warning, not a failed compile.
                if STRICT:
                    raise
                warnings.warn(f"llvm backend: the {label} code generator failed on {node.op_type} node "
                              f"{node.name!r} ({type(exc).__name__}: {exc}); running it with the reference "
                              f"kernel", RuntimeWarning, stacklevel=2)
            log.debug("%s: %s declined %s: %s", node.name, label, node.op_type, exc)
            del self.module.globals[kb.name]
            for slot, _ in kb.pending_constants:
                self.slots[slot] = SlotSpec("const", array=np.zeros(0, np.uint8))
            self.packed_views = []
            return False
        for slot, array in kb.pending_constants:
            self.slots[slot] = SlotSpec("const", array=array)
        self.slots_read.update(kb.slots_read)
        # weights only this kernel reads and holds as exact panels stop being kept twice (packed_weights.py)
        self.released_bytes += release_after_kernel(self, node, kb.slots_read)
        self._max_scratch = max(self._max_scratch, kb.scratch_bytes)
        self.steps.append(Step("kernel", kb.name, node, emitter=label, can_fail=kb.can_fail))
        self.emitted[label] = self.emitted.get(label, 0) + 1
        return True

    def _lower(self, node: Node) -> None:
        if node.domain == "graphc" and node.op_type == "FusedKernel":
            self._lower_fused(node)
            return
        if not node.subgraphs() and node.domain in ("", "ai.onnx") and node.op_type in NODE_EMITTERS \
                and self._static_io(node):
            if self._try(node, NODE_EMITTERS[node.op_type], node.op_type, node):
                return
        self._fallback(node, "no code generator" if node.op_type not in NODE_EMITTERS else "declined")

    def _lower_fused(self, node: Node) -> None:
        body: Graph = node.attrs["body"]
        for inner, outer in zip(body.inputs, node.inputs):
            self._alias[id(inner)] = outer
        for inner, outer in zip(body.outputs, node.outputs):
            self._alias[id(inner)] = outer
        if self._static_io(node):
            for name, emit in FUSED_EMITTERS:
                if self._try(node, emit, name, node, body):
                    return
        # Split the body into its nodes; each output must be made by a body node, once, for the aliases
        # above to hold (a body output that is a body input or a repeated value is copied by the fallback).
        producers = {id(o) for n in body.nodes for o in n.outputs if o is not None}
        outs = [id(v) for v in body.outputs]
        if any(o not in producers for o in outs) or len(set(outs)) != len(outs):
            for inner in body.outputs:
                self._alias.pop(id(inner), None)
            self._fallback(node, "fused body passes an input through")
            return
        self._in_body = True
        self._body_temp_used = 0
        try:
            for inner in body.nodes:
                self._lower(inner)
        finally:
            self._in_body = False

    def _fallback(self, node: Node, reason: str) -> None:
        for v in list(node.inputs) + list(node.outputs):  # place temporaries now, in the right region
            if v is not None and not v.is_constant:
                self.storage_of(v)
        opdef = lookup(node.domain, node.op_type)
        self.fallbacks.append(FallbackStep(node, OpContext(node, opdef), reason))
        self.steps.append(Step("fallback", str(len(self.fallbacks) - 1), node, fallback=len(self.fallbacks) - 1))

    @property
    def fallback_ops(self) -> list[str]:
        return fallback_ops_of(self.fallbacks)

    def ir_text(self) -> bytes:
        """The module's LLVM IR (unoptimised), the artifact's portable form of the code."""
        if self.module is not None:
            return str(self.module).encode()
        return self._ir_text

    def release_module(self) -> bytes:
        """Render the IR once, keep only its text (for artifacts) and drop the llvmlite objects: they are
        many times the text's size and nothing needs them once LLVM has the text."""
        text = self.ir_text()
        self._ir_text = text
        self.module = None
        self.scratch_stride = None
        return text

    # -- entry ------------------------------------------------------------------------------------------------
    def _write_entry(self) -> None:
        barrier = barrier_function(self.module)
        fn = ir.Function(self.module, ENTRY_TYPE, name=ENTRY)
        slots, tid, nthreads, sync, fallback = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        # The abort word (ERROR_OFFSET) is sticky for the run: a failing fallback sets it to 1, a kernel's
        # fail_if to its message code. Every thread checks it after every barrier, and the barrier's spin loop
        # leaves when it is set, so that a thread which already left (having seen it) is never waited for.
        err_ptr = b.bitcast(b.gep(sync, [ir.Constant(I64, ERROR_OFFSET)]), I32.as_pointer())
        stamp = self._profile_stamps(b, tid) if self.profile else (lambda index: None)
        stamp(0)
        for index, step in enumerate(self.steps):
            if step.kind == "kernel":
                b.call(self.module.globals[step.name], [slots, tid, nthreads])
            else:
                is_first = b.icmp_unsigned("==", tid, ir.Constant(I64, 0))
                with b.if_then(is_first):
                    rc = b.call(fallback, [ir.Constant(I64, step.fallback)])
                    with b.if_then(b.icmp_unsigned("!=", rc, ir.Constant(I32, 0)), likely=False):
                        b.store_atomic(ir.Constant(I32, 1), err_ptr, "release", 4)
            b.call(barrier, [sync, nthreads])
            stamp(index + 1)
            err = b.load_atomic(err_ptr, "acquire", 4)
            with b.if_then(b.icmp_unsigned("!=", err, ir.Constant(I32, 0)), likely=False):
                b.ret(err)
        b.ret(ir.Constant(I32, 0))

    def _profile_stamps(self, b: ir.IRBuilder, tid):
        """``stamp(i)``: thread 0 writes the cycle counter to ``graphc_profile[i]`` (stamp 0 before the first
        step, stamp i + 1 after step i's barrier: the difference is the step's time on the slowest thread).
        ``graphc_cycles()`` reads the counter, for converting cycles to seconds."""
        counter = self.module.globals.get("llvm.readcyclecounter") or ir.Function(
            self.module, ir.FunctionType(I64, []), name="llvm.readcyclecounter")
        table = ir.GlobalVariable(self.module, ir.ArrayType(I64, len(self.steps) + 1), PROFILE_TABLE)
        table.initializer = ir.Constant(table.type.pointee, None)
        reader = ir.Function(self.module, ir.FunctionType(I64, []), name=PROFILE_CLOCK)
        rb = ir.IRBuilder(reader.append_basic_block("entry"))
        rb.ret(rb.call(counter, []))

        def stamp(index: int) -> None:
            with b.if_then(b.icmp_unsigned("==", tid, ir.Constant(I64, 0))):
                slot = b.gep(table, [ir.Constant(I32, 0), ir.Constant(I32, index)], inbounds=True)
                b.store(b.call(counter, []), slot)

        return stamp

    def describe(self) -> dict[str, Any]:
        return {"kernels": sum(s.kind == "kernel" for s in self.steps), "fallbacks": len(self.fallbacks),
                "emitters": dict(self.emitted), "fallback_ops": self.fallback_ops}
