"""LLVM for this process: the host target machine, the optimisation pipeline, JIT engines, object code.

One target machine per process, made for the host CPU with all its features (AVX-512 where present), so
that the loop vectoriser and the instruction selector use the widest vectors the machine has. The code is
therefore tied to CPUs with the same features; artifacts record them (``required_cpu_features``).
"""

from __future__ import annotations

import functools
import threading

import llvmlite.binding as llvm
from llvmlite import ir

from ...errors import ExecutionError

_LOCK = threading.Lock()  # LLVM's global state is not safe to build from several threads at once


@functools.lru_cache(maxsize=None)
def _initialized() -> bool:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    return True


@functools.lru_cache(maxsize=None)
def host_cpu() -> tuple[str, str, str]:
    """(triple, cpu name, feature string) of this machine."""
    _initialized()
    return llvm.get_process_triple(), llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def host_features() -> list[str]:
    """The host CPU's enabled LLVM features (``avx512f``, ``fma``...), sorted."""
    return sorted(f[1:] for f in host_cpu()[2].split(",") if f.startswith("+"))


@functools.lru_cache(maxsize=None)
def target_machine():
    """The process's target machine for optimisation, data layout and object emission (never given to an
    engine: an MCJIT engine takes ownership of its target machine and frees it with itself)."""
    return new_target_machine()


def new_target_machine():
    triple, cpu, features = host_cpu()
    target = llvm.Target.from_triple(triple)
    return target.create_target_machine(cpu=cpu, features=features, opt=3, reloc="pic", codemodel="jitdefault")


def new_module(name: str) -> ir.Module:
    module = ir.Module(name=name)
    module.triple = host_cpu()[0]
    module.data_layout = str(target_machine().target_data)
    return module


def optimize(module: ir.Module) -> "llvm.ModuleRef":
    """Parse, verify and optimise (O3 with the loop and SLP vectorisers) the textual IR of ``module``."""
    return optimize_text(str(module), module.name)


def optimize_text(text: str, name: str = "graphc") -> "llvm.ModuleRef":
    """:func:`optimize` for IR already rendered as text (the caller may have freed the llvmlite module)."""
    with _LOCK:
        _initialized()
        try:
            ref = llvm.parse_assembly(text)
            ref.verify()
        except RuntimeError as exc:  # a code generator bug, never a user error: say where
            raise ExecutionError(f"llvm backend generated invalid IR for {name!r}: {exc}") from exc
        tm = target_machine()
        pto = llvm.create_pipeline_tuning_options(speed_level=3)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pto.loop_unrolling = True
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(ref, pb)
        return ref


class JitModule:
    """A module compiled to machine code in this process; keeps the engine alive as long as it is referenced.

    ``object_code`` is the relocatable object MCJIT made (captured through its object cache, so keeping it
    costs no second code generation); :meth:`from_object` loads such an object back without compiling."""

    def __init__(self, ref: "llvm.ModuleRef | None", object_code: bytes | None = None):
        self.object_code: bytes | None = object_code
        with _LOCK:
            if object_code is None:
                self.engine = llvm.create_mcjit_compiler(ref, new_target_machine())
                self.engine.set_object_cache(self._keep_object, lambda _module: None)
            else:
                empty = llvm.parse_assembly(str(new_module("graphc_loaded")))
                self.engine = llvm.create_mcjit_compiler(empty, new_target_machine())
                self.engine.add_object_file(llvm.ObjectFileRef.from_data(object_code))
            self.engine.finalize_object()
        self.ref = ref

    def _keep_object(self, _module, buffer: bytes) -> None:
        self.object_code = bytes(buffer)

    @classmethod
    def from_object(cls, object_code: bytes) -> "JitModule":
        return cls(None, object_code)

    def global_address(self, name: str) -> int:
        addr = self.engine.get_global_value_address(name)
        if not addr:
            raise ExecutionError(f"llvm backend: global {name!r} is missing from the compiled module")
        return addr

    def address(self, name: str) -> int:
        addr = self.engine.get_function_address(name)
        if not addr:
            raise ExecutionError(f"llvm backend: function {name!r} is missing from the compiled module")
        return addr


def emit_object(ref: "llvm.ModuleRef") -> bytes:
    """Relocatable object code (ELF on Linux) for ``ref``."""
    with _LOCK:
        return target_machine().emit_object(ref)
