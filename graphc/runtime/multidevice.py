"""Local multi-device execution: one worker process per device, activations through shared memory.

The default runner of a partitioned plan (``runtime="local"``; graphc/runtime/ray_runner.py is the other). What
does not depend on how bytes move -- stage split, micro-batches, output assembly, the all-or-nothing
``run_stream`` -- lives in graphc/runtime/partitioned.py and is shared with the Ray runner.

A partitioned plan (passes/partitioning.py) is cut into one graph per stage (:func:`split_stages`). For each
replica and stage a worker process is started (``spawn``: a clean interpreter, no inherited threads or locks),
pinned with ``os.sched_setaffinity`` to its device's cores, with BLAS/OpenMP thread counts set to that many
cores. Each worker compiles its stage with the plan's target backend
(:func:`~graphc.runtime.partitioned.build_stage_executable`) and then serves ``run`` requests.

Data path. Weights of a stage are written once into a shared-memory block that the stage's workers map
read-only (no copy per replica). The coordinator (the calling process) writes each micro-batch's graph inputs
into its input ring; every worker writes its stage's outputs into its own output ring; a reader maps the
producer's ring and reads the slot in place. A ring has ``depth`` slots (slot = micro-batch number mod depth)
and the coordinator never has more than ``depth`` micro-batches in flight, so a slot is rewritten only after
every reader of its previous micro-batch has finished. Rings are sized from the stage outputs' types with the
symbolic dims bound by the inputs, and regrown between streams when the inputs grow; an output that does not
fit (a data-dependent shape, a sequence) travels pickled through the worker's pipe instead.

Control path. Small messages over one pipe per worker (run / done / error / heartbeat). The coordinator
sends a stage its ``run`` as soon as all its inputs exist, so stages overlap across micro-batches (pipeline
parallelism) and replicas take micro-batches in turn (data parallelism).

Failures. A worker that exits is seen through its process sentinel at once; one whose heartbeat (a thread
beating every 0.2 s) stops for ``hang_timeout`` seconds (default 5) is declared hung; a task running longer
than ``task_timeout`` (default: none) is declared stuck. Each raises a :class:`~graphc.errors.DeviceError`
naming the stage, device and process, kills the pool, and the next run starts a fresh one. An error inside a
kernel comes back as the worker's :class:`ExecutionError`. Results are assembled only when every output of
a micro-batch has arrived: a run returns all its outputs or raises.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import selectors
import sys
import threading
import time
import traceback
import types
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import Any, Sequence

import numpy as np

from ..errors import DeviceError, ExecutionError
from .partitioned import (DEFAULT_HANG_TIMEOUT_S, DEFAULT_START_TIMEOUT_S, PartitionedExecutable,  # noqa: F401
                          build_stage_executable, compile_plan, is_partitioned, partition_summary)

ALIGN = 64
HEARTBEAT_S = 0.2
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS")


def _aligned(n: int) -> int:
    return -(-int(n) // ALIGN) * ALIGN


class _Waiter:
    """``ready(timeout)``: which of a fixed set of connections / process sentinels can be read, from one
    selector registered once (``multiprocessing.connection.wait`` builds and fills a new one per call: tens
    of microseconds on every hand-over, on cores that run stages)."""

    def __init__(self, objects):
        self._selector = selectors.DefaultSelector()
        for obj in objects:
            self._selector.register(obj, selectors.EVENT_READ)

    def ready(self, timeout: float | None = None) -> list:
        return [key.fileobj for key, _ in self._selector.select(timeout)]

    def close(self) -> None:
        self._selector.close()


# ============================================================================================ shared memory
def _attach(name: str) -> shared_memory.SharedMemory:
    """Map a block the coordinator created. Spawned workers share the coordinator's resource tracker, so the
    registration this makes is the coordinator's own; the coordinator alone unlinks the block (which also
    unregisters it), and the tracker removes what a killed coordinator leaves behind."""
    return shared_memory.SharedMemory(name=name, create=False)


class _Ring:
    """``depth`` slots of ``slot_bytes`` in one shared-memory block, created (and unlinked) by the coordinator."""

    def __init__(self, slot_bytes: int, depth: int):
        self.slot_bytes = max(_aligned(slot_bytes), ALIGN)
        self.depth = depth
        self.shm = shared_memory.SharedMemory(create=True, size=self.slot_bytes * depth)
        self.name = self.shm.name

    def close(self) -> None:
        try:
            self.shm.close()
            self.shm.unlink()
        except (FileNotFoundError, OSError):
            pass


def _write_slot(buf, base: int, capacity: int, arrays: Sequence[Any]) -> list[tuple]:
    """Write ``arrays`` one after the other at ``base`` (at most ``capacity`` bytes); return their descriptors:
    ("shm", offset, dtype, shape) for those written, ("obj", value) for what does not fit or is not an array."""
    descs, offset = [], 0
    for a in arrays:
        if isinstance(a, np.ndarray) and a.dtype.kind in "biufc" and a.dtype != object \
                and offset + a.nbytes <= capacity:
            view = np.ndarray(a.shape, a.dtype, buffer=buf, offset=base + offset)
            np.copyto(view, a, casting="no")
            descs.append(("shm", base + offset, a.dtype.str, a.shape))
            offset += _aligned(a.nbytes)
        else:
            descs.append(("obj", a))
    return descs


# ============================================================================================ the worker
def needs_feed(routing: list[tuple]) -> bool:
    """Whether a stage gets a ``feed`` from the coordinator for each micro-batch: when it reads graph inputs,
    or reads no other stage. Any other stage runs ``seq`` once its upstream stages have, which they did only
    after the coordinator fed ``seq``: the permission to reuse ``seq``'s ring slots has already been given."""
    return any(src[0] == "input" for src in routing) or not any(src[0] == "stage" for src in routing)


class _StageInbox:
    """What a worker knows of each micro-batch it has not run yet: the coordinator's ``feed`` (the graph inputs
    it reads, and the permission to run: the coordinator feeds micro-batch ``seq`` only once the ring slots it
    will reuse are free; see :func:`needs_feed`) and the outputs of each upstream stage it reads (sent to it
    directly by those workers). A micro-batch is runnable when all of them are in; the smallest runs first."""

    def __init__(self, routing: list[tuple], upstream_stages: set[int]):
        self.routing = routing
        self.upstream = upstream_stages
        self.fed = needs_feed(routing)
        self.feeds: dict[int, dict[str, tuple]] = {}
        self.outputs: dict[int, dict[int, list]] = {}

    def feed(self, seq: int, descs: dict[str, tuple]) -> None:
        self.feeds[seq] = descs

    def upstream_done(self, seq: int, stage: int, descs: list) -> None:
        self.outputs.setdefault(seq, {})[stage] = descs

    def pop_runnable(self) -> tuple[int, list[tuple]] | None:
        candidates = self.feeds if self.fed else self.outputs
        ready = [q for q in candidates if self.upstream <= self.outputs.get(q, {}).keys()]
        if not ready:
            return None
        seq = min(ready)
        feed, ups = self.feeds.pop(seq, {}), self.outputs.pop(seq, {})
        return seq, [feed[src[1]] if src[0] == "input" else ups[src[1]][src[2]] for src in self.routing]


def _worker_main(conn, spec: dict, upstream: list, downstream: list) -> None:  # pragma: no cover - runs in the child
    """One stage's worker. ``conn`` is the duplex pipe to the coordinator; ``upstream`` the receiving ends of
    pipes from the workers whose outputs this stage reads, ``downstream`` the sending ends to the workers that
    read this stage's outputs. A finished micro-batch goes to the downstream workers directly, so the
    coordinator is not on the pipeline's critical path: it feeds inputs ahead and hears only from the stages
    whose outputs it needs (``spec["report"]``). The others' timings ride on the heartbeat."""
    lock = threading.Lock()
    running: list = [None]   # (seq, time.monotonic() at its start) while a micro-batch runs
    spans: list = []         # (seq, perf_counter at start, seconds) not reported yet

    def send(msg) -> None:
        with lock:
            conn.send(msg)

    def send_spans(kind: str) -> None:
        with lock:  # drain and send under one lock: the coordinator gets every span once, in order
            batch = spans[:]
            spans.clear()
            conn.send((kind, running[0], batch))

    parent = os.getppid()

    def beat() -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            if os.getppid() != parent:  # the coordinator is gone: nobody will read our results
                os._exit(3)
            try:
                send_spans("hb")
            except (OSError, EOFError, BrokenPipeError):
                os._exit(3)

    threading.Thread(target=beat, daemon=True).start()
    try:
        if spec.get("cores"):
            try:
                os.sched_setaffinity(0, set(spec["cores"]))
            except (AttributeError, OSError):
                pass
        executable, maps = _build_stage(spec)
    except BaseException as exc:  # noqa: BLE001 - reported to the coordinator, which raises
        send(("error", None, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    send(("ready", os.getpid()))
    report = bool(spec["report"])
    inbox = _StageInbox([tuple(r) for r in spec["routing"]], {int(t) for t, _ in upstream})
    from_stage = {c: int(t) for t, c in upstream}
    waiter = _Waiter([conn, *from_stage])
    ring = None
    while True:
        try:
            for source in waiter.ready():
                while source.poll():
                    msg = source.recv()
                    if source is not conn:
                        inbox.upstream_done(msg[1], from_stage[source], msg[2])
                    elif msg[0] == "feed":
                        inbox.feed(msg[1], msg[2])
                    elif msg[0] == "flush":
                        send_spans("spans")
                    elif msg[0] == "ring":
                        if ring is not None:
                            ring[0].close()
                        ring = (_attach(msg[1]), msg[2], msg[3])
                    elif msg[0] == "stop":
                        return
        except (EOFError, OSError):
            return
        while (task := inbox.pop_runnable()) is not None:
            seq, descs = task
            try:
                inputs = [_resolve(d, maps) for d in descs]
                running[0] = (seq, time.monotonic())
                t0 = time.perf_counter()
                outputs = executable.run(inputs)
                seconds = time.perf_counter() - t0
                running[0] = None
                if ring is not None:
                    shm, slot_bytes, depth = ring
                    out = _write_slot(shm.buf, (seq % depth) * slot_bytes, slot_bytes, outputs)
                    out = [("shm", ring[0].name) + d[1:] if d[0] == "shm" else d for d in out]
                else:
                    out = [("obj", o) for o in outputs]
                del inputs, outputs
                for _, down in downstream:
                    down.send(("out", seq, out))
                if report:
                    send(("done", seq, out, seconds, t0))
                else:
                    with lock:
                        spans.append((seq, t0, seconds))
            except BaseException as exc:  # noqa: BLE001
                try:
                    send(("error", seq, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
                except Exception:  # noqa: BLE001 - e.g. an unpicklable exception text; the coordinator sees the exit
                    os._exit(4)


def _resolve(desc: tuple, maps: dict) -> Any:
    if desc[0] == "obj":
        return desc[1]
    _, name, offset, dtype, shape = desc
    shm = maps.get(name)
    if shm is None:
        shm = maps[name] = _attach(name)
    return np.ndarray(tuple(shape), np.dtype(dtype), buffer=shm.buf, offset=offset)


def _build_stage(spec: dict):
    maps: dict = {}
    weights = {}
    if spec["weights_shm"]:
        shm = maps[spec["weights_shm"]] = _attach(spec["weights_shm"])
        for wid, dtype, shape, offset in spec["weights"]:
            arr = np.ndarray(tuple(shape), np.dtype(dtype), buffer=shm.buf, offset=offset)
            arr.flags.writeable = False
            weights[wid] = arr
    weights.update(spec.get("weights_inline") or {})
    return build_stage_executable(spec["doc"], weights, spec["target"], spec["options"]), maps


# ============================================================================================ the coordinator
@dataclass
class _Worker:
    replica: int
    stage: int
    device: str
    process: Any
    conn: Any
    last_seen: float | None  # None until its first message: imports in a fresh interpreter take seconds
    ring: _Ring | None = None
    running: tuple | None = None  # (seq, monotonic start) of the micro-batch it runs, from its last heartbeat
    spans: list = field(default_factory=list)  # (seq, perf_counter start, seconds) reported, not yet collected

    def describe(self) -> str:
        return f"the worker of stage {self.stage} (replica {self.replica}) on {self.device} (pid {self.process.pid})"


class _Pool:
    """Started workers plus the shared-memory blocks they use; ``close`` ends them all."""

    def __init__(self, exe: "MultiDeviceExecutable"):
        self.workers: dict[tuple[int, int], _Worker] = {}
        self.blocks: list[shared_memory.SharedMemory] = []
        self.input_ring: _Ring | None = None
        self.closed = False
        self._waiter: _Waiter | None = None  # over every worker's pipe and sentinel, made at the first poll
        ctx = mp.get_context(exe.start_method)
        weight_blocks = [self._weights_block(st) for st in exe.split.stages]
        routing = exe.stage_routing
        reporting = exe.reporting_stages
        try:
            for r, group in enumerate(exe.groups):
                # one pipe per (producer stage, reader stage) of this replica: a finished micro-batch's output
                # descriptors go straight to the workers that read them
                links = {(t, s): ctx.Pipe(duplex=False) for s, rt in enumerate(routing) for t in
                         sorted({src[1] for src in rt if src[0] == "stage"})}
                for s, device in enumerate(group):
                    cores = exe.stage_cores(device)
                    spec = {"doc": exe.split.stages[s].doc, "target": exe.plan.target, "stage": s,
                            "routing": routing[s], "report": s in reporting,
                            "options": {**exe.stage_options, "threads": max(len(cores), 1) if cores else 0},
                            "cores": cores, **weight_blocks[s]}
                    upstream = [(t, recv) for (t, u), (recv, _) in links.items() if u == s]
                    downstream = [(u, send) for (t, u), (_, send) in links.items() if t == s]
                    parent_conn, child_conn = ctx.Pipe(duplex=True)
                    process = ctx.Process(target=_worker_main, args=(child_conn, spec, upstream, downstream),
                                          daemon=True, name=f"graphc-stage{s}-r{r}-{device}")
                    with _thread_env(len(cores) if cores else None), _hidden_main():
                        process.start()
                    child_conn.close()
                    self.workers[(r, s)] = _Worker(r, s, device, process, parent_conn, None)
                for recv, send in links.values():  # the workers hold their own ends now
                    recv.close()
                    send.close()
            self._wait_ready(exe)
        except BaseException:
            self.close()
            raise

    def _weights_block(self, stage) -> dict:
        arrays = {w: a for w, a in stage.weights.items()
                  if isinstance(a, np.ndarray) and a.dtype.kind in "biufc" and a.dtype != object}
        inline = {w: a for w, a in stage.weights.items() if w not in arrays}
        total = sum(_aligned(a.nbytes) for a in arrays.values())
        if not total:
            return {"weights_shm": None, "weights": [], "weights_inline": inline}
        block = shared_memory.SharedMemory(create=True, size=total)
        self.blocks.append(block)
        table, offset = [], 0
        for w, a in arrays.items():
            np.copyto(np.ndarray(a.shape, a.dtype, buffer=block.buf, offset=offset), a, casting="no")
            table.append((w, a.dtype.str, a.shape, offset))
            offset += _aligned(a.nbytes)
        return {"weights_shm": block.name, "weights": table, "weights_inline": inline}

    def _wait_ready(self, exe: "MultiDeviceExecutable") -> None:
        waiting = set(self.workers)
        deadline = time.monotonic() + exe.start_timeout
        while waiting:
            for key, msg in self.poll(exe, timeout=0.2):
                if msg[0] == "ready":
                    waiting.discard(key)
                elif msg[0] == "error":
                    w = self.workers[key]
                    raise DeviceError(f"{w.describe()} could not build its stage: {msg[2]}")
            if time.monotonic() > deadline:
                w = self.workers[next(iter(waiting))]
                raise DeviceError(f"{w.describe()} was not ready after {exe.start_timeout:.0f} s")

    def poll(self, exe: "MultiDeviceExecutable", timeout: float) -> list[tuple[tuple[int, int], tuple]]:
        """Messages that arrived (heartbeats consumed here); raises on a dead, hung or stuck worker."""
        if self._waiter is None:
            self._by_conn = {w.conn: key for key, w in self.workers.items()}
            self._by_sentinel = {w.process.sentinel: key for key, w in self.workers.items()}
            self._waiter = _Waiter([*self._by_conn, *self._by_sentinel])
        by_conn, by_sentinel = self._by_conn, self._by_sentinel
        ready = self._waiter.ready(timeout)
        now = time.monotonic()
        out = []
        for obj in ready:
            if obj in by_conn:
                key = by_conn[obj]
                w = self.workers[key]
                try:
                    while obj.poll():
                        msg = obj.recv()
                        w.last_seen = now
                        if msg[0] in ("hb", "spans"):
                            w.running = msg[1]
                            w.spans.extend(msg[2])
                        if msg[0] != "hb":
                            out.append((key, msg))
                except (EOFError, OSError):
                    pass  # the sentinel says why
        for obj in ready:
            if obj in by_sentinel:
                w = self.workers[by_sentinel[obj]]
                w.process.join(0.1)
                code = w.process.exitcode
                how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited (code {code})"
                raise DeviceError(f"{w.describe()} {how}; the run is abandoned (no partial outputs)")
        for w in self.workers.values():
            if w.last_seen is not None and now - w.last_seen > exe.hang_timeout:
                raise DeviceError(f"{w.describe()} stopped responding (no heartbeat for "
                                  f"{now - w.last_seen:.1f} s); the run is abandoned (no partial outputs)")
            if exe.task_timeout and w.running is not None:
                if now - w.running[1] > exe.task_timeout:
                    raise DeviceError(f"{w.describe()} has run one micro-batch for more than "
                                      f"{exe.task_timeout:.1f} s (task_timeout); the run is abandoned")
        return out

    def ensure_rings(self, exe: "MultiDeviceExecutable", slot_bytes: dict[int, int], input_bytes: int) -> None:
        depth = exe.depth
        if self.input_ring is None or self.input_ring.slot_bytes < input_bytes:
            if self.input_ring is not None:
                self.input_ring.close()
            self.input_ring = _Ring(input_bytes, depth)
        for (r, s), w in self.workers.items():
            need = slot_bytes.get(s, 0)
            if w.ring is None or w.ring.slot_bytes < need:
                old = w.ring
                w.ring = _Ring(need, depth)
                w.conn.send(("ring", w.ring.name, w.ring.slot_bytes, depth))
                if old is not None:
                    old.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._waiter is not None:
            self._waiter.close()
        for w in self.workers.values():
            try:
                w.conn.send(("stop",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for w in self.workers.values():
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2.0)
            try:
                w.conn.close()
            except OSError:
                pass
            if w.ring is not None:
                w.ring.close()
        if self.input_ring is not None:
            self.input_ring.close()
        for block in self.blocks:
            try:
                block.close()
                block.unlink()
            except (FileNotFoundError, OSError):
                pass


@contextlib.contextmanager
def _hidden_main():
    """Start a spawned child without re-running the caller's ``__main__`` (the worker needs nothing from it).

    ``spawn`` re-imports the main script in each child unless it is guarded by ``if __name__ == "__main__"``;
    a user's unguarded script would then compile and start workers recursively. The child's preparation data
    is taken while ``process.start()`` runs, so the main module is swapped for an empty one just then."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class _thread_env:
    """Set the BLAS/OpenMP thread counts for a child while it is started (spawn copies os.environ then)."""

    def __init__(self, threads: int | None):
        self.threads = threads
        self.saved: dict[str, str | None] = {}

    def __enter__(self):
        if self.threads:
            for var in _THREAD_VARS:
                self.saved[var] = os.environ.get(var)
                os.environ[var] = str(self.threads)

    def __exit__(self, *exc):
        for var, value in self.saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


class MultiDeviceExecutable(PartitionedExecutable):
    """Runs a partitioned plan on worker processes of this host: ``run(inputs) -> outputs`` like every
    Executable, plus ``run_stream(batches)`` to pipeline a stream of input lists. Workers start at the first run."""

    runtime = "local"

    def __init__(self, plan, *, hang_timeout: float | None = None, task_timeout: float | None = None,
                 start_method: str = "spawn", depth: int | None = None, start_timeout: float | None = None):
        super().__init__(plan, hang_timeout=hang_timeout, start_timeout=start_timeout, depth=depth)
        self.task_timeout = task_timeout
        self.start_method = start_method
        self.last_stage_seconds: dict[tuple[int, int], list[float]] = {}
        values = plan.graph.value_by_name()
        self._stage_out_types = [[values[n].type if n in values else None for n in st.outputs]
                                 for st in self.split.stages]

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._pool is None or self._pool.closed:
            self._pool = _Pool(self)

    @property
    def workers(self) -> list[_Worker]:
        return list(self._pool.workers.values()) if self._pool else []

    # -- running -----------------------------------------------------------------------------------------------
    def _bindings(self, inputs: list) -> dict[str, int]:
        from ..ir.types import TensorType

        out: dict[str, int] = {}
        for t, x in zip(self._input_types, inputs):
            if isinstance(t, TensorType) and t.shape is not None and hasattr(x, "shape") and len(x.shape) == len(t.shape):
                out.update({d: int(n) for d, n in zip(t.shape, x.shape) if isinstance(d, str)})
        return out

    def _slot_sizes(self, batches: list[list]) -> tuple[dict[int, int], int]:
        from ..ir.types import TensorType

        sizes: dict[int, int] = {}
        inputs = 0
        for b in batches:
            bindings = self._bindings(b)
            inputs = max(inputs, sum(_aligned(getattr(x, "nbytes", 0)) for x in b))
            for s, types in enumerate(self._stage_out_types):
                total = 0
                for t in types:
                    if isinstance(t, TensorType) and t.shape is not None and t.dtype is not None:
                        n = t.dtype.itemsize
                        for d in t.shape:
                            n *= d if isinstance(d, int) else bindings.get(d, 0) if isinstance(d, str) else 0
                        total += _aligned(n)
                sizes[s] = max(sizes.get(s, 0), total)
        return sizes, inputs

    @functools.cached_property
    def reporting_stages(self) -> set[int]:
        """The stages whose "done" the coordinator needs: those with a graph output, and those no other stage
        reads (the ends of the pipeline). When they have all finished a micro-batch every stage has (each
        other stage feeds one of them), so its ring slots may be reused."""
        read = {src[1] for rt in self.stage_routing for src in rt if src[0] == "stage"}
        outputs = {src[1] for src in self.split.outputs.values() if src[0] == "stage"}
        return {st.index for st in self.split.stages if st.index not in read or st.index in outputs}

    def _stream(self, batches: list[list]) -> list[list]:
        pool = self._pool
        assert pool is not None
        sizes, input_bytes = self._slot_sizes(batches)
        pool.ensure_rings(self, sizes, input_bytes)
        depth, R = self.depth, len(self.groups)
        index_of = [{n: i for i, n in enumerate(st.outputs)} for st in self.split.stages]
        graph_inputs_of = [[src[1] for src in rt if src[0] == "input"] for rt in self.stage_routing]
        fed = [s for s, rt in enumerate(self.stage_routing) if needs_feed(rt)]
        reporting = sorted(self.reporting_stages)
        results: list[list | None] = [None] * len(batches)
        produced: dict[tuple[int, int], list] = {}     # (seq, reporting stage) -> output descriptors
        done_count = 0
        next_seq = 0
        complete: set[int] = set()
        for w in pool.workers.values():
            w.spans.clear()

        def inject(seq: int) -> None:
            """Write micro-batch ``seq``'s inputs into its slot and feed the stages of its replica that need it."""
            ring = pool.input_ring
            descs = _write_slot(ring.shm.buf, (seq % depth) * ring.slot_bytes, ring.slot_bytes, batches[seq])
            by_name = {name: (("shm", ring.name) + d[1:] if d[0] == "shm" else d)
                       for name, d in zip(self._inputs, descs)}
            for s in fed:
                pool.workers[(seq % R, s)].conn.send(("feed", seq, {n: by_name[n] for n in graph_inputs_of[s]}))

        def finish(seq: int) -> None:
            def stage_value(s: int, name: str):
                d = produced[(seq, s)][index_of[s][name]]
                return np.array(_resolve(d, self._maps), copy=True) if d[0] == "shm" else d[1]

            results[seq] = self.assemble_outputs(batches[seq], stage_value)
            complete.add(seq)
            for s in reporting:
                produced.pop((seq, s), None)

        # the coordinator created every ring: read them through its own mappings
        self._maps = {w.ring.name: w.ring.shm for w in pool.workers.values() if w.ring is not None}
        t_start = time.perf_counter()
        try:
            while done_count < len(batches):
                # inject while the slot's previous occupant is complete (at most `depth` in flight)
                while next_seq < len(batches) and (next_seq < depth or next_seq - depth in complete):
                    inject(next_seq)
                    next_seq += 1
                for (r, s), msg in pool.poll(self, timeout=0.05):
                    w = pool.workers[(r, s)]
                    if msg[0] == "error":
                        raise ExecutionError(f"stage {s} on {w.device}: {msg[2]}")
                    if msg[0] != "done":
                        continue
                    _, seq, descs, seconds, started = msg
                    if w.running is not None and w.running[0] == seq:
                        w.running = None
                    w.spans.append((seq, started, seconds))
                    produced[(seq, s)] = descs
                    if all((seq, t) in produced for t in reporting):
                        finish(seq)
                        done_count += 1
            wall = time.perf_counter() - t_start
            self._collect_spans(pool, reporting)
        finally:
            self._maps = {}
        self.last_stage_seconds = {k: [sec for _, _, sec in w.spans] for k, w in pool.workers.items()}
        self.last_stream = {"batches": len(batches), "seconds": wall, "start": t_start,
                            "spans": {k: sorted(w.spans) for k, w in pool.workers.items()}}
        return results  # type: ignore[return-value]

    def _collect_spans(self, pool: "_Pool", reporting: list[int]) -> None:
        """Ask the stages that report only through heartbeats for their last timings (one round trip)."""
        waiting = {k for k in pool.workers if k[1] not in reporting}
        for k in waiting:
            pool.workers[k].conn.send(("flush",))
        deadline = time.monotonic() + self.hang_timeout
        while waiting and time.monotonic() < deadline:
            for key, msg in pool.poll(self, timeout=0.05):
                if msg[0] == "spans":
                    waiting.discard(key)


__all__ = ["MultiDeviceExecutable", "compile_plan", "is_partitioned", "partition_summary"]
