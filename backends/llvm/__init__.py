"""The llvm backend: each kernel of the plan becomes machine code through llvmlite; a run is one call.

See program.py (lowering to one module with an entry function), kernel.py (what emitters see), kernels/ (the
code generators per op family), executable.py (specialisation, threads, fallbacks) and jit.py (LLVM itself).
"""

from .executable import LLVMExecutable, compile, compile_with_parts
from .jit import host_features

__all__ = ["LLVMExecutable", "compile", "compile_with_parts", "host_features"]
