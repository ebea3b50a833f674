"""What every runner of a partitioned plan shares: the stage split, micro-batches, output assembly, lifecycle.

A plan the partitioning pass (passes/partitioning.py) has cut into stages runs on one of two runners:

* ``runtime="local"`` (default): :class:`~graphc.runtime.multidevice.MultiDeviceExecutable`, one worker process
  per (replica, stage) on this host, activations through shared-memory rings;
* ``runtime="ray"``: :class:`~graphc.runtime.ray_runner.RayExecutable`, one Ray actor per (replica, stage) on
  a Ray cluster, activations as object refs.

Both subclass :class:`PartitionedExecutable`, which owns what does not depend on how bytes move: the stage
graphs and their routing (``split_stages``), the replica groups and micro-batch size the pass chose, cutting a
batch into micro-batches and concatenating the results, and the all-or-nothing contract of ``run_stream``
(any failure closes the runner -- its workers' state is unknown -- and the next run starts fresh ones). Each
worker builds its stage with :func:`build_stage_executable`, whichever runner started it.

A subclass implements ``start()``, ``close()`` and ``_stream(batches)``, keeps its workers in ``self._pool``
(an object with ``close()``; the finalizer closes it when the executable is collected or at interpreter exit).
"""

from __future__ import annotations

import abc
import functools
import graphlib
import threading
import weakref
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import DeviceError, GraphcError

DEFAULT_HANG_TIMEOUT_S = 5.0
DEFAULT_START_TIMEOUT_S = 300.0


def partition_summary(plan) -> dict | None:
    for decision in reversed(plan.decisions):
        data = decision.get("data", {})
        if decision.get("pass") == "partitioning" and data.get("summary"):
            return data.get("partition")
    return None


def is_partitioned(plan) -> bool:
    return partition_summary(plan) is not None


def compile_plan(plan):
    """The executable for ``plan``: a partitioned plan runs on the runner its ``runtime`` option names (local
    worker processes by default, Ray actors with ``runtime="ray"``); any other plan on its target backend."""
    if is_partitioned(plan):
        if plan.options.get("runtime", "local") == "ray":
            from .ray_runner import RayExecutable

            return RayExecutable(plan)
        from .multidevice import MultiDeviceExecutable

        return MultiDeviceExecutable(plan)
    from ..backends import get_backend

    return get_backend(plan.target).compile(plan)


def build_stage_executable(doc: dict, weights: dict, target: str, options: dict):
    """Compile one stage graph (a ``split_stages`` document and its weights) with the plan's target backend,
    after planning its own memory. Runs inside a worker (process or actor)."""
    from ..backends import get_backend
    from ..ir.serialize import graph_from_json
    from ..passes import PassContext, PassManager
    from ..plan import Plan

    graph = graph_from_json(doc, weights)
    ctx = PassContext(target=target, options=dict(options), properties={"shapes_inferred"})
    result = PassManager(["memory_planning"]).run(graph, ctx)
    plan = Plan(graph=graph, target=target, options=dict(options),
                decisions=[d.to_dict() for d in ctx.decisions], pipeline=result.to_dict())
    return get_backend(target).compile(plan)


def stage_order(split) -> list[int]:
    """The stages in an order where each comes after every stage it reads from."""
    deps: dict[int, set[int]] = {st.index: set() for st in split.stages}
    for (s, _name), src in split.sources.items():
        if src[0] == "stage":
            deps[s].add(src[1])
    return list(graphlib.TopologicalSorter(deps).static_order())


def _close_pool(state: dict) -> None:
    pool = state.get("_pool")
    if pool is not None:
        pool.close()


class PartitionedExecutable(abc.ABC):
    """``run(inputs) -> outputs`` like every Executable, plus ``run_stream(batches)`` to pipeline a stream of
    input lists. Workers start at the first run."""

    runtime = "?"

    def __init__(self, plan, *, hang_timeout: float | None = None, start_timeout: float | None = None,
                 depth: int | None = None):
        from ..devices import DeviceSet
        from ..passes.partitioning import split_stages

        summary = partition_summary(plan)
        if summary is None:
            raise DeviceError("the plan is not partitioned over several devices")
        self.plan = plan
        self.summary = summary
        self.split = split_stages(plan.graph)
        self.groups: list[list[str]] = [list(g) for g in summary["groups"]]
        self.micro_batch: int | None = summary.get("micro_batch")
        options = plan.options
        spec = options.get("device_spec")
        self.devset = DeviceSet.from_dict(spec) if spec else None
        self.hang_timeout = float(hang_timeout or options.get("hang_timeout") or DEFAULT_HANG_TIMEOUT_S)
        self.start_timeout = float(start_timeout or DEFAULT_START_TIMEOUT_S)
        # at most `depth` micro-batches in flight: enough to keep every stage busy, bounded memory
        self.depth = int(depth or 2 * len(self.split.stages) + 1)
        self.stage_options = {k: v for k, v in options.items() if k not in ("devices", "device_spec", "runtime")}
        self._pool: Any = None
        self._lock = threading.Lock()
        graph = plan.graph
        self._inputs = [v.name for v in graph.inputs]
        self._outputs = [v.name for v in graph.outputs]
        self._consts = {v.name: v.const for v in graph.outputs if v.is_constant}
        self._input_types = [v.type for v in graph.inputs]
        self._finalizer = weakref.finalize(self, _close_pool, self.__dict__)

    # -- lifecycle (start / close: the subclass) -----------------------------------------------------------------
    def device_of(self, name: str):
        if self.devset is None:
            return None
        try:
            return self.devset.device(name)
        except GraphcError:
            return None

    def stage_cores(self, device: str) -> list[int]:
        """The host cores a CPU device stands for ([] for other kinds, or when the plan has no device spec)."""
        dev = self.device_of(device)
        return list(dev.cores) if dev is not None and dev.kind == "cpu" else []

    @abc.abstractmethod
    def start(self) -> None:
        """Start the workers (processes or actors) if they are not running."""

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- running -------------------------------------------------------------------------------------------------
    def run(self, inputs: list) -> list:
        inputs = list(inputs)
        chunks = self._micro_batches(inputs)
        if chunks is None:
            return self.run_stream([inputs])[0]
        parts = self.run_stream(chunks)
        return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(self._outputs))]

    def _micro_batches(self, inputs: list) -> list[list] | None:
        """Split a batch into the plan's micro-batches along the leading (symbolic batch) dim, if it asks for it."""
        m = self.micro_batch
        if not m or not inputs or not all(isinstance(x, np.ndarray) and x.ndim for x in inputs):
            return None
        n = inputs[0].shape[0]
        if n <= m or any(x.shape[0] != n for x in inputs):
            return None
        return [[x[i:i + m] for x in inputs] for i in range(0, n, m)]

    def run_stream(self, batches: Iterable[list]) -> list[list]:
        """Run every input list of ``batches`` (graph-input order) through the pipeline, overlapping them;
        returns the outputs of each, in order. All or nothing: any failure raises."""
        batches = [list(b) for b in batches]
        if not batches:
            return []
        with self._lock:
            self.start()
            try:
                return self._stream(batches)
            except BaseException:
                self.close()  # the workers' state is unknown: the next run starts fresh ones
                raise

    @abc.abstractmethod
    def _stream(self, batches: list[list]) -> list[list]:
        """Push ``batches`` through the started workers; the outputs of each, in order."""

    @functools.cached_property
    def stage_routing(self) -> list[list[tuple]]:
        """Where each stage's inputs come from, in the order of its graph's inputs: ``("input", graph input
        name)`` or ``("stage", producer stage, index among the producer's outputs)``."""
        index_of = [{n: i for i, n in enumerate(st.outputs)} for st in self.split.stages]
        routing = []
        for st in self.split.stages:
            row = []
            for name in st.inputs:
                src = self.split.sources[(st.index, name)]
                row.append(("input", src[1]) if src[0] == "input" else ("stage", src[1], index_of[src[1]][src[2]]))
            routing.append(row)
        return routing

    def assemble_outputs(self, inputs: list, stage_value: Callable[[int, str], Any]) -> list:
        """The graph outputs of one micro-batch, in order: constants and passed-through inputs copied here,
        the rest from ``stage_value(stage, value name)``."""
        outs = []
        for name in self._outputs:
            src = self.split.outputs[name]
            if src[0] == "const":
                outs.append(np.array(self._consts[name], copy=True))
            elif src[0] == "input":
                outs.append(np.array(inputs[self._inputs.index(name)], copy=True))
            else:
                outs.append(stage_value(src[1], src[2]))
        return outs

    def describe(self) -> dict:
        return {"runtime": self.runtime, "stages": len(self.split.stages), "replicas": len(self.groups),
                "groups": self.groups, "micro_batch": self.micro_batch, "target": self.plan.target}


__all__ = ["PartitionedExecutable", "build_stage_executable", "compile_plan", "is_partitioned",
           "partition_summary", "stage_order", "DEFAULT_HANG_TIMEOUT_S", "DEFAULT_START_TIMEOUT_S"]
