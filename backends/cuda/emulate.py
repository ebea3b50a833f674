"""Host-emulation harness: the generated CUDA C compiled for the CPU (``cuda_emul.h``) and run from the
launch list, to check kernels against the reference executor on a machine without a GPU.

- :func:`build_emulator` compiles the translation unit with g++ (``-include cuda_emul.h``) plus one small
  ``extern "C"`` trampoline per kernel that unpacks an array of pointers into the kernel's typed parameters;
- :class:`Emulator` owns host memory laid out like the device's (the arena, the weights blob, inputs and
  outputs) and runs the launch list: kernels through the trampolines, host steps through the reference
  kernels, output copies;
- :meth:`Emulator.check_kernels` runs each kernel *alone* on the reference values of its inputs and compares
  what it writes with the reference values of its outputs, so a wrong kernel is named, not just a wrong
  model output. Non-cooperative kernels run thread after thread; cooperative ones (row kernels, tiled GEMM)
  run as fibers that meet at ``__syncthreads`` and exchange shuffles, which checks their logic too (their
  timing and memory model only a GPU checks).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np

from ...errors import DeviceError, ExecutionError
from .codegen import Program
from .fallback import HostStep, reference_values

HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emul.h")


def _param_type(decl: str) -> str:
    return re.sub(r"\s*__restrict__\s*\w+$", "", decl).strip()


def trampolines(program: Program) -> str:
    out = []
    for k in program.kernels:
        casts = ", ".join(f"({_param_type(p)})a[{i}]" for i, p in enumerate(k.params))
        out.append(f'extern "C" void graphc_emul_{k.name}(void** a, const unsigned* grid, const unsigned* block, '
                   f'int cooperative) {{\n    graphc_emul::launch(grid, block, cooperative, [&] {{ {k.name}({casts}); }});\n}}')
    return "\n".join(out) + "\n"


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")


def build_emulator(program: Program, workdir: str | None = None, opt: str = "-O1") -> str:
    """Compile ``program`` for the host; returns the shared library's path (cached by source hash)."""
    cxx = compiler()
    if cxx is None:
        raise DeviceError("the CUDA emulation harness needs a C++ compiler (g++), and none was found")
    text = program.source + "\n" + trampolines(program)
    digest = hashlib.sha256((text + open(HEADER).read() + opt).encode()).hexdigest()[:16]
    workdir = workdir or os.path.join(tempfile.gettempdir(), "graphc-cuda-emul")
    os.makedirs(workdir, exist_ok=True)
    lib = os.path.join(workdir, f"emul_{digest}.so")
    if os.path.exists(lib):
        return lib
    src = os.path.join(workdir, f"emul_{digest}.cpp")
    with open(src, "w") as f:
        f.write(text)
    tmp = f"{lib}.{os.getpid()}.tmp"
    cmd = [cxx, "-std=c++17", opt, "-fPIC", "-shared", "-w", "-include", HEADER, "-x", "c++", src, "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DeviceError(f"emulation build failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    os.replace(tmp, lib)
    return lib


def _aligned(nbytes: int, alignment: int = 256) -> np.ndarray:
    store = np.zeros(max(nbytes, 1) + alignment, np.uint8)
    start = (-store.ctypes.data) % alignment
    return store[start:start + max(nbytes, 1)]


@dataclass
class KernelCheck:
    kernel: str
    node: str
    strategy: str
    cooperative: bool
    max_abs_error: float
    max_rel_error: float
    ok: bool


class Emulator:
    def __init__(self, plan, program: Program, lib_path: str | None = None):
        self.plan = plan
        self.graph = plan.graph
        self.program = program
        self.lib = ctypes.CDLL(lib_path or build_emulator(program))
        self.arena = _aligned(program.arena_bytes)
        self.weights = _aligned(program.weights_bytes)
        self.weights[:program.weights_bytes] = program.weights_blob(self.graph)[:program.weights_bytes]
        self.values = {v.name: v for v in self._all_values()}
        self.host_steps = {i: HostStep(n) for i, n in program.host_nodes.items()}
        self.kernels = {k.name: k for k in program.kernels}

    def _all_values(self):
        g = self.graph
        seen = {}
        for v in list(g.inputs) + list(g.initializers.values()):
            seen[id(v)] = v
        for n in g.nodes:
            for v in list(n.inputs) + list(n.outputs):
                if v is not None:
                    seen[id(v)] = v
        return seen.values()

    # -- memory ------------------------------------------------------------------------------------------
    def _view(self, loc: dict, value, io: dict) -> np.ndarray:
        shape = tuple(value.type.shape)
        dtype = np.dtype(value.type.dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        space = loc["space"]
        if space == "arena":
            raw = self.arena[loc["offset"]:loc["offset"] + nbytes]
        elif space == "weights":
            raw = self.weights[loc["offset"]:loc["offset"] + nbytes]
        elif space in ("input", "output"):
            return io[space][loc["index"]]
        else:
            raise ExecutionError(f"emulation: no memory space {space!r}")
        return raw.view(dtype).reshape(shape)

    def _pointer(self, loc: dict, io: dict) -> int:
        space = loc["space"]
        if space == "arena":
            return self.arena.ctypes.data + loc["offset"]
        if space == "weights":
            return self.weights.ctypes.data + loc["offset"]
        return io[space][loc["index"]].ctypes.data

    def _launch(self, entry: dict, io: dict) -> None:
        kernel = self.kernels[entry["kernel"]]
        ptrs = (ctypes.c_void_p * max(len(entry["args"]), 1))(*[self._pointer(a, io) for a in entry["args"]])
        grid = (ctypes.c_uint * 3)(*entry["grid"])
        block = (ctypes.c_uint * 3)(*entry["block"])
        getattr(self.lib, f"graphc_emul_{kernel.name}")(ptrs, grid, block, ctypes.c_int(int(entry["cooperative"])))

    def _io(self, inputs: list) -> dict:
        outs = [np.empty(tuple(v.type.shape), np.dtype(v.type.dtype)) for v in self.graph.outputs]
        ins = [np.ascontiguousarray(x) for x in inputs]
        return {"input": ins, "output": outs}

    # -- whole model -------------------------------------------------------------------------------------
    def run(self, inputs: list) -> list:
        io = self._io(inputs)
        nodes = self.graph.nodes
        for entry in self.program.launches:
            if "kernel" in entry:
                self._launch(entry, io)
            elif "host" in entry:
                node = nodes[entry["host"]]
                step = self.host_steps[entry["host"]]
                values = {}
                for x, loc in zip(step.reads, entry["reads"]):
                    values[id(x)] = x.const if x.is_constant else self._view(loc, x, io).copy()
                for o, r, loc in zip(node.outputs, step.run(values), entry["outputs"]):
                    if o is not None:
                        np.copyto(self._view(loc, o, io), np.asarray(r, dtype=o.type.dtype).reshape(o.type.shape))
            else:
                dst = io["output"][entry["dst"]["index"]]
                v = self.graph.outputs[entry["dst"]["index"]]
                src = v.const if v.is_constant else self._view(entry["copy"], v, io)
                np.copyto(dst, np.asarray(src).reshape(dst.shape))
        return io["output"]

    # -- kernel by kernel --------------------------------------------------------------------------------
    def check_kernels(self, inputs: list, rtol: float = 1e-4, atol: float = 1e-5, include_cooperative=True,
                      only=None) -> list[KernelCheck]:
        """Run every kernel alone on reference inputs and compare its outputs with the reference."""
        ref = reference_values(self.graph, inputs)
        io = self._io(inputs)
        results = []
        for entry in self.program.launches:
            if "kernel" not in entry:
                continue
            kernel = self.kernels[entry["kernel"]]
            if (kernel.cooperative and not include_cooperative) or (only is not None and not only(kernel)):
                continue
            n_out = sum(1 for p in kernel.params if not p.startswith("const "))
            n_in = len(kernel.args) - n_out
            for v, loc in zip(kernel.args[:n_in], entry["args"][:n_in]):
                if loc["space"] in ("arena", "input", "output"):
                    np.copyto(self._view(loc, v, io), np.asarray(ref[id(v)]).reshape(v.type.shape))
            for v, loc in zip(kernel.args[n_in:], entry["args"][n_in:]):
                self._view(loc, v, io)[...] = _poison(np.dtype(v.type.dtype))
            self._launch(entry, io)
            worst_abs = worst_rel = 0.0
            ok = True
            for v, loc in zip(kernel.args[n_in:], entry["args"][n_in:]):
                got = np.asarray(self._view(loc, v, io), dtype=np.float64)
                want = np.asarray(ref[id(v)], dtype=np.float64).reshape(got.shape)
                err = np.abs(got - want)
                both_nan = np.isnan(got) & np.isnan(want)
                err = np.where(both_nan, 0.0, err)
                scale = max(1.0, float(np.nanmax(np.abs(want))) if want.size else 1.0)
                worst_abs = max(worst_abs, float(np.nanmax(err, initial=0.0)) if not np.isnan(err).any() else np.inf)
                worst_rel = max(worst_rel, worst_abs / scale)
                ok = ok and bool(np.all(err <= atol * scale + rtol * np.abs(want)))
            results.append(KernelCheck(kernel.name, entry.get("node") or "", kernel.strategy, kernel.cooperative,
                                       worst_abs, worst_rel, ok))
        return results


def _poison(dtype: np.dtype):
    return np.nan if dtype.kind == "f" else (-7 if dtype.kind in "iu" else True)
