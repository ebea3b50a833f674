"""Partitioned plans on Ray (``runtime="ray"``): one actor per (replica, stage), activations as object refs.

The same plan, stage split and micro-batching as the local runner (graphc/runtime/partitioned.py); only the
transport differs, so going from local worker processes to a Ray cluster is one option:
``graphc.compile(model, devices="cpu:0,cpu:1", runtime="ray")``. Ray is an optional extra
(``pip install 'graphc[ray]'``), imported only here.

Cluster. The driver uses the Ray it finds: an initialised one (``ray.is_initialized()``), else the cluster
``$RAY_ADDRESS`` names, else a local instance it starts (``num_cpus`` = enough for the actors, no dashboard,
worker logs not forwarded). Only a Ray that graphc started is shut down by :func:`shutdown` (Ray's own exit
hook does it at interpreter exit); a user's cluster is left running.

Actors. Each (replica, stage) gets one actor (``max_restarts=0``: a dead actor is an error, never a silent
re-run) asking for its device's resources: ``num_cpus`` = the CPU device's cores, or one GPU for a CUDA device
(Ray assigns which one; there is no core pinning, since Ray does not expose cores). The actor builds its stage
with :func:`~graphc.runtime.partitioned.build_stage_executable`. A stage's weights are ``ray.put`` once; every
replica's actor maps the same read-only copy out of the node's object store.

Data path. For each micro-batch the driver ``ray.put``s the graph inputs once (those under 100 KiB ride
inline in the tasks instead) and submits every stage task at once, each stage's outputs as separate return
refs (``num_returns``) passed straight to the stages that read them: Ray moves an activation from producer to
consumer through the object store (across nodes when they differ) without the driver fetching it. The driver waits (``fetch_local=False``) only on the refs of the graph
outputs, and keeps at most ``depth`` micro-batches in flight. (Ray itself inlines returns under its
100 KiB direct-call limit into the next task's arguments via the owner, the driver; larger ones never pass it.)

Failures, each found within ``hang_timeout`` (default 5 s) and never silently partial -- a run returns every output of
every micro-batch or raises, and the actors are then killed and replaced at the next run:

* an actor that dies (killed, crashed, its node lost): Ray fails its tasks with ``RayActorError`` at once;
  raised as :class:`~graphc.errors.DeviceError` naming stage, replica, device, pid and node;
* an actor that hangs (stopped, deadlocked, its node unreachable): while a run waits, the driver pings every
  actor each 0.5 s in a separate concurrency group (so a long kernel does not block the answer); no answer for
  ``hang_timeout`` seconds is a DeviceError;
* an error inside a stage comes back as :class:`~graphc.errors.ExecutionError` naming the stage;
* with ``task_timeout`` set (default: none), a micro-batch in flight for longer is a DeviceError;
* actors that cannot be placed or built within ``start_timeout`` are a DeviceError.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DeviceError, ExecutionError, GraphcError
from .partitioned import PartitionedExecutable, build_stage_executable, stage_order

PING_INTERVAL_S = 0.5
WAIT_SLICE_S = 0.05
INLINE_BYTES = 100 * 1024  # Ray's own limit for passing a task's values inline (max_direct_call_object_size)
INSTALL_HINT = "pip install 'graphc[ray]'"

_session_lock = threading.Lock()
_started_ray = False         # graphc called ray.init() for a local instance: only then does it shut Ray down
_exit_hook = False
_live_pools: "weakref.WeakSet[_ActorPool]" = weakref.WeakSet()
_actor_class: Any = None


def import_ray():
    """The ``ray`` module, or a GraphcError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise DeviceError(f"runtime='ray' needs Ray, which is not installed: {INSTALL_HINT} (or use the default "
                          "runtime='local', worker processes on this host)") from None
    return ray


def connect(num_cpus: int = 1) -> bool:
    """Make sure this process is connected to Ray; return True when graphc started the instance.

    An initialised Ray is used as it is; else ``ray.init()`` connects to ``$RAY_ADDRESS`` when it is set, else
    starts a local instance with at least ``num_cpus`` logical CPUs (``num_cpus`` is a scheduling count, not
    a thread count: it may exceed the cores)."""
    global _started_ray, _exit_hook
    ray = import_ray()
    with _session_lock:
        if not ray.is_initialized():
            quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
            if os.environ.get("RAY_ADDRESS"):
                ray.init(**quiet)
            else:
                ray.init(num_cpus=max(os.cpu_count() or 1, num_cpus), include_dashboard=False, **quiet)
                _started_ray = True
        if not _exit_hook:
            # registered after ray.init's own hook, so it runs first (atexit is last-in, first-out): our actors
            # are killed while Ray can still do it
            atexit.register(_close_all)
            _exit_hook = True
        return _started_ray


def started_ray() -> bool:
    """Whether the Ray this process uses was started by graphc (and will be shut down by :func:`shutdown`)."""
    return _started_ray


def _close_all() -> None:
    for pool in list(_live_pools):
        pool.close()


def shutdown() -> None:
    """Kill every actor graphc started in this process and shut Ray down if graphc started it."""
    global _started_ray
    _close_all()
    with _session_lock:
        if _started_ray:
            ray = import_ray()
            if ray.is_initialized():
                ray.shutdown()
            _started_ray = False


# ============================================================================================ the actor
class StageActor:
    """One stage of one replica, living in a Ray actor. Methods other than ``run`` are cheap and answered from
    the ``health`` concurrency group, so they go through while ``run`` computes."""

    def __init__(self, doc: dict, weights: dict, target: str, options: dict, label: str):
        self.label = label
        self.spans: list[tuple[float, float]] = []  # (start, end) wall-clock times of the runs since last asked
        self.executable = None
        self.build_error: str | None = None
        try:
            # weights are read-only views of the object store's copy, shared by every actor of the node
            self.executable = build_stage_executable(doc, weights, target, options)
        except Exception as exc:  # noqa: BLE001 - told to the driver by where(): Ray's own text buries it
            self.build_error = f"{type(exc).__name__}: {exc}"

    def where(self) -> tuple[int, str, str | None]:
        """(pid, host name, why the stage could not be built or None)."""
        return os.getpid(), socket.gethostname(), self.build_error

    def ping(self) -> bool:
        return True

    def spans_since_last(self) -> list[tuple[float, float]]:
        spans, self.spans = self.spans, []
        return spans

    def run(self, *inputs):
        start = time.time()
        try:
            outputs = self.executable.run(list(inputs))
        except GraphcError as exc:
            raise ExecutionError(f"{self.label}: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a bug in a kernel still names its stage
            raise ExecutionError(f"{self.label}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}") from None
        if len(self.spans) < 10000:
            self.spans.append((start, time.time()))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _remote_actor_class(ray):
    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(concurrency_groups={"health": 1}, max_restarts=0,
                                  max_task_retries=0)(StageActor)
    return _actor_class


# ============================================================================================ the driver side
@dataclass
class _Actor:
    replica: int
    stage: int
    device: str
    handle: Any
    pid: int | None = None
    node: str | None = None

    def describe(self) -> str:
        where = f" (pid {self.pid} on {self.node})" if self.pid else ""
        return f"the Ray actor of stage {self.stage} (replica {self.replica}) on {self.device}{where}"


class _ActorPool:
    """The started actors and the object refs they share (weights); ``close`` kills them all."""

    def __init__(self, exe: "RayExecutable"):
        ray = self.ray = import_ray()
        demands = {key: exe.actor_resources(device) for key, device in exe.placements()}
        connect(num_cpus=sum(d.get("num_cpus", 0) for d in demands.values()))
        self.job = ray.get_runtime_context().get_job_id()
        self.closed = False
        self.actors: dict[tuple[int, int], _Actor] = {}
        _live_pools.add(self)
        try:
            if started_ray():
                _check_room(ray, demands)
            # one copy of each stage's weights in the object store, whatever the number of replicas
            self.weights = [ray.put(st.weights) for st in exe.split.stages]
            cls = _remote_actor_class(ray)
            for (r, s), device in exe.placements():
                options = {**exe.stage_options, "threads": int(demands[(r, s)].get("num_cpus") or 0)}
                label = f"stage {s} (replica {r}) on {device}"
                handle = cls.options(**demands[(r, s)]).remote(exe.split.stages[s].doc, self.weights[s],
                                                               exe.plan.target, options, label)
                self.actors[(r, s)] = _Actor(r, s, device, handle)
            self._wait_ready(exe)
        except BaseException:
            self.close()
            raise
        self.by_actor_id = {a.handle._actor_id.hex(): a for a in self.actors.values()}
        self.pings = _Pings(self, exe.hang_timeout)

    def _wait_ready(self, exe: "RayExecutable") -> None:
        ray = self.ray
        pending = {a.handle.where.options(concurrency_group="health").remote(): a for a in self.actors.values()}
        deadline = time.monotonic() + exe.start_timeout
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.2)
            for ref in ready:
                actor = pending.pop(ref)
                try:
                    actor.pid, actor.node, error = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise DeviceError(f"{actor.describe()} could not start: {_cause(exc)}") from None
                if error:
                    raise DeviceError(f"{actor.describe()} could not build its stage: {error}")
            if pending and time.monotonic() > deadline:
                actor = next(iter(pending.values()))
                raise DeviceError(f"{actor.describe()} was not ready after {exe.start_timeout:.0f} s (does the "
                                  f"Ray cluster have {exe.actor_resources(actor.device)} free?)")

    def usable(self) -> bool:
        return not self.closed and self.ray.is_initialized() and \
            self.ray.get_runtime_context().get_job_id() == self.job

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        _live_pools.discard(self)
        ray = self.ray
        if ray.is_initialized():
            for actor in self.actors.values():
                try:
                    ray.kill(actor.handle, no_restart=True)
                except Exception:  # noqa: BLE001 - already dead, or Ray is going down: nothing left to kill
                    pass
        self.actors = {}
        self.weights = []


def _check_room(ray, demands: dict, wait_s: float = 10.0) -> None:
    """Fail early when the local Ray graphc started cannot place the actors: it will not grow, and only graphc's
    own actors use it, so a shortfall that lasts (other models' actors alive) would otherwise pend until the
    start timeout. Killed actors free their resources a moment later, hence the short wait."""
    need = {key: sum(d.get(res, 0) for d in demands.values()) for res, key in (("num_cpus", "CPU"),
                                                                               ("num_gpus", "GPU"))}
    total = ray.cluster_resources()
    deadline = time.monotonic() + wait_s
    while True:
        free = ray.available_resources()
        short = [key for key, n in need.items() if n > free.get(key, 0) + 1e-9]
        if not short:
            return
        if time.monotonic() > deadline or any(need[key] > total.get(key, 0) for key in short):
            key = short[0]
            raise DeviceError(
                f"the local Ray instance graphc started has {free.get(key, 0):g} of {total.get(key, 0):g} {key}(s) "
                f"free; this plan's {len(demands)} actors need {need[key]:g}. Close the actors of other models "
                "(compiled.executable.close()), or start Ray yourself with more before the first run "
                "(ray.init(num_cpus=N): a scheduling count, it may exceed the cores), or set RAY_ADDRESS")
        time.sleep(0.1)


def _cause(exc: BaseException) -> str:
    text = str(getattr(exc, "cause", None) or exc).strip()
    lines = text.splitlines()
    return "\n".join(lines[:12]) + ("\n..." if len(lines) > 12 else "")


class RayExecutable(PartitionedExecutable):
    """Runs a partitioned plan on Ray actors: ``run(inputs) -> outputs`` and ``run_stream(batches)`` like the
    local runner. Actors start at the first run; ``close()`` kills them."""

    runtime = "ray"

    def __init__(self, plan, *, hang_timeout: float | None = None, task_timeout: float | None = None,
                 start_timeout: float | None = None, depth: int | None = None):
        import_ray()  # say at compile time, not at the first run, that Ray is missing
        super().__init__(plan, hang_timeout=hang_timeout, start_timeout=start_timeout, depth=depth)
        self.task_timeout = task_timeout  # None: a stage may compute as long as its actor answers pings
        self._order = stage_order(self.split)
        self._index_of = [{n: i for i, n in enumerate(st.outputs)} for st in self.split.stages]

    def placements(self) -> list[tuple[tuple[int, int], str]]:
        return [((r, s), device) for r, group in enumerate(self.groups) for s, device in enumerate(group)]

    def actor_resources(self, device: str) -> dict:
        dev = self.device_of(device)
        if dev is not None and dev.kind == "cuda":
            return {"num_cpus": 1, "num_gpus": 1}
        return {"num_cpus": max(len(self.stage_cores(device)), 1)}

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._pool is not None and not self._pool.usable():
            self.close()  # Ray was shut down or restarted under us: these handles are dead
        if self._pool is None:
            self._pool = _ActorPool(self)

    @property
    def actors(self) -> list[_Actor]:
        return list(self._pool.actors.values()) if self._pool else []

    def stage_spans(self) -> dict[tuple[int, int], list[tuple[float, float]]]:
        """(replica, stage) -> (start, end) wall-clock times of the runs each actor made since the last call."""
        pool = self._pool
        if pool is None:
            return {}
        refs = {key: a.handle.spans_since_last.options(concurrency_group="health").remote()
                for key, a in pool.actors.items()}
        return {key: pool.ray.get(ref, timeout=self.hang_timeout) for key, ref in refs.items()}

    # -- running -------------------------------------------------------------------------------------------------
    def _submit(self, pool: _ActorPool, inputs: list, replica: int) -> list:
        """Every stage task of one micro-batch; returns the refs (or None: not a stage value) of its outputs."""
        ray = pool.ray
        split = self.split
        graph_refs: dict[str, Any] = {}
        produced: dict[int, list] = {}
        for s in self._order:
            st = split.stages[s]
            args = []
            for name in st.inputs:
                src = split.sources[(s, name)]
                if src[0] == "input":
                    if src[1] not in graph_refs:
                        value = inputs[self._inputs.index(src[1])]
                        # a large input goes into the object store once, whatever reads it; a small one rides
                        # in the task itself (a put and a fetch cost more than the copy: 1.1 ms per call measured)
                        small = getattr(value, "nbytes", INLINE_BYTES) < INLINE_BYTES
                        graph_refs[src[1]] = value if small else ray.put(value)
                    args.append(graph_refs[src[1]])
                else:
                    args.append(produced[src[1]][self._index_of[src[1]][src[2]]])
            k = len(st.outputs)
            refs = pool.actors[(replica, s)].handle.run.options(num_returns=max(k, 1)).remote(*args)
            produced[s] = [refs] if k <= 1 else list(refs)
        return [produced[src[1]][self._index_of[src[1]][src[2]]] if src[0] == "stage" else None
                for src in (split.outputs[name] for name in self._outputs)]

    def _stream(self, batches: list[list]) -> list[list]:
        pool = self._pool
        assert pool is not None
        ray = pool.ray
        R = len(self.groups)
        results: list[list | None] = [None] * len(batches)
        in_flight: dict[int, list] = {}          # seq -> output refs (None where not a stage value)
        submitted: dict[int, float] = {}         # seq -> when its tasks were submitted
        waiting: dict[Any, int] = {}             # output ref -> seq
        arrived: set = set()
        pings = pool.pings
        pings.begin()
        next_seq = done = 0
        while done < len(batches):
            while next_seq < len(batches) and len(in_flight) < self.depth:
                refs = self._submit(pool, batches[next_seq], next_seq % R)
                in_flight[next_seq] = refs
                submitted[next_seq] = time.monotonic()
                waiting.update({ref: next_seq for ref in refs if ref is not None})
                next_seq += 1
            for seq in [q for q, refs in in_flight.items() if all(r is None or r in arrived for r in refs)]:
                refs = in_flight.pop(seq)
                results[seq] = self._collect(pool, batches[seq], refs)
                for ref in refs:
                    if ref is not None:
                        waiting.pop(ref, None)
                        arrived.discard(ref)
                done += 1
            if done == len(batches):
                break
            candidates = [ref for ref in waiting if ref not in arrived] + pings.refs()
            ready, _ = ray.wait(candidates, num_returns=1, timeout=WAIT_SLICE_S, fetch_local=False)
            if ready:  # take everything that is ready, not just the first
                ready, _ = ray.wait(candidates, num_returns=len(candidates), timeout=0, fetch_local=False)
            for ref in ready:
                if not pings.answered(ref):
                    arrived.add(ref)
            pings.check()
            if self.task_timeout and in_flight:
                oldest = min(in_flight)
                if time.monotonic() - submitted[oldest] > self.task_timeout:
                    raise DeviceError(f"micro-batch {oldest} has been computing on Ray for more than "
                                      f"{self.task_timeout:.1f} s (task_timeout); the run is abandoned "
                                      "(no partial outputs)")
        return results  # type: ignore[return-value]

    def _collect(self, pool: _ActorPool, inputs: list, refs: list) -> list:
        ray = pool.ray
        stage_refs = [r for r in refs if r is not None]
        try:
            values = ray.get(stage_refs, timeout=self.hang_timeout) if stage_refs else []
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ExecutionError):
                raise ExecutionError(str(cause)) from None
            raise ExecutionError(f"a stage failed: {_cause(exc)}") from None
        except ray.exceptions.RayActorError as exc:
            raise _actor_died(pool, exc) from None
        except ray.exceptions.GetTimeoutError:
            raise DeviceError(f"an output computed on Ray could not be fetched within {self.hang_timeout:.1f} s; "
                              "the run is abandoned (no partial outputs)") from None
        except ray.exceptions.RayError as exc:  # lost objects, a dead owner or node
            raise DeviceError(f"Ray lost the run: {_cause(exc)}; the run is abandoned (no partial outputs)") from None
        # a private copy of each: a fetched array is a read-only view that pins the object store's copy
        got = {name: np.array(value, copy=True) if isinstance(value, np.ndarray) else value
               for name, value in zip([n for n, r in zip(self._outputs, refs) if r is not None], values)}
        return self.assemble_outputs(inputs, lambda _stage, name: got[name])  # a graph output is its value's name


def _actor_died(pool: _ActorPool, exc: BaseException) -> DeviceError:
    actor = pool.by_actor_id.get(getattr(exc, "actor_id", None) or "")
    who = actor.describe() if actor else "a Ray actor of this plan"
    text = " ".join(str(exc).split())
    # Ray's text is long; keep its exit detail ("Worker unexpectedly exits with ... End of file.") up to its
    # generic list of possible causes
    detail = re.search(r"exit detail: (.*?)(?: Some common causes|$)", text, re.IGNORECASE)
    reason = detail.group(1).strip() if detail else (text[:200] or type(exc).__name__)
    return DeviceError(f"{who} died ({reason}); the run is abandoned (no partial outputs)")


class _Pings:
    """Heartbeats while a run waits: each actor is pinged at most every PING_INTERVAL_S (kept across runs, so
    short runs do not each pay for pings); a ping unanswered for the hang timeout is a hung actor. A ping to a
    dead actor fails at once, which names it."""

    def __init__(self, pool: _ActorPool, timeout: float):
        self.pool = pool
        self.timeout = timeout
        self.out: dict[Any, tuple[_Actor, float]] = {}   # ping ref -> (actor, sent at)
        self.last: dict[tuple[int, int], float] = {}     # actor key -> when its last answer came
        now = time.monotonic()
        for key in pool.actors:
            self.last[key] = now - PING_INTERVAL_S

    def begin(self) -> None:
        """A run starts: a ping still out from an earlier run is timed from now (nobody waited in between)."""
        now = time.monotonic()
        self.out = {ref: (actor, max(sent, now)) for ref, (actor, sent) in self.out.items()}

    def refs(self) -> list:
        now = time.monotonic()
        busy = {(a.replica, a.stage) for a, _ in self.out.values()}
        for key, actor in self.pool.actors.items():
            if key not in busy and now - self.last[key] >= PING_INTERVAL_S:
                ref = actor.handle.ping.options(concurrency_group="health").remote()
                self.out[ref] = (actor, now)
        return list(self.out)

    def answered(self, ref) -> bool:
        if ref not in self.out:
            return False
        actor, _ = self.out.pop(ref)
        ray = self.pool.ray
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.RayActorError as exc:
            raise _actor_died(self.pool, exc) from None
        except ray.exceptions.RayError as exc:
            raise DeviceError(f"{actor.describe()} is unreachable: {_cause(exc)}") from None
        self.last[(actor.replica, actor.stage)] = time.monotonic()
        return True

    def check(self) -> None:
        now = time.monotonic()
        for actor, sent in self.out.values():
            if now - sent > self.timeout:
                raise DeviceError(f"{actor.describe()} stopped responding (no answer to a ping for "
                                  f"{now - sent:.1f} s); the run is abandoned (no partial outputs)")


__all__ = ["RayExecutable", "StageActor", "connect", "import_ray", "shutdown", "started_ray"]
