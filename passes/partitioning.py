"""Partitioning: pipeline stages and data-parallel replicas over several devices, with Send/Recv on cut edges.

Requires ``shapes_inferred``; runs after fusion (it partitions the kernel schedule that will run). Ensures
``partitioned``: every top-level node has ``meta["stage"]`` and ``meta["device"]``, and every value read on a
stage other than its producer's goes through a ``graphc::Send`` (producer's stage) / ``graphc::Recv`` (reader's
stage) pair (graphc/ops/transfer.py). Runs only when more than one device is given (the default pipeline
puts it before memory planning); with one device the graph is untouched.

Rules:

- **devices**: the compile option ``device_spec`` (a :class:`graphc.devices.DeviceSet` as a dict, filled by
  ``graphc.compile`` from ``devices=``), else the names in ``ctx.devices``;
- **costs** (graphc/costmodel.py): a kernel's time on a device is its calibrated roofline plus launch overhead;
  a stage's time is its kernels' time plus the transfers of the tensors it receives and sends (devices that
  overlap copies with compute, GPUs, take the max of the three instead of the sum). A transfer is one message
  per (producer stage, reader stage) pair and micro-batch, as the runtime sends them: the link's latency once,
  plus all the pair's bytes over its bandwidth;
- **chain order**: kernels that read no activation (a ConstantOfShape making a weight) are first moved to just
  before their first reader (:func:`sink_sources`), so that a cut never has to carry what they make across;
- **tensor splitting** runs before this pass (passes/tensor_split.py): kernels too big for a device, or that
  unbalance a stage boundary, arrive here as output-channel slices plus a Concat, ordinary kernels to place;
- **chain DP (exact)**: the kernels, in schedule order, are cut into contiguous stages assigned to the devices
  in order (a device may stay unused). For every range [i, j) the stage cost and memory are precomputed from
  prefix sums and 2-D difference arrays (received bytes, sent bytes, unique weight bytes, peak live bytes); the
  DP ``f[k][j] = min(f[k-1][j], min_i max(f[k-1][i], cost_k[i, j]))`` over ranges that fit in device k's memory
  is exact for that cost: it returns the minimum bottleneck over all contiguous partitions (tested against
  brute force). The lower bound reported next to it is ``max(total / stages, largest kernel)``, where the total
  also counts the latency of the messages any chain of that many stages sends (for unequal devices:
  ``max(1 / sum(1 / total_d), largest kernel on its fastest device)``);
- **memory per device**: weights of its kernels (each weight once per stage that reads it) + the peak of bytes
  live over its steps + its transfer buffers (received and sent tensors), at most ``capacity`` (the device's
  ``memory_bytes``, or the option ``partition_memory_bytes``). After the DP the stages' exact peaks are
  checked by planning each stage's arena (graphc/plan/memory.py); a stage over its cap shrinks that device's
  budget by the excess and the DP runs again (a few rounds), else the pass fails with a DeviceError;
- **DAG refinement**: a cut in the order of a DAG can cut edges that a slightly different stage assignment
  would not. Boundary kernels are moved one at a time to the neighbouring stage when all their producers stay
  at or before, and all their readers at or after, the new stage (so the stage graph stays acyclic); a move is
  kept when it lowers the bottleneck, or keeps it and lowers the bytes cut;
- **replicas and micro-batches**: for D devices every R dividing D is tried (R replicas of S = D / R stages;
  unequal devices: R = 1 only), and, when the graph's inputs and outputs share a symbolic leading (batch) dim
  and ``partition_batch`` B is given, micro-batch sizes m = 1, 2, 4, ... <= B. The choice maximises predicted
  throughput: ``R m / bottleneck`` for a stream of batches (``partition_batch`` None), else
  ``B / (latency + (ceil(B / (R m)) - 1) x bottleneck)``. Ties go to the smaller peak memory.
  ``partition_stages``, ``partition_replicas`` and ``partition_micro_batch`` force a choice;
- **calibration**: ``partition_calibration`` = ``{device name or kind: {"scale": s, "launch_overhead_s": o,
  "kernel_scales": {kernel: ratio}}}`` (from :func:`graphc.costmodel.calibrate`, or measured on this host by
  :func:`graphc.calibration.measure_calibration`; ``"measure"`` asks ``graphc.compile`` to do that first)
  replaces the nominal numbers.

Everything chosen goes into one decision with ``summary=True`` whose ``partition`` entry is
``report()["partition"]``: per device (ops, flops, weights/peak/capacity bytes, compute/transfer/predicted
seconds), the cut tensors (value, bytes, from, to, seconds over the link's bandwidth), bottleneck and lower
bound, predicted throughput (micro-batches per second, and samples per second), latency, the candidates weighed
and why one won; with 2+ devices also ``tensor_split`` (what the tensor-split pass split and why) and, when it
split, ``unsplit_lower_bound_s`` and ``bottleneck_vs_unsplit_lower_bound``: the bound of the graph of whole
kernels, next to ``lower_bound_s``, the bound of the graph partitioned (``lower_bound_basis`` says which).
:func:`split_stages` turns a partitioned graph into one self-contained graph per stage plus the routing
between them (what the runtime in graphc/runtime/multidevice.py runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..costmodel import KernelCost, is_transfer, kernel_costs, kernel_time
from ..devices import Device, DeviceSet, resolve_devices
from ..errors import DeviceError, OptionError
from ..ir.graph import Graph, Node, Value, node_reads
from ..ir.types import TensorType
from .base import Pass, PassContext
from .registry import register_pass

MAX_REFINE_ROUNDS = 64
MEMORY_ROUNDS = 4


# ============================================================================================ graph facts
@dataclass
class _Val:
    name: str
    nbytes: int
    producer: int          # kernel position, -1 for a graph input
    readers: list[int]     # sorted kernel positions reading it (reads inside subgraphs count for the owner)
    output: bool           # a graph output (sent back to the caller)


@dataclass
class Facts:
    """What partitioning needs of a graph at one micro-batch size; positions index ``graph.nodes``."""

    nodes: list[Node]
    kernels: list[KernelCost]
    values: list[_Val]
    weights: list[tuple[int, list[int]]]  # (bytes, sorted reader positions)
    live: np.ndarray                      # bytes of activations live at each step
    bindings: dict[str, int]

    @property
    def n(self) -> int:
        return len(self.nodes)


def _bytes(t: Any, bindings: dict[str, int]) -> int:
    if not isinstance(t, TensorType) or t.shape is None or t.dtype is None:
        return 0
    n = t.dtype.itemsize
    for d in t.shape:
        n *= d if isinstance(d, int) else int(bindings.get(d, 1)) if isinstance(d, str) else 1
    return int(n)


def graph_facts(graph: Graph, bindings: dict[str, int] | None = None) -> Facts:
    bindings = dict(bindings or {})
    nodes = list(graph.nodes)
    pos = {id(n): i for i, n in enumerate(nodes)}
    readers: dict[int, set[int]] = {}
    seen: dict[int, Value] = {}
    for i, node in enumerate(nodes):
        for v in node_reads(node):
            readers.setdefault(id(v), set()).add(i)
            seen[id(v)] = v
    outputs = {id(v) for v in graph.outputs}
    values, weights = [], []
    for vid, v in seen.items():
        if v.is_constant:
            weights.append((int(getattr(v.const, "nbytes", 0)), sorted(readers[vid])))
            continue
        p = pos.get(id(v.producer), -1) if v.producer is not None else -1
        values.append(_Val(v.name, _bytes(v.type, bindings), p, sorted(readers[vid]), vid in outputs))
    for node in nodes:  # values nobody reads: graph outputs, or dead outputs (live at their producer only)
        for v in node.outputs:
            if v is not None and id(v) not in seen:
                values.append(_Val(v.name, _bytes(v.type, bindings), pos[id(node)], [], id(v) in outputs))
    n = len(nodes)
    diff = np.zeros(n + 1, np.float64)
    for v in values:
        start = max(v.producer, 0)
        end = n - 1 if v.output else max(v.readers[-1] if v.readers else start, start)
        diff[start] += v.nbytes
        diff[end + 1] -= v.nbytes
    live = np.cumsum(diff)[:n]
    return Facts(nodes, kernel_costs(graph, bindings), values, weights, live, bindings)


def sink_sources(graph: Graph) -> bool:
    """Move every kernel that reads no activation (a ``ConstantOfShape`` making a weight, say) to just before its
    first reader in ``graph.nodes``; returns whether the order changed.

    The chain DP cuts the schedule order into contiguous stages. A generator scheduled at the start but read
    at the end would have its output cross every cut in between (a 302 MB weight made by a ConstantOfShape in
    the light ZFNet), which forces both onto one stage; next to its reader the cut can fall before it."""
    nodes = list(graph.nodes)
    pos = {id(n): i for i, n in enumerate(nodes)}
    first_reader: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for v in node_reads(node):
            if v.producer is not None and id(v.producer) in pos:
                first_reader.setdefault(id(v.producer), i)
    sources = {id(n) for n in nodes if id(n) in first_reader and not n.subgraphs()
               and all(v.is_constant for v in node_reads(n))}
    if not sources:
        return False
    order: list[Node] = []
    waiting: dict[int, list[Node]] = {}
    for n in nodes:
        if id(n) in sources:
            waiting.setdefault(first_reader[id(n)], []).append(n)
    for i, n in enumerate(nodes):
        if id(n) in sources:
            continue
        order.extend(waiting.pop(i, []))
        order.append(n)
    for rest in waiting.values():  # a source read only by another source: keep it before that one's place
        order.extend(rest)
    changed = [id(n) for n in order] != [id(n) for n in nodes]
    if changed:
        graph.nodes = order
        graph.topological_sort()  # stable: a no-op unless a source fed another source
    return changed


# ============================================================================================ range tables
@dataclass
class RangeTables:
    """For every stage range [i, j) of the kernel order (arrays indexed [i, j], 0 <= i < j <= n): bytes received,
    bytes sent, unique weight bytes, peak live bytes."""

    received: np.ndarray
    sent: np.ndarray
    weights: np.ndarray
    live: np.ndarray


def _rect(d: np.ndarray, i0: int, i1: int, j0: int, j1: int, b: float) -> None:
    """Add ``b`` on the rectangle i in [i0, i1], j in [j0, j1] of a 2-D difference array."""
    if i0 > i1 or j0 > j1 or not b:
        return
    d[i0, j0] += b
    d[i0, j1 + 1] -= b
    d[i1 + 1, j0] -= b
    d[i1 + 1, j1 + 1] += b


def _integrate(d: np.ndarray) -> np.ndarray:
    return np.cumsum(np.cumsum(d, axis=0), axis=1)[:-1, :-1]


def _first_read_rects(d: np.ndarray, b: float, after: int, readers: list[int], n: int) -> None:
    """A tensor made at position ``after`` (-1: outside) counts for [i, j) when i > after and a reader is in
    [i, j): for i in (r_{k-1}, r_k] the first reader at or after i is r_k, so it counts for j > r_k."""
    prev = after
    for r in readers:
        if r <= after:
            continue
        _rect(d, prev + 1, r, r + 1, n, b)
        prev = r


def range_tables(f: Facts) -> RangeTables:
    n = f.n
    shape = (n + 2, n + 2)
    rec, sent, w = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for v in f.values:
        _first_read_rects(rec, v.nbytes, v.producer, v.readers, n)
        if v.producer >= 0:
            last = n if v.output else (v.readers[-1] if v.readers else v.producer)
            # sent when the stage holds the producer (i <= p < j) and a reader lies at or beyond j (j <= last)
            _rect(sent, 0, v.producer, v.producer + 1, last, v.nbytes)
    for b, readers in f.weights:
        _first_read_rects(w, b, -1, readers, n)
    live = np.zeros((n + 1, n + 1))
    for i in range(n):
        live[i, i + 1:] = np.maximum.accumulate(f.live[i:])
    return RangeTables(_integrate(rec), _integrate(sent), _integrate(w), live)


# ============================================================================================ chain DP
def chain_partition(costs: list[np.ndarray], feasible: list[np.ndarray] | None = None
                    ) -> tuple[float, list[tuple[int, int, int]]] | None:
    """Exact min-max partition of positions 0..n into contiguous ranges on devices 0..S-1 in order.

    ``costs[k][i, j]`` is the cost of range [i, j) on device k (only i < j is read), ``feasible[k][i, j]``
    whether it fits there. Devices may stay unused. Returns (bottleneck, [(device k, i, j), ...]) or None when
    no partition is feasible. O(S n^2) time."""
    n = costs[0].shape[0] - 1
    upper = np.triu(np.ones((n + 1, n + 1), bool), 1)
    f = np.full(n + 1, np.inf)
    f[0] = 0.0
    back = []
    for k, cost in enumerate(costs):
        ok = upper if feasible is None else upper & feasible[k]
        c = np.where(ok, cost, np.inf)
        m = np.maximum(f[:, None], c)
        best_i = m.argmin(axis=0)
        best = m[best_i, np.arange(n + 1)]
        take = best < f  # on a tie, leave device k unused (fewer stages, fewer transfers)
        back.append((take, best_i))
        f = np.where(take, best, f)
    if not np.isfinite(f[n]):
        return None
    ranges, j = [], n
    for k in range(len(costs) - 1, -1, -1):
        take, best_i = back[k]
        if j > 0 and take[j]:
            i = int(best_i[j])
            ranges.append((k, i, j))
            j = i
    assert j == 0, "chain DP backtrack did not reach the start"
    return float(f[n]), ranges[::-1]


# ============================================================================================ evaluation
@dataclass
class StageEval:
    stage: int
    device: str
    kernels: list[int]
    flops: float = 0.0
    compute_s: float = 0.0
    in_s: float = 0.0
    out_s: float = 0.0
    in_bytes: int = 0
    out_bytes: int = 0
    weights_bytes: int = 0
    live_bytes: int = 0
    peak_bytes: int = 0       # estimate until the exact check replaces it
    time_s: float = 0.0


@dataclass
class Evaluation:
    stages: list[StageEval]
    cuts: list[dict]
    bottleneck_s: float
    cut_bytes: int

    @property
    def latency_s(self) -> float:
        return sum(s.time_s for s in self.stages)


class Model:
    """Kernel times per device and the evaluation of a stage assignment, for one micro-batch size."""

    def __init__(self, facts: Facts, devset: DeviceSet):
        self.f = facts
        self.devset = devset
        self._times: dict[str, tuple[dict, np.ndarray]] = {}
        n = facts.n
        self.preds: list[set[int]] = [set() for _ in range(n)]
        self.succs: list[set[int]] = [set() for _ in range(n)]
        for v in facts.values:
            if v.producer >= 0:
                for r in v.readers:
                    if r != v.producer:
                        self.preds[r].add(v.producer)
                        self.succs[v.producer].add(r)
        self._tables: RangeTables | None = None

    def times(self, device: Device) -> np.ndarray:
        # a measured calibration's per-kernel table is keyed by identity (the entry keeps it alive, so the id is
        # not reused): spelling out hundreds of ratios on every call cost a fifth of ResNet-50's compile
        key = repr((device.peak_flops, device.memory_bandwidth, device.scale, device.launch_overhead_s,
                    id(device.kernel_scales)))
        hit = self._times.get(key)
        if hit is None:
            hit = self._times[key] = (device.kernel_scales,
                                      np.array([kernel_time(k, device) for k in self.f.kernels]))
        return hit[1]

    @property
    def tables(self) -> RangeTables:
        if self._tables is None:
            self._tables = range_tables(self.f)
        return self._tables

    def stage_matrices(self, devices: list[Device], caps: list[float]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per device k in pipeline order: cost[i, j] and fits[i, j] of range [i, j) on it."""
        t = self.tables
        costs, fits = [], []
        mem = t.weights + t.live + t.received + t.sent
        for k, dev in enumerate(devices):
            prefix = np.concatenate([[0.0], np.cumsum(self.times(dev))])
            compute = prefix[None, :] - prefix[:, None]
            src = devices[k - 1].name if k > 0 else "host"
            dst = devices[k + 1].name if k + 1 < len(devices) else "host"
            lin, lout = self.devset.link(src, dev.name), self.devset.link(dev.name, dst)
            rin = t.received / lin.bandwidth + lin.latency_s * (t.received > 0)
            rout = t.sent / lout.bandwidth + lout.latency_s * (t.sent > 0)
            cost = np.maximum(np.maximum(compute, rin), rout) if dev.overlaps_transfers else compute + rin + rout
            costs.append(cost)
            fits.append(mem <= caps[k])
        return costs, fits

    def evaluate(self, assign: list[int], devices: list[Device]) -> Evaluation:
        """Exact cost of ``assign`` (stage per kernel) with stage s on ``devices[s]``: transfers over the real
        link of each (producer stage, reader stage) pair, weights counted once per stage reading them."""
        f = self.f
        stages = [StageEval(s, d.name, []) for s, d in enumerate(devices)]
        times = [self.times(d) for d in devices]
        for i, s in enumerate(assign):
            st = stages[s]
            st.kernels.append(i)
            st.compute_s += float(times[s][i])
            st.flops += f.kernels[i].flops
            st.live_bytes = max(st.live_bytes, int(f.live[i]))
        cuts, cut_bytes = [], 0
        pair_bytes: dict[tuple[int, int], int] = {}
        for v in f.values:
            src = assign[v.producer] if v.producer >= 0 else -1
            dsts = {assign[r] for r in v.readers} - {src}
            if v.output and src >= 0:
                dsts.add(-1)
            for dst in sorted(dsts):
                if src == -1 and dst == -1:
                    continue
                pair_bytes[(src, dst)] = pair_bytes.get((src, dst), 0) + v.nbytes
                if src >= 0 and dst >= 0:
                    a, b = devices[src].name, devices[dst].name
                    cut_bytes += v.nbytes
                    cuts.append({"value": v.name, "bytes": v.nbytes, "from_stage": src, "to_stage": dst,
                                 "from": a, "to": b, "seconds": v.nbytes / self.devset.link(a, b).bandwidth})
        # One message per (producer stage, reader stage) and micro-batch carries all its tensors (the runtime
        # sends a stage one "run" with every input and gets one "done" with every output), so the link's
        # latency is paid once per pair, its bandwidth per byte: the range costs of the chain DP count the same.
        for (src, dst), nbytes in pair_bytes.items():
            a = devices[src].name if src >= 0 else "host"
            b = devices[dst].name if dst >= 0 else "host"
            secs = self.devset.link(a, b).time(nbytes)
            if src >= 0:
                stages[src].out_s += secs
                stages[src].out_bytes += nbytes
            if dst >= 0:
                stages[dst].in_s += secs
                stages[dst].in_bytes += nbytes
        for b, readers in f.weights:
            for s in {assign[r] for r in readers}:
                stages[s].weights_bytes += b
        for st, dev in zip(stages, devices):
            if dev.overlaps_transfers:
                st.time_s = max(st.compute_s, st.in_s, st.out_s)
            else:
                st.time_s = st.compute_s + st.in_s + st.out_s
            st.peak_bytes = st.weights_bytes + st.live_bytes + st.in_bytes + st.out_bytes
        used = [s for s in stages if s.kernels]
        return Evaluation(stages, cuts, float(max((s.time_s for s in used), default=0.0)), cut_bytes)

    def lower_bound(self, devices: list[Device]) -> float:
        """max(total / stages, largest kernel); for unequal devices the harmonic total and fastest largest.

        ``total`` is the kernels' time plus, on devices that do not overlap copies with compute, the transfers
        every partition pays: graph inputs in from the caller and graph outputs back to it, and the latency of
        the messages between stages that any pipeline of that many stages sends (equal devices)."""
        per = [self.times(d) for d in devices]
        largest = float(np.max(np.min(np.stack(per), axis=0))) if self.f.n else 0.0
        totals = [float(t.sum()) + self._host_io(d) for t, d in zip(per, devices)]
        if len(set(totals)) == 1:
            # k stages in a chain exchange at least k - 1 messages per micro-batch, each paid by its sender and
            # its receiver (devices that overlap copies with compute excepted): the best k of them bounds it
            handoff = 0.0 if devices[0].overlaps_transfers or len(devices) < 2 else min(
                self.devset.link(a.name, b.name).latency_s for a, b in zip(devices, devices[1:]))
            share = min((totals[0] + 2 * (k - 1) * handoff) / k for k in range(1, len(devices) + 1))
        else:
            share = 1.0 / sum(1.0 / t for t in totals if t > 0) if any(totals) else 0.0
        return max(share, largest)

    def _host_io(self, device: Device) -> float:
        if device.overlaps_transfers:
            return 0.0
        into, back = self.devset.link("host", device.name), self.devset.link(device.name, "host")
        # one message each way per micro-batch (see evaluate)
        return (into.time(sum(v.nbytes for v in self.f.values if v.producer < 0 and v.readers))
                + back.time(sum(v.nbytes for v in self.f.values if v.producer >= 0 and v.output)))

    def refine(self, assign: list[int], devices: list[Device], caps: list[float]) -> tuple[list[int], int]:
        """Move boundary kernels between neighbouring stages while it helps; the stage graph stays acyclic."""
        best = self.evaluate(assign, devices)
        moves = 0
        for _ in range(MAX_REFINE_ROUNDS):
            used = sorted({s for s in assign})
            candidates = []
            for a, b in zip(used, used[1:]):
                for i, s in enumerate(assign):
                    if s == a and all(assign[r] >= b for r in self.succs[i]):
                        candidates.append((i, b))
                    elif s == b and all(assign[p] <= a for p in self.preds[i]):
                        candidates.append((i, a))
            improved = None
            for i, target in candidates:
                trial = list(assign)
                trial[i] = target
                if not any(trial[j] == assign[i] for j in range(len(trial))):
                    continue  # never empty a stage: that is the DP's call
                ev = self.evaluate(trial, devices)
                if any(st.peak_bytes > cap for st, cap in zip(ev.stages, caps) if st.kernels):
                    continue
                ref = improved[1] if improved else best
                tol = 1e-9 * max(ref.bottleneck_s, 1e-30)
                if (ev.bottleneck_s < ref.bottleneck_s - tol
                        or (ev.bottleneck_s <= ref.bottleneck_s + tol and ev.cut_bytes < ref.cut_bytes)):
                    improved = (trial, ev)
            if improved is None:
                break
            assign, best = improved
            moves += 1
        return assign, moves


# ============================================================================================ choice
@dataclass
class Choice:
    stages: int
    replicas: int
    micro_batch: int | None
    devices: list[Device]               # the pipeline of replica 0, one per used stage
    groups: list[list[str]]             # per replica, the device of each stage
    assign: list[int]
    evaluation: Evaluation
    lower_bound_s: float
    throughput: float                   # samples (or batches) per second, the objective
    model: Model
    group: list[Device]                 # the devices the DP could use (replica 0), and their memory budgets
    budgets: list[float]
    refine_moves: int = 0
    notes: list[str] = field(default_factory=list)


def _batch_symbol(graph: Graph) -> str | None:
    """The symbol that is the leading dim of every graph input and output (the batch), if there is one."""
    dims = set()
    for v in list(graph.inputs) + list(graph.outputs):
        t = v.type
        if v.is_constant:
            continue
        if not isinstance(t, TensorType) or not t.shape or not isinstance(t.shape[0], str):
            return None
        dims.add(t.shape[0])
    return dims.pop() if len(dims) == 1 else None


def _throughput(ev: Evaluation, replicas: int, m: int, batch: int | None) -> float:
    if ev.bottleneck_s <= 0:
        return math.inf
    if batch is None:
        return replicas * m / ev.bottleneck_s
    micro = math.ceil(batch / (replicas * m))
    return batch / (ev.latency_s + (micro - 1) * ev.bottleneck_s)


def _apply_calibration(devset: DeviceSet, calibration: Any) -> DeviceSet:
    if not calibration:
        return devset
    if not isinstance(calibration, dict):
        raise OptionError("partition_calibration must map device names or kinds to {'scale', 'launch_overhead_s'}")
    from dataclasses import replace

    devices = []
    for d in devset.devices:
        entry = calibration.get(d.name, calibration.get(d.kind))
        if entry is not None:
            if not isinstance(entry, dict) or not float(entry.get("scale", 1.0)) > 0:
                raise OptionError(f"partition_calibration[{d.name!r}] must be a dict with a positive 'scale'")
            own = entry.get("kernel_scales") or {}
            if not isinstance(own, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in own.values()):
                raise OptionError(f"partition_calibration[{d.name!r}]['kernel_scales'] must map kernel names to "
                                  f"positive ratios (measured / roofline)")
            d = replace(d, scale=float(entry.get("scale", 1.0)),
                        launch_overhead_s=float(entry.get("launch_overhead_s", d.launch_overhead_s)),
                        kernel_scales={str(k): float(v) for k, v in own.items()})
        devices.append(d)
    return DeviceSet(devices, devset.intra_host_link, devset.inter_host_link, devset.host_link, devset.links,
                     devset.source)


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def choose_partition(graph: Graph, devset: DeviceSet, *, caps: list[float] | None = None, batch: int | None = None,
                     stages: int | None = None, replicas: int | None = None, micro_batch: int | None = None,
                     refine: bool = True, exact_memory: Callable[[Choice], list[int]] | None = None) -> Choice:
    """Weigh (replicas x stages x micro-batch) configurations; return the one with the best predicted throughput.

    ``caps``: memory per device (default: each device's capacity). ``exact_memory(choice)`` (optional) gives
    the exact peak bytes per stage of a choice; stages over their cap make the DP rerun with less memory."""
    D = len(devset)
    caps = list(caps) if caps is not None else [float(d.memory_bytes) for d in devset.devices]
    symbol = _batch_symbol(graph)
    if micro_batch is not None and symbol is None:
        raise OptionError("partition_micro_batch needs a model whose inputs and outputs share a symbolic batch dim")
    if micro_batch is not None:
        sizes = [micro_batch]
    elif symbol is not None and batch:
        sizes = sorted({2 ** k for k in range(int(math.log2(batch)) + 1)} | {batch})
    else:
        sizes = [1]
    if replicas is not None and D % replicas:
        raise OptionError(f"partition_replicas={replicas} does not divide the {D} devices")
    if stages is not None and stages > D:
        raise OptionError(f"partition_stages={stages} is more than the {D} devices")
    options = [r for r in range(1, D + 1) if D % r == 0] if devset.homogeneous else [1]
    if replicas is not None:
        options = [replicas]
    if stages is not None:
        options = [r for r in options if D // r >= stages] or [1]
    models: dict[int, Model] = {}
    best: Choice | None = None
    weighed: list[dict] = []
    for r in options:
        s_count = stages if stages is not None else D // r
        group = devset.devices[:s_count]
        for m in sizes:
            bindings = {symbol: m} if symbol else {}
            model = models.get(m)
            if model is None:
                model = models[m] = Model(graph_facts(graph, bindings), devset)
            # a micro-batch size is a choice only when the batch is symbolic and a batch size was given
            chosen_m = m if symbol and (batch or micro_batch) else None
            choice = _partition_one(model, group, caps[:s_count], r, chosen_m, batch, devset,
                                    force_all=stages is not None, refine=refine)
            entry = {"replicas": r, "stages": s_count, "micro_batch": chosen_m}
            if choice is None:
                weighed.append({**entry, "feasible": False})
                continue
            weighed.append({**entry, "feasible": True, "bottleneck_s": choice.evaluation.bottleneck_s,
                            "throughput": choice.throughput,
                            "peak_bytes": max(s.peak_bytes for s in choice.evaluation.stages)})
            if best is None or _better(choice, best):
                best = choice
    if best is None:
        need = graph_facts(graph, {}).weights
        total = sum(b for b, _ in need)
        raise DeviceError(f"the model does not fit on {D} device(s) with at most "
                          f"{max(caps) / 2**30:.2f} GiB each (weights alone are {total / 2**30:.2f} GiB, and every "
                          "stage also needs its activations); give more devices or devices with more memory")
    # the exact memory check (arena per stage) and, if a stage is over, a rerun with tighter budgets
    if exact_memory is not None:
        cap_of = dict(zip(devset.names, caps))
        for round_ in range(MEMORY_ROUNDS + 1):
            peaks = exact_memory(best)
            for st, p in zip(best.evaluation.stages, peaks):
                st.peak_bytes = p
            over = {d.name: p - cap_of[d.name] for d, p in zip(best.devices, peaks) if p > cap_of[d.name]}
            if not over or round_ == MEMORY_ROUNDS:
                break
            budgets = [b - over.get(d.name, 0) for d, b in zip(best.group, best.budgets)]
            retry = _partition_one(best.model, best.group, budgets, best.replicas, best.micro_batch, batch, devset,
                                   force_all=stages is not None, refine=refine)
            if retry is None:
                break
            retry.notes.append("re-partitioned: the planned arena of a stage put it over its device's memory")
            best = retry
        if over:
            name, excess = max(over.items(), key=lambda kv: kv[1])
            raise DeviceError(f"no partition over {D} device(s) keeps every stage within its memory: the stage on "
                              f"{name} needs {int(cap_of[name] + excess):,} bytes, the device holds "
                              f"{int(cap_of[name]):,}; give more devices or devices with more memory")
    best.notes.append("candidates: " + "; ".join(
        f"{w['replicas']}x{w['stages']}" + (f" m={w['micro_batch']}" if w["micro_batch"] else "")
        + (f": {w['throughput']:.4g}/s" if w["feasible"] else ": does not fit") for w in weighed))
    best.notes.insert(0, f"chose {best.replicas} replica(s) x {best.stages} stage(s)"
                      + (f", micro-batch {best.micro_batch}" if best.micro_batch else "")
                      + f": the highest predicted throughput ({best.throughput:.4g}/s)")
    best.weighed = weighed  # type: ignore[attr-defined]
    return best


def _better(a: Choice, b: Choice) -> bool:
    if a.throughput > b.throughput * (1 + 1e-9):
        return True
    if a.throughput < b.throughput * (1 - 1e-9):
        return False
    return max(s.peak_bytes for s in a.evaluation.stages) < max(s.peak_bytes for s in b.evaluation.stages)


def _partition_one(model: Model, group: list[Device], caps: list[float], replicas: int, m: int | None,
                   batch: int | None, devset: DeviceSet, force_all: bool = False, refine: bool = True
                   ) -> Choice | None:
    n = model.f.n
    costs, fits = model.stage_matrices(group, caps)
    result = chain_partition(costs, fits)
    if result is None:
        return None
    _, ranges = result
    if force_all and len(ranges) < len(group) and n >= len(group):
        # partition_stages=S asks for S stages: take the best with every device used
        forced = _chain_all_used(costs, fits)
        if forced is not None:
            ranges = forced
    used = [k for k, _, _ in ranges]
    devices = [group[k] for k in used]
    assign = [0] * n
    for s, (_, i, j) in enumerate(ranges):
        for p in range(i, j):
            assign[p] = s
    moves = 0
    stage_caps = [caps[k] for k in used]
    if refine and len(devices) > 1:
        assign, moves = model.refine(assign, devices, stage_caps)
    ev = model.evaluate(assign, devices)
    lb = model.lower_bound(group)
    groups = [[devset.devices[r * len(group) + k].name for k in used] for r in range(replicas)]
    return Choice(len(devices), replicas, m, devices, groups, assign, ev, lb,
                  _throughput(ev, replicas, m or 1, batch), model, group, list(caps), moves)


def _chain_all_used(costs: list[np.ndarray], fits: list[np.ndarray]) -> list[tuple[int, int, int]] | None:
    """The chain DP where every device takes a non-empty range (for a forced stage count)."""
    n = costs[0].shape[0] - 1
    upper = np.triu(np.ones((n + 1, n + 1), bool), 1)
    f = np.full(n + 1, np.inf)
    f[0] = 0.0
    back = []
    for cost, ok in zip(costs, fits):
        c = np.where(upper & ok, cost, np.inf)
        m = np.maximum(f[:, None], c)
        bi = m.argmin(axis=0)
        f = m[bi, np.arange(n + 1)]
        back.append(bi)
    if not np.isfinite(f[n]):
        return None
    ranges, j = [], n
    for k in range(len(costs) - 1, -1, -1):
        i = int(back[k][j])
        ranges.append((k, i, j))
        j = i
    return ranges[::-1]


# ============================================================================================ stage split
@dataclass
class StageGraph:
    """One stage as a self-contained graph document (graphc/ir/serialize.py format) and its weights."""

    index: int
    doc: dict
    weights: dict[str, np.ndarray]
    inputs: list[str]     # the stage graph's inputs, in order
    outputs: list[str]    # its outputs, in order


@dataclass
class StageSplit:
    stages: list[StageGraph]
    #: stage input (stage, name) -> where it comes from: ("input", graph input name) or ("stage", s, value name)
    sources: dict[tuple[int, str], tuple]
    #: graph output name -> ("stage", s, value name) | ("input", name) | ("const", name)
    outputs: dict[str, tuple]


def _weight_refs(doc: Any, out: set[str]) -> None:
    if isinstance(doc, dict):
        if "$w" in doc and len(doc) == 1:
            out.add(doc["$w"])
        for v in doc.values():
            _weight_refs(v, out)
    elif isinstance(doc, list):
        for v in doc:
            _weight_refs(v, out)


def split_stages(graph: Graph, stage_of: Callable[[Node], int] | None = None) -> StageSplit:
    """One graph per stage, and the routing between them.

    ``stage_of`` gives each top-level node's stage (default: ``node.meta["stage"]``). Send/Recv nodes are not
    part of any stage graph: a Recv's output is an input of its stage, fed from the value its Send reads.
    Without Send/Recv (a trial assignment) values read across stages are routed directly."""
    from ..ir.serialize import graph_to_json, type_to_json

    stage_of = stage_of or (lambda node: int(node.meta["stage"]))
    doc, weights = graph_to_json(graph)
    if len(doc["nodes"]) != len(graph.nodes):
        raise AssertionError("serialized graph lost nodes")
    count = 1 + max((stage_of(n) for n in graph.nodes if not is_transfer(n)), default=0)
    members: list[list[int]] = [[] for _ in range(count)]
    for i, node in enumerate(graph.nodes):
        if not is_transfer(node):
            members[stage_of(node)].append(i)
    producer_stage = {}
    for node in graph.nodes:
        if not is_transfer(node):
            for o in node.outputs:
                if o is not None:
                    producer_stage[id(o)] = stage_of(node)
    sources: dict[tuple[int, str], tuple] = {}
    stage_inputs: list[dict[str, Value]] = [dict() for _ in range(count)]
    needed_out: list[dict[str, None]] = [dict() for _ in range(count)]
    consts: list[dict[str, Value]] = [dict() for _ in range(count)]
    for s, idx in enumerate(members):
        for i in idx:
            for v in node_reads(graph.nodes[i]):
                if v.is_constant:
                    if v.graph is graph or v.name in graph.initializers:
                        consts[s][v.name] = v
                    continue
                p = v.producer
                if p is None:
                    if v.graph is graph and v in graph.inputs:
                        stage_inputs[s][v.name] = v
                        sources[(s, v.name)] = ("input", v.name)
                    continue  # a subgraph's own input: not a stage boundary
                if p.graph is not graph:
                    continue  # produced inside a subgraph of this node
                if p.domain == "graphc" and p.op_type == "Recv":
                    send = p.inputs[0].producer
                    origin = send.inputs[0]
                    src = producer_stage[id(origin)]
                    stage_inputs[s][v.name] = v
                    sources[(s, v.name)] = ("stage", src, origin.name)
                    needed_out[src][origin.name] = None
                elif producer_stage.get(id(v), s) != s:
                    src = producer_stage[id(v)]
                    stage_inputs[s][v.name] = v
                    sources[(s, v.name)] = ("stage", src, v.name)
                    needed_out[src][v.name] = None
    outputs: dict[str, tuple] = {}
    for v in graph.outputs:
        if v.is_constant:
            outputs[v.name] = ("const", v.name)
        elif v.producer is None:
            outputs[v.name] = ("input", v.name)
        else:
            s = producer_stage[id(v)]
            outputs[v.name] = ("stage", s, v.name)
            needed_out[s][v.name] = None
    stages = []
    for s, idx in enumerate(members):
        nodes = [doc["nodes"][i] for i in idx]
        inits = [e for e in doc["initializers"] if e["name"] in consts[s]]
        sdoc = {"name": f"{doc['name']}_stage{s}", "opsets": doc["opsets"],
                "inputs": [{"name": v.name, "type": type_to_json(v.type)} for v in stage_inputs[s].values()],
                "initializers": inits, "nodes": nodes, "outputs": list(needed_out[s])}
        refs: set[str] = set()
        _weight_refs(inits, refs)
        _weight_refs(nodes, refs)
        stages.append(StageGraph(s, sdoc, {w: weights[w] for w in sorted(refs)}, list(stage_inputs[s]),
                                 list(needed_out[s])))
    return StageSplit(stages, sources, outputs)


def stage_graph(stage: StageGraph) -> Graph:
    from ..ir.serialize import graph_from_json

    return graph_from_json(stage.doc, stage.weights)


def exact_stage_peaks(graph: Graph, choice: Choice) -> list[int]:
    """Each stage's weights + planned arena + its inputs and outputs, from the stage graphs themselves."""
    from ..plan.memory import ALIGNMENT
    from .memory_planning import plan_memory

    position = {id(n): i for i, n in enumerate(graph.nodes)}
    split = split_stages(graph, lambda node: choice.assign[position[id(node)]])
    bindings = choice.model.f.bindings
    peaks = []
    for st in split.stages:
        g = stage_graph(st)
        plan, _, _ = plan_memory(g, bindings=bindings, reorder=True)
        io = sum(-(-_bytes(v.type, bindings) // ALIGNMENT) * ALIGNMENT for v in list(g.inputs) + list(g.outputs))
        w = sum(int(getattr(v.const, "nbytes", 0)) for v in g.initializers.values())
        peaks.append(int(w + plan.arena_bytes + io))
    return peaks


# ============================================================================================ rewrite
def insert_transfers(graph: Graph, assign: list[int], devices: list[str]) -> list[Node]:
    """Set meta["stage"]/["device"] on every kernel and put a Send/Recv pair on every value read on another
    stage than its producer's (one pair per reading stage). Returns the new transfer nodes. The schedule
    becomes: per stage, its Recvs, its kernels in their old order, its Sends."""
    nodes = list(graph.nodes)
    stage = {id(n): s for n, s in zip(nodes, assign)}
    for n, s in zip(nodes, assign):
        n.meta["stage"] = s
        n.meta["device"] = devices[s]
    owner: dict[int, Node] = {}  # graph of a subgraph -> its top-level node

    def mark(g: Graph, top: Node) -> None:
        owner[id(g)] = top
        for inner in g.nodes:
            for sub in inner.subgraphs():
                mark(sub, top)

    for n in nodes:
        for sub in n.subgraphs():
            mark(sub, n)

    def top_of(user: Node) -> Node:
        return user if user.graph is graph else owner[id(user.graph)]

    transfers: list[Node] = []
    order_key: dict[int, tuple] = {id(n): (s, 1, i) for i, (n, s) in enumerate(zip(nodes, assign))}
    for i, n in enumerate(nodes):
        src = stage[id(n)]
        for v in n.outputs:
            if v is None:
                continue
            by_stage: dict[int, list[tuple[Node, int]]] = {}
            for user, idx in list(v.uses):
                top = top_of(user)
                t = stage[id(top)]
                if t != src:
                    by_stage.setdefault(t, []).append((user, idx))
            for t in sorted(by_stage):
                attrs = {"src": devices[src], "dst": devices[t], "src_stage": src, "dst_stage": t}
                wire = graph.fresh_name(f"{v.name}@to{t}")
                send = graph.add_node("Send", [v], domain="graphc", attrs=attrs, name=graph.fresh_name(f"send_{wire}"),
                                      output_names=[wire])
                recv = graph.add_node("Recv", [send.outputs[0]], domain="graphc", attrs=attrs,
                                      name=graph.fresh_name(f"recv_{wire}"),
                                      output_names=[graph.fresh_name(f"{v.name}@stage{t}")])
                send.outputs[0].type = v.type
                recv.outputs[0].type = v.type
                send.meta.update(stage=src, device=devices[src])
                recv.meta.update(stage=t, device=devices[t])
                for user, idx in by_stage[t]:
                    user.set_input(idx, recv.outputs[0])
                order_key[id(send)] = (src, 2, i)
                order_key[id(recv)] = (t, 0, i)
                transfers += [send, recv]
    graph.nodes = sorted(graph.nodes, key=lambda n: order_key[id(n)])
    return transfers


# ============================================================================================ the pass
def _tensor_split_entry(ctx: PassContext, summary: dict) -> dict:
    """What the tensor-split pass did (passes/tensor_split.py), for ``report()["partition"]``: its summary under
    ``tensor_split``, and when it split kernels the lower bound of the graph before the split (whole kernels)
    next to ``lower_bound_s``, which is the bound of the graph partitioned (its slices are its kernels)."""
    entries = [d.data["tensor_split"] for d in ctx.decisions_of("tensor_split") if d.data.get("summary")]
    if not entries:
        return {}
    split = entries[-1]
    out: dict[str, Any] = {"tensor_split": split,
                           "lower_bound_basis": "the graph partitioned (tensor-split kernels count as their slices)"
                           if split.get("split") else "the graph partitioned (no kernel was split)"}
    unsplit = split.get("unsplit_lower_bound_s")
    if split.get("split") and unsplit:
        out["unsplit_lower_bound_s"] = unsplit
        out["bottleneck_vs_unsplit_lower_bound"] = summary["bottleneck_s"] / unsplit
    return out


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


@dataclass
class PartitionRequest:
    """What the compile options ask of a partition: the devices, each one's memory budget, and the forced or
    weighed choices (keyword arguments of :func:`choose_partition`)."""

    devset: DeviceSet
    caps: list[float]
    kwargs: dict[str, Any]


def partition_request(ctx: PassContext) -> PartitionRequest | None:
    """The partition the options of ``ctx`` ask for, or None with one device (nothing to partition).

    Shared by this pass and the tensor-split pass (passes/tensor_split.py), which predicts partitions before
    this pass makes one."""
    names = list(ctx.devices or [])
    spec = ctx.option("device_spec")
    if len(names) <= 1 and not spec:
        return None
    devset = DeviceSet.from_dict(spec, "device_spec") if spec else resolve_devices(names, ctx.target)
    if names and devset.names != names:
        devset = devset.subset(names)
    if len(devset) <= 1:
        return None
    devset = _apply_calibration(devset, ctx.option("partition_calibration"))
    cap = ctx.option("partition_memory_bytes")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0):
        raise OptionError(f"partition_memory_bytes must be a positive number of bytes, got {cap!r}")
    caps = [float(min(d.memory_bytes, cap) if cap else d.memory_bytes) for d in devset.devices]
    kwargs = {"batch": _positive_int(ctx.option("partition_batch"), "partition_batch"),
              "stages": _positive_int(ctx.option("partition_stages"), "partition_stages"),
              "replicas": _positive_int(ctx.option("partition_replicas"), "partition_replicas"),
              "micro_batch": _positive_int(ctx.option("partition_micro_batch"), "partition_micro_batch"),
              "refine": bool(ctx.option("partition_refine", True))}
    return PartitionRequest(devset, caps, kwargs)


@register_pass
class Partitioning(Pass):
    """Partitioning: pipeline stages (exact chain DP + DAG refinement), replicas and micro-batch size over the
    devices given; Send/Recv on every cut edge; every choice in ``report()["partition"]``.

    Requires ``shapes_inferred`` (after fusion); ensures ``partitioned``. Does nothing with one device. See the
    module docstring for the rules.
    """

    name = "partitioning"
    requires = frozenset({"shapes_inferred"})
    ensures = frozenset({"partitioned"})
    options = {"device_spec": None, "partition_memory_bytes": None, "partition_batch": None,
               "partition_stages": None, "partition_replicas": None, "partition_micro_batch": None,
               "partition_calibration": None, "partition_refine": True}

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        request = partition_request(ctx)
        if request is None:
            return False
        if not graph.nodes:
            self.log(ctx, "nothing to partition: the graph has no kernels")
            return False
        devset, caps = request.devset, request.caps
        if sink_sources(graph):
            self.log(ctx, "moved kernels that read no activation next to their first reader (chain order)")
        try:
            choice = choose_partition(graph, devset, caps=caps, **request.kwargs,
                                      exact_memory=lambda c: exact_stage_peaks(graph, c))
        except DeviceError as exc:
            tried = [n for d in ctx.decisions_of("tensor_split") if d.data.get("summary")
                     for n in d.data["tensor_split"].get("notes", [])]
            if tried:
                raise DeviceError(f"{exc}. Tensor splitting was tried: {'; '.join(tried)}") from exc
            raise
        summary = self._summary(graph, choice, devset, caps)
        summary.update(_tensor_split_entry(ctx, summary))
        summary["reasons"] = list(summary["reasons"]) + [
            f"tensor split: {r['kernel']} ({r['op']}) into {r['slices']} slices; {r['reason']}"
            for r in summary.get("tensor_split", {}).get("split", [])]
        insert_transfers(graph, choice.assign, [d.name for d in choice.devices])
        for cut in summary["cut_tensors"][:20]:
            self.log(ctx, f"cut {cut['value']} ({cut['bytes']:,} bytes) from stage {cut['from_stage']} "
                          f"({cut['from']}) to stage {cut['to_stage']} ({cut['to']}): {1e6 * cut['seconds']:.1f} us",
                     **cut)
        ratio = summary["bottleneck_s"] / summary["lower_bound_s"] if summary["lower_bound_s"] else 1.0
        self.log(ctx, f"{choice.replicas} replica(s) x {choice.stages} stage(s): bottleneck "
                      f"{1e3 * summary['bottleneck_s']:.3f} ms = {ratio:.3f} x the lower bound; "
                      f"{len(summary['cut_tensors'])} cut tensor(s), "
                      f"{_mb(sum(c['bytes'] for c in summary['cut_tensors']))} per micro-batch",
                 summary=True, partition=summary)
        return True

    @staticmethod
    def _summary(graph: Graph, c: Choice, devset: DeviceSet, caps: list[float]) -> dict:
        ev = c.evaluation
        cap_of = dict(zip(devset.names, caps))
        per_device = []
        for r, group in enumerate(c.groups):
            for st, name in zip(ev.stages, group):
                per_device.append({
                    "device": name, "replica": r, "stage": st.stage, "ops": len(st.kernels),
                    "kernels": [graph.nodes[i].name for i in st.kernels[:3]] + (["..."] if len(st.kernels) > 3 else []),
                    "flops": int(st.flops), "weights_bytes": int(st.weights_bytes), "peak_bytes": int(st.peak_bytes),
                    "capacity_bytes": int(cap_of[name]), "compute_s": st.compute_s,
                    "transfer_in_s": st.in_s, "transfer_out_s": st.out_s, "predicted_s": st.time_s,
                    "bytes_in": int(st.in_bytes), "bytes_out": int(st.out_bytes)})
        used = {d["device"] for d in per_device}
        lb = c.lower_bound_s
        return {
            "devices": per_device,
            "stages": c.stages, "replicas": c.replicas, "micro_batch": c.micro_batch,
            "batch_symbol": _batch_symbol(graph) if c.micro_batch else None,
            "groups": c.groups,
            "unused_devices": [n for n in devset.names if n not in used],
            "bottleneck_s": ev.bottleneck_s, "lower_bound_s": lb,
            "bottleneck_vs_lower_bound": ev.bottleneck_s / lb if lb else 1.0,
            "predicted_throughput": c.replicas / ev.bottleneck_s if ev.bottleneck_s else math.inf,
            "predicted_samples_per_s": c.replicas * (c.micro_batch or 1) / ev.bottleneck_s if ev.bottleneck_s
            else math.inf,
            "predicted_latency_s": ev.latency_s,
            "objective_throughput": c.throughput,
            "cut_tensors": ev.cuts,
            "refine_moves": c.refine_moves,
            "candidates": getattr(c, "weighed", []),
            "reasons": c.notes,
            "device_spec": devset.source,
            # what the predictions rest on: nominal numbers, or a calibration (partition_calibration)
            "calibration": {d.name: {"scale": d.scale, "launch_overhead_s": d.launch_overhead_s,
                                     "kernels_measured": len(d.kernel_scales)}
                            for d in devset.devices if d.scale != 1.0 or d.kernel_scales},
        }


__all__ = ["Partitioning", "chain_partition", "choose_partition", "graph_facts", "range_tables", "split_stages",
           "stage_graph", "insert_transfers", "Model", "Facts", "StageSplit", "StageGraph", "exact_stage_peaks"]
