"""The llvm backend: each kernel of the plan becomes machine code through llvmlite; a run is one call.

See program.py (lowering to one module with an entry function), kernel.py (what emitters see), kernels/ (the
code generators per op family), executable.py (specialisation, threads, fallbacks) and jit.py (LLVM itself).
"""

from .executable import LLVMExecutable, compile, compile_with_parts

__all__ = ["LLVMExecutable", "compile", "compile_with_parts", "host_features"]


def __getattr__(name: str):
    # jit.py imports llvmlite: only when asked for, so that a model loaded from an artifact runs without it
    if name == "host_features":
        from .jit import host_features

        return host_features
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
