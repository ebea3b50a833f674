"""LLVMExecutable: runs a plan as machine code, one foreign call per worker thread per run.

- **Specialisation.** Code is generated for concrete shapes. A plan whose inputs are all static is compiled
  at ``compile`` time; one with symbolic dims (a batch size ``N``) is compiled on the first run for each new
  binding of its dims and kept (``specializations``), the memory plan rescaled to the binding, no passes re-run.
- **Threads.** ``threads`` workers (the compile option; 0 = the cores this process may use, or one for a model
  under 2 MFLOP, see :func:`auto_threads`) call the entry function together, SPMD: the calling thread is
  worker 0, the others wait for runs in native code (workers.py). ctypes releases the GIL for the duration
  of each foreign call, so a run holds the GIL only while a fallback (reference) kernel runs.
- **Thread safety.** A lock serialises runs of one executable: a run already uses every core, the arena and
  sync block are per executable, and measured on this machine two callers gain nothing from overlapping.
  Each run allocates its outputs; the arena and temporaries are reused between runs.
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from typing import Any

import numpy as np

from ...errors import ExecutionError, GraphcError, InputError
from ...plan import Plan
from ..reference.executor import _Env, _Program
from .layout import (ENTRY, FIRST_ERROR_CODE, SCRATCH_SLOT, SYNC_BYTES, SYNC_SLOT, SlotSpec,
                     captured_values_of)

# program.py (lowering: the code generators, llvmlite.ir) and jit.py / workers.py (LLVM itself) are imported
# when first needed: a model loaded from an artifact runs without lowering (layout.py) and, with one thread,
# without LLVM's optimiser.

_ENTRY_CTYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                ctypes.c_void_p)
_FALLBACK_CTYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64)


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


SMALL_MODEL_FLOPS = 2e6  # below this, one thread: the second thread's start and barriers cost more than it saves


def auto_threads(plan: Plan) -> int:
    """Threads when the user did not say: the usable cores, or one for a model too small to share.

    Measured here: a one-op model runs in 7.6 us on one thread and 9.7 us on two (the workers wait in native
    code, see workers.py), plus about a microsecond per barrier; a 2 MFLOP model takes about 20 us on one
    thread. FLOPs count symbolic dims as 1."""
    from ...analysis import flops_by_op

    try:
        flops = float(sum(flops_by_op(plan.graph).values()))
    except Exception:  # noqa: BLE001 - a cost rule failing must not stop a compile; use every core
        flops = SMALL_MODEL_FLOPS
    return 1 if flops < SMALL_MODEL_FLOPS else default_threads()


def _aligned_empty(nbytes: int) -> np.ndarray:
    raw = np.empty(int(nbytes) + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start:start + int(nbytes)]


class _Compiled:
    """One specialisation: the program (a lowered ``Program`` or a ``StoredProgram`` taken back from an
    artifact), its machine code, and the buffers reused from run to run."""

    def __init__(self, program, object_code: bytes | None = None, native=None):
        self.program = program
        if native is not None:  # a shared library the artifact kept, already loaded (native.py): no LLVM
            self.jit = native
        elif object_code:
            from .jit import JitModule

            self.jit = JitModule.from_object(object_code)
        else:  # the llvmlite module goes before LLVM's optimiser and code generator take their memory
            from .jit import JitModule, optimize_text

            self.jit = JitModule(optimize_text(program.release_module().decode(), "graphc"))
        self.entry_address = self.jit.address(ENTRY)
        self.entry = _ENTRY_CTYPE(self.entry_address)
        self.slot_table = (ctypes.c_void_p * len(program.slots))()
        self.memory: dict[int, np.ndarray] = {}
        for i, spec in enumerate(program.slots):
            if spec.kind in ("arena", "temp"):
                self.memory[i] = _aligned_empty(max(spec.nbytes, 64))
            elif spec.kind == "const" and not spec.unread:  # (an unread weight's slot stays NULL)
                self.memory[i] = spec.array.reshape(-1).view(np.uint8) if spec.array.size else np.zeros(64, np.uint8)
            if i in self.memory:
                self.slot_table[i] = self.memory[i].ctypes.data
        self.scratch_per_thread = program.slots[SCRATCH_SLOT].nbytes
        self.scratch: np.ndarray | None = None
        self.table_address = ctypes.addressof(self.slot_table)
        self.slot_table[SYNC_SLOT] = None  # set per executable in LLVMExecutable._run
        self.input_slots = [(i, spec.index) for i, spec in enumerate(program.slots) if spec.kind == "input"]
        self.output_slots = []
        for i, spec in enumerate(program.slots):
            if spec.kind == "output":
                st = program.storage_of(spec.value)
                self.output_slots.append((i, st.shape, st.dtype))
        # one callback for the life of the specialisation; it finds the run in progress through ``state``
        self.state: _RunState | None = None
        self.callback = _FALLBACK_CTYPE(self._fallback)
        self.callback_address = ctypes.cast(self.callback, ctypes.c_void_p).value

    def _fallback(self, index: int) -> int:
        return self.state.run_fallback(index)


class _RunState:
    """What a fallback kernel sees of the run in progress: views of the slots, and the dynamic values."""

    def __init__(self, compiled: _Compiled, inputs: list, outputs: dict[int, np.ndarray]):
        self.compiled = compiled
        self.program = compiled.program
        self.inputs = inputs
        self.outputs = outputs
        self.dynamic: dict[int, Any] = {}
        self.error: BaseException | None = None
        for v, x in zip(self.program.plan.graph.inputs, inputs):  # inputs without storage: strings, sequences...
            if self.program.storage_of(v) is None:
                self.dynamic[id(v)] = x

    def _slot_bytes(self, slot: int) -> np.ndarray:
        spec: SlotSpec = self.program.slots[slot]
        if spec.kind == "input":
            return self.inputs[spec.index].reshape(-1).view(np.uint8)
        if spec.kind == "output":
            return self.outputs[slot].reshape(-1).view(np.uint8)
        return self.compiled.memory[slot]

    def view(self, value) -> np.ndarray | None:
        st = self.program.storage_of(value)
        if st is None:
            return None
        raw = self._slot_bytes(st.slot)[st.offset:st.offset + st.nbytes]
        return raw.view(st.dtype).reshape(st.shape)

    def read(self, value):
        if value is None:
            return None
        value = self.program._alias.get(id(value), value)  # a fused body's input is the kernel's input
        if value.is_constant:
            return value.const
        key = id(value)
        if key in self.dynamic:
            return self.dynamic[key]
        view = self.view(value)
        if view is None:
            raise ExecutionError(f"llvm backend: value {value.name!r} was read before it was written")
        return view

    def write(self, value, result, node) -> None:
        view = self.view(value)
        if view is None:
            if isinstance(result, np.ndarray) and any(np.may_share_memory(result, m)
                                                      for m in self.compiled.memory.values()):
                result = result.copy()  # the arena is reused: a value kept past its buffer's life is copied
            self.dynamic[id(self.program._alias.get(id(value), value))] = result
            return
        result = np.asarray(result)
        if result.shape != view.shape and result.size == view.size:  # (1,) for a declared scalar, say
            result = result.reshape(view.shape)
        if result.shape != view.shape:
            raise ExecutionError(f"{node.op_type} node {node.name!r} produced {value.name!r} with shape "
                                 f"{result.shape}, its type says {view.shape}")
        np.copyto(view, result, casting="unsafe")

    def run_fallback(self, index: int) -> int:
        step = self.program.fallbacks[index]
        node, ctx = step.node, step.ctx
        try:
            args = [self.read(v) for v in node.inputs]
            if node.subgraphs():
                env = _Env()
                for v in captured_values_of(node):
                    env[id(v)] = self.read(v)
                program = _Program.__new__(_Program)
                program.subprograms = {}
                ctx = _copy_ctx(ctx)
                ctx.subgraph_runner = lambda g, xs, _env=env: _subprogram(program, g).run(list(xs), _env)
            with np.errstate(all="ignore"):
                results = _Program._call(_FakeStep(node), ctx, args)
            for v, r in zip(node.outputs, results):
                if v is not None:
                    self.write(v, r, node)
            return 0
        except BaseException as exc:  # noqa: BLE001 - carried across the foreign call, re-raised by run()
            self.error = exc
            return 1


class _FakeStep:
    def __init__(self, node):
        self.node = node
        self.outputs = list(node.outputs)


def _copy_ctx(ctx):
    import copy

    return copy.copy(ctx)


def _subprogram(program: _Program, graph):
    prog = program.subprograms.get(id(graph))
    if prog is None:
        prog = program.subprograms[id(graph)] = _Program(graph)
    return prog


class LLVMExecutable:
    def __init__(self, plan: Plan, prebuilt: dict | None = None, load_notes: list[str] | None = None,
                 profile: bool = False, native_workers: tuple | None = None):
        self.plan = plan
        self.profile = profile  # a profiling build: cycle stamps after every step (graphc/profile.py)
        # specialisations whose machine code came with an artifact: input shapes -> artifacts.Prebuilt
        self._prebuilt: dict[tuple, Any] = dict(prebuilt or {})
        self.load_log: list[str] = list(load_notes or [])
        graph = plan.graph
        threads = int(plan.options.get("threads") or 0) or auto_threads(plan)
        self.threads = threads
        self._lock = threading.Lock()
        self.specializations: dict[tuple, _Compiled] = {}
        self.released_weight_bytes = 0  # weights now kept only as packed panels (packed_weights.py)
        self._workers = None
        if threads > 1:
            from .workers import NativeWorkers

            self._workers = NativeWorkers(threads, runtime=self._native_runtime(native_workers))
            weakref.finalize(self, self._workers.close)
        self._sync = _aligned_empty(SYNC_BYTES)
        self._sync_address = self._sync.ctypes.data
        self._symbolic = [self._input_dims(v) for v in graph.inputs]
        if all(dims is not None and all(isinstance(d, int) for d in dims) for dims in self._symbolic):
            shapes = tuple(tuple(d) for d in self._symbolic)
            self._specialize(shapes)

    def _native_runtime(self, library: tuple | None):
        """The thread pool's functions from the artifact's shared library (``(bytes, SHA-256)``), or None:
        then workers.py builds them with LLVM."""
        if library is None:
            return None
        from .native import NativeCode, load_shared

        try:
            code = NativeCode(load_shared(*library), shared=bytes(library[0]))
        except (OSError, ValueError) as exc:
            self.load_log.append(f"the thread pool's shared library cannot be loaded ({exc}); built with LLVM")
            return None
        ptr, i64 = ctypes.c_void_p, ctypes.c_int64
        return (code, ctypes.CFUNCTYPE(None, ptr, i64)(code.address("graphc_worker")),
                ctypes.CFUNCTYPE(None, ptr)(code.address("graphc_publish")),
                ctypes.CFUNCTYPE(None, ptr, i64)(code.address("graphc_wait")))

    @staticmethod
    def _input_dims(v):
        t = getattr(v, "type", None)
        shape = getattr(t, "shape", None)
        if shape is None:
            return None
        return [int(d) if isinstance(d, (int, np.integer)) else d for d in shape]

    # -- compilation ------------------------------------------------------------------------------------------
    def _bindings(self, shapes: tuple) -> dict[str, int]:
        bindings: dict[str, int] = {}
        for dims, shape in zip(self._symbolic, shapes):
            if dims is None or shape is None or len(dims) != len(shape):
                continue
            for d, n in zip(dims, shape):
                if isinstance(d, str):
                    bindings.setdefault(d, int(n))
        return bindings

    def _specialize(self, shapes: tuple) -> _Compiled:
        compiled = self.specializations.get(shapes)
        if compiled is None:
            kept = None if self.profile else self._prebuilt.pop(shapes, None)
            program, object_code, native = (self._from_artifact(kept, shapes) if kept is not None
                                             else (None, None, None))
            if program is None:
                from .program import Program

                program = Program(self.plan, self._bindings(shapes), list(shapes), threads=self.threads,
                                  profile=self.profile)
                self.released_weight_bytes += program.released_bytes  # (packed_weights.py)
                unbind_released_slots(program)
                if kept is not None and kept.threads in (None, self.threads):
                    if kept.layout_sha256 == ir_digest(program):
                        object_code = kept.object_code
                        self.load_log.append(f"{list(shapes)}: machine code loaded from the artifact (the plan "
                                             f"was lowered again to take it)")
                    else:  # another graphc made it, or the lowering changed: the kept code is not this program's
                        self.load_log.append(f"{list(shapes)}: the artifact's code does not match this build's "
                                             f"IR; re-JIT")
            compiled = self.specializations[shapes] = _Compiled(program, object_code, native)
        return compiled

    def _from_artifact(self, kept, shapes: tuple):
        """(StoredProgram, object code, the loaded shared library or None) when the artifact's code and layout
        can run as they are, else (None, None, None) with the reason in the load log (the caller then lowers
        the plan again)."""
        from .layout import StoredProgram

        where = f"{list(shapes)}:"
        if kept.threads not in (None, self.threads):
            self.load_log.append(f"{where} the code was generated for {kept.threads} threads, this executable runs "
                                 f"{self.threads}; lowering again and re-JIT")
            return None, None, None
        if kept.layout is None:
            return None, None, None
        if not kept.plan_matches:
            self.load_log.append(f"{where} the plan is not the one the stored layout was made for; lowering again")
            return None, None, None
        try:
            program = StoredProgram(self.plan, kept.layout, kept.constants, list(shapes), kept.ir_text)
        except (ValueError, KeyError, TypeError) as exc:
            self.load_log.append(f"{where} the stored layout does not fit the plan ({exc}); lowering again")
            return None, None, None
        native = None
        if kept.library is not None:
            from .native import NativeCode, load_shared

            try:
                native = NativeCode(load_shared(*kept.library), kept.object_code, shared=bytes(kept.library[0]))
            except (OSError, ValueError) as exc:
                self.load_log.append(f"{where} the shared library cannot be loaded ({exc}); its object code is")
        how = "its shared library (no LLVM)" if native is not None else "its object code through LLVM"
        self.load_log.append(f"{where} machine code loaded from the artifact with its stored layout (no lowering), "
                             f"{how}")
        return program, kept.object_code, native

    # -- artifacts --------------------------------------------------------------------------------------------
    def artifact_parts(self, plan_sha256: str | None = None) -> dict:
        """Machine code, layout, packed constants and LLVM IR of every specialisation, for
        ``CompiledModel.save`` (see artifacts.py); ``plan_sha256`` names the plan.json they go with."""
        return artifact_parts(self, plan_sha256)

    @property
    def fallback_ops(self) -> list[str]:
        out = set()
        for c in self.specializations.values():
            out.update(c.program.fallback_ops)
        return sorted(out)

    def describe(self) -> dict[str, Any]:
        """Kernels, emitters used, fallbacks and threads of each specialisation (for reports and tests)."""
        return {"threads": self.threads, "load": list(self.load_log),
                "specializations": [{"input_shapes": [list(s) if s is not None else None for s in key],
                                     **c.program.describe()} for key, c in self.specializations.items()]}

    def profile_stamps(self, shapes: tuple) -> tuple[list, np.ndarray, Any]:
        """(steps, stamps, clock) of a profiling build's specialisation for ``shapes``: the steps in order, a
        live view of the cycle stamps its last run wrote (``len(steps) + 1``), and a function reading the
        cycle counter."""
        from .program import PROFILE_CLOCK, PROFILE_TABLE

        if not self.profile:
            raise ExecutionError("this executable was not built for profiling")
        compiled = self._specialize(shapes)
        n = len(compiled.program.steps) + 1
        stamps = np.ctypeslib.as_array((ctypes.c_int64 * n).from_address(compiled.jit.global_address(PROFILE_TABLE)))
        clock = ctypes.CFUNCTYPE(ctypes.c_int64)(compiled.jit.address(PROFILE_CLOCK))
        return compiled.program.steps, stamps, clock

    # -- running ----------------------------------------------------------------------------------------------
    def run(self, inputs: list) -> list:
        arrays = []
        for v, x in zip(self.plan.graph.inputs, inputs):
            if isinstance(x, np.ndarray) and not x.flags.c_contiguous:
                x = np.ascontiguousarray(x).reshape(x.shape)  # (ascontiguousarray makes 0-d arrays 1-d)
            arrays.append(x)
        shapes = tuple(tuple(x.shape) if isinstance(x, np.ndarray) else None for x in arrays)
        with self._lock:
            compiled = self._specialize(shapes)
            return self._run(compiled, arrays)

    def _run(self, compiled: _Compiled, inputs: list) -> list:
        program = compiled.program
        table = compiled.slot_table
        for slot, index in compiled.input_slots:
            x = inputs[index]
            if not isinstance(x, np.ndarray):
                raise InputError(f"input {program.plan.graph.inputs[index].name!r} must be an array")
            table[slot] = _address(x)
        # outputs are fresh arrays each run, owned by the caller (nothing of a run is handed out twice)
        outputs: dict[int, np.ndarray] = {}
        for slot, shape, dtype in compiled.output_slots:
            out = outputs[slot] = np.empty(shape, dtype)
            table[slot] = _address(out)
        n = self.threads if self._workers is not None else 1
        if compiled.scratch_per_thread:
            if compiled.scratch is None or compiled.scratch.nbytes < compiled.scratch_per_thread * n:
                compiled.scratch = _aligned_empty(compiled.scratch_per_thread * n)
            table[SCRATCH_SLOT] = compiled.scratch.ctypes.data
        plan = compiled.__dict__.get("run_plan") or _RunPlan(compiled)
        # the run's view for fallback kernels and outputs without a slot of their own; most models need neither
        state = compiled.state = _RunState(compiled, inputs, outputs) if plan.needs_state else None
        self._sync.fill(0)
        table[SYNC_SLOT] = self._sync_address
        if self._workers is not None:
            status = self._workers.run(compiled.entry, compiled.entry_address, compiled.table_address,
                                       self._sync_address, compiled.callback_address)
        else:
            status = [compiled.entry(compiled.table_address, 0, 1, self._sync_address, compiled.callback_address)]
        compiled.state = None
        if state is not None and state.error is not None:
            err = state.error
            if isinstance(err, GraphcError):
                raise err
            raise ExecutionError(f"llvm backend fallback failed: {type(err).__name__}: {err}") from err
        code = max(status)
        if code:
            if code >= FIRST_ERROR_CODE and code - FIRST_ERROR_CODE < len(program.error_messages):
                raise ExecutionError(program.error_messages[code - FIRST_ERROR_CODE])
            raise ExecutionError(f"llvm backend run ended with status {status}")
        return self._collect(plan, state, inputs, outputs)

    @staticmethod
    def _collect(plan: "_RunPlan", state: "_RunState | None", inputs: list, outputs: dict) -> list:
        results = []
        for kind, what in plan.outputs:
            if kind == "slot":
                out = outputs[what]
            elif kind == "const":
                out = np.array(what, copy=True)
            elif kind == "input":
                out = np.array(inputs[what], copy=True)
            else:
                out = state.read(what)
                if isinstance(out, np.ndarray) and any(np.may_share_memory(out, m) for m in state.compiled.memory.values()):
                    out = out.copy()
            results.append(out)
        if plan.may_repeat:  # no two outputs share memory (one value listed twice, a view of another output)
            for j, out in enumerate(results):
                if isinstance(out, np.ndarray) and any(isinstance(o, np.ndarray) and np.may_share_memory(out, o)
                                                       for o in results[:j]):
                    results[j] = out.copy()
        return results


class _RunPlan:
    """What every run of a specialisation does the same way, worked out on its first run: where each graph
    output comes from, and whether a run needs a ``_RunState`` (fallback kernels, outputs read from the
    program's storage)."""

    def __init__(self, compiled: _Compiled):
        program = compiled.program
        graph = program.plan.graph
        slot_of_output = {spec.index: i for i, spec in enumerate(program.slots) if spec.kind == "output"}
        input_pos = {id(v): i for i, v in enumerate(graph.inputs)}
        self.outputs: list[tuple[str, Any]] = []
        for j, v in enumerate(graph.outputs):
            if v.is_constant:
                self.outputs.append(("const", v.const))
            elif id(v) in input_pos:
                self.outputs.append(("input", input_pos[id(v)]))
            elif j in slot_of_output:
                self.outputs.append(("slot", slot_of_output[j]))
            else:
                self.outputs.append(("read", v))
        kinds = [k for k, _ in self.outputs]
        slots = [w for k, w in self.outputs if k == "slot"]
        self.may_repeat = "read" in kinds or len(set(slots)) < len(slots)
        self.needs_state = bool(program.fallbacks) or "read" in kinds
        compiled.run_plan = self


_char_at = ctypes.c_char.from_buffer


def _address(x: np.ndarray) -> int:
    """The address of a C-contiguous array's data. ``x.ctypes.data`` builds a helper object (about 1 µs,
    measured); a writable buffer's address through ctypes takes a third of that. Only numpy's own dtypes
    export a buffer: ml_dtypes' (bfloat16, float8, int4: ``isbuiltin == 2``) refuse, and take the slow way."""
    if x.flags.writeable and x.nbytes and x.dtype.isbuiltin == 1:
        return ctypes.addressof(_char_at(x))
    return x.ctypes.data


def compile(plan: Plan) -> LLVMExecutable:
    return LLVMExecutable(plan)


def compile_with_parts(plan: Plan, parts, plan_sha256: str | None = None) -> LLVMExecutable:
    """An executable for ``plan`` that uses the machine code (and, when ``plan_sha256`` is the one it was made
    for, the stored layout) an artifact kept, where it still fits; see artifacts.py."""
    prebuilt, notes, workers = prebuilt_from_parts(parts, plan_sha256)
    return LLVMExecutable(plan, prebuilt, notes, native_workers=workers)


from .artifacts import artifact_parts, ir_digest, prebuilt_from_parts  # noqa: E402  (uses the classes above)
from .packed_weights import unbind_released_slots  # noqa: E402
