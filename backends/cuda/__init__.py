"""The CUDA backend: the plan's kernels as CUDA C, built with nvcc or NVRTC, run through cuda-python.

``compile(plan)`` generates the translation unit and the launch list (:mod:`.codegen`), builds them
(:mod:`.build`; needs nvcc or NVRTC, no GPU) and returns a :class:`CudaExecutable`. Its ``run`` needs a GPU
(:mod:`.runtime`) and raises :class:`~graphc.errors.DeviceError` without one -- unless
``GRAPHC_CUDA_EMULATE=1``, which runs the same kernels compiled for the CPU (:mod:`.emulate`), slowly, for
testing on machines without a GPU.

Modules: dtypes, emitter, codegen_math / codegen_expr (element expressions), kernel (the kernel frame),
codegen_loop / codegen_row / codegen_gemm (the three kernel shapes), codegen (the program), build, runtime,
fallback (host steps), emulate + cuda_emul.h (the host-emulation harness).
"""

from __future__ import annotations

import json
import os
import threading

from ...errors import DeviceError
from ...plan import Plan
from . import build as _build
from .build import Build
from .codegen import Program, generate

__all__ = ["CudaExecutable", "compile", "compile_with_parts"]


def _emulate_requested() -> bool:
    return os.environ.get("GRAPHC_CUDA_EMULATE", "").strip().lower() in {"1", "true", "yes", "on"}


class CudaExecutable:
    def __init__(self, plan: Plan, program: Program, built: Build):
        self.plan = plan
        self.program = program
        self.build = built
        self.fallback_ops = list(program.fallback_ops)
        self._session = None
        self._emulator = None
        self._lock = threading.Lock()
        self._host_steps = None

    def _steps(self):
        if self._host_steps is None:
            from .fallback import HostStep

            self._host_steps = {i: HostStep(n) for i, n in self.program.host_nodes.items()}
        return self._host_steps

    def run(self, inputs: list) -> list:
        if _emulate_requested():
            with self._lock:
                if self._emulator is None:
                    from .emulate import Emulator

                    self._emulator = Emulator(self.plan, self.program)
                return self._emulator.run(list(inputs))
        with self._lock:
            if self._session is None:
                from .runtime import DeviceSession

                blob = self.program.weights_blob(self.plan.graph)
                self._session = DeviceSession(self.program, self.build, blob, self.plan.graph)
        return self._session.run(list(inputs), self._steps())

    # -- what the artifact and the report keep ---------------------------------------------------------------
    def artifact_parts(self) -> dict[str, bytes]:
        """Source, launch list, build log and binaries, stored in the artifact as ``backend/<name>``."""
        parts = {"kernels.cu": self.program.source.encode(),
                 "launch.json": json.dumps(self.program.launch_list(), indent=1).encode(),
                 "build.log": (f"$ {self.build.command}\n" + self.build.log).encode(),
                 "build.json": json.dumps({"compiler": self.build.compiler, "archs": self.build.archs,
                                           "command": self.build.command,
                                           "binaries": sorted(self.build.binaries)}).encode()}
        parts.update(self.build.binaries)
        return parts

    def describe(self) -> dict:
        """report()["backend"]: kernels by strategy, host steps and why, arena, build."""
        strategies: dict[str, int] = {}
        for k in self.program.kernels:
            strategies[k.strategy] = strategies.get(k.strategy, 0) + 1
        return {"kernels": len(self.program.kernels), "host_steps": len(self.program.host_nodes),
                "strategies": dict(sorted(strategies.items())),
                "cooperative_kernels": sum(k.cooperative for k in self.program.kernels),
                "arena_bytes": self.program.arena_bytes, "weights_bytes": self.program.weights_bytes,
                "compiler": self.build.compiler, "archs": self.build.archs, "build_cached": self.build.cached,
                "host_step_reasons": dict(self.program.problems)}


def compile(plan: Plan) -> CudaExecutable:
    program = generate(plan)
    return CudaExecutable(plan, program, _build.build(program.source))


def compile_with_parts(plan: Plan, parts: dict[str, bytes]) -> CudaExecutable:
    """An executable from an artifact's stored parts: the stored binaries are used when the plan generates the
    same source again (no compiler needed on the loading machine); otherwise the code is built anew."""
    program = generate(plan)
    try:
        meta = json.loads(parts.get("build.json", b"{}"))
    except ValueError:
        meta = {}
    binaries = {name: parts[name] for name in meta.get("binaries", []) if name in parts}
    if parts.get("kernels.cu") == program.source.encode() and binaries:
        log = parts.get("build.log", b"").decode(errors="replace")
        return CudaExecutable(plan, program, Build(meta.get("compiler", "stored"), list(meta.get("archs", [])),
                                                   binaries, log, meta.get("command", ""), cached=True))
    if not binaries and "kernels.cu" in parts:
        raise DeviceError("the artifact's CUDA parts hold no binary")
    return compile(plan)
