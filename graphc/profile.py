"""Where a compiled model's time goes: per-kernel times of the llvm target, measured.

:func:`profile` builds a second executable of the same plan with ``profile=True``: its entry function has
thread 0 read the CPU's cycle counter before the first kernel and after every kernel's barrier (the
time a step takes on its slowest thread, which is what a run waits for; the code of every kernel is the
same as in the normal build). It runs the model ``repeat`` times on the same inputs and gives, per kernel,
the median time, its share of the run, FLOPs and GFLOP/s, which code generator made it and, for a
fallback, that it ran the reference kernel. Cycles become seconds through the counter's rate, measured
against ``time.perf_counter`` while the runs happen.

    from graphc.profile import profile
    report = profile(graphc.compile("zoo:squeezenet"))   # random inputs, or feeds={"x": array}
    print(report.format(top=15))

``graphc bench MODEL --profile`` prints the same table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import OptionError


@dataclass
class KernelTime:
    step: int
    name: str  # the node (a fused kernel's name, or the op's)
    ops: str  # op types it runs, in order
    code: str  # the code generator, or "fallback"
    seconds: float
    flops: int

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9 if self.seconds > 0 and self.flops else 0.0


@dataclass
class ProfileReport:
    kernels: list[KernelTime]
    run_seconds: float  # median of the summed kernel times
    threads: int
    repeat: int
    cycles_per_second: float
    notes: list[str] = field(default_factory=list)

    def by_op(self) -> dict[str, float]:
        """Seconds per op-type signature of the kernels (e.g. ``"Conv+Relu"``), largest first."""
        out: dict[str, float] = {}
        for k in self.kernels:
            out[k.ops] = out.get(k.ops, 0.0) + k.seconds
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def to_dict(self) -> dict[str, Any]:
        return {"run_seconds": self.run_seconds, "threads": self.threads, "repeat": self.repeat,
                "kernels": [{"step": k.step, "name": k.name, "ops": k.ops, "code": k.code, "seconds": k.seconds,
                             "flops": k.flops, "gflops": k.gflops} for k in self.kernels],
                "by_op": self.by_op()}

    def format(self, top: int = 20) -> str:
        total = sum(k.seconds for k in self.kernels) or 1.0
        rows = sorted(self.kernels, key=lambda k: -k.seconds)[:top]
        lines = [f"Kernel times: {len(self.kernels)} kernels, {self.run_seconds * 1e3:.3f} ms per run (median of "
                 f"{self.repeat}), {self.threads} thread(s); slowest {len(rows)}:",
                 f"{'step':>4}  {'ms':>8}  {'share':>6}  {'GFLOP/s':>8}  {'code':<16}  {'ops':<28}  name"]
        for k in rows:
            lines.append(f"{k.step:>4}  {k.seconds * 1e3:>8.3f}  {k.seconds / total:>6.1%}  "
                         f"{k.gflops:>8.1f}  {k.code[:16]:<16}  {k.ops[:28]:<28}  {k.name}")
        lines.append("By op types: " + ", ".join(f"{ops} {s / total:.0%}" for ops, s in list(self.by_op().items())[:8]))
        lines += self.notes
        return "\n".join(lines)


def _flops_and_ops(node) -> tuple[int, str]:
    from .analysis import node_cost, symbolic_dims_as_one

    if node is None:
        return 0, "?"
    if node.domain == "graphc" and node.op_type == "FusedKernel":
        body = node.attrs["body"]
        members = list(body.walk())
        with symbolic_dims_as_one(body):
            flops = sum(node_cost(n).flops for n in members)
        return int(flops), "+".join(n.op_type for n in members)
    return int(node_cost(node).flops), node.op_type


def profile(compiled, feeds: dict[str, np.ndarray] | None = None, repeat: int = 20, warmup: int = 3,
            seed: int = 0) -> ProfileReport:
    """Per-kernel times of ``compiled`` (a CompiledModel of the llvm target on one device)."""
    from .backends.llvm.executable import LLVMExecutable

    if repeat < 1 or warmup < 0:
        raise OptionError(f"profile needs repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    executable = getattr(compiled, "executable", None)
    if not isinstance(executable, LLVMExecutable):
        raise OptionError(f"profiling needs a model compiled for the llvm target on one device; this one runs "
                          f"on {type(executable).__name__} (target {getattr(compiled, 'target', '?')!r})")
    if feeds is None:
        from .bench import random_inputs

        feeds = random_inputs(compiled, seed=seed)
    inputs = [feeds[name] for name in compiled.input_names] if isinstance(feeds, dict) else list(feeds)
    compiled.run(dict(zip(compiled.input_names, inputs)))  # checks the inputs, as a normal run would
    build = LLVMExecutable(compiled.plan, profile=True)
    shapes = tuple(tuple(np.shape(x)) if isinstance(x, np.ndarray) else None for x in inputs)
    steps, stamps, clock = build.profile_stamps(shapes)
    for _ in range(warmup):
        build.run(inputs)
    per_run = []
    c0, t0 = clock(), time.perf_counter()
    for _ in range(repeat):
        build.run(inputs)
        per_run.append(np.diff(stamps.astype(np.int64)))
    c1, t1 = clock(), time.perf_counter()
    rate = (c1 - c0) / (t1 - t0)
    cycles = np.median(np.stack(per_run), axis=0)
    kernels = []
    for i, (step, c) in enumerate(zip(steps, cycles)):
        flops, ops = _flops_and_ops(step.node)
        name = (step.node.name or step.node.op_type) if step.node is not None else step.name
        code = "fallback" if step.kind == "fallback" else (step.emitter or "generated")
        kernels.append(KernelTime(i, name, ops, code, float(c) / rate, flops))
    notes = [] if build.threads == executable.threads else [
        f"note: the profiling build runs {build.threads} threads, the model {executable.threads}"]
    return ProfileReport(kernels, float(np.median(np.stack(per_run).sum(axis=1))) / rate, build.threads, repeat,
                         rate, notes)
