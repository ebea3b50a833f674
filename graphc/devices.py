"""The device model: what each device can do, how devices are connected, and how users name them.

A :class:`DeviceSet` is an ordered list of :class:`Device` s (kind, peak FLOP/s per dtype, memory bandwidth and
capacity, per-kernel launch overhead, the host it sits on, the CPU cores it is pinned to) plus the
:class:`Link` s between them: one link kind inside each host (shared memory between local processes, NVLink,
PCIe) and one between hosts (InfiniBand), with optional per-pair overrides.

Ways to name devices (``graphc.compile(devices=...)``, ``--devices``):

- ``"cpu:0,cpu:1"``, ``"cpu:0-1"``, ``"cuda:0-7"``, a list of such names, or a count (``4``): CPU devices are
  single cores of this host (:func:`host_cpu`), CUDA devices H100s in one NVLink node;
- a preset (:data:`PRESETS`): ``host-cpu`` (every core of this host), ``a100``, ``h100``, ``a100x8``,
  ``h100x8`` (one 8-GPU NVLink node, alias ``dgx-h100``), ``h100xN`` / ``a100xN`` with N > 8 (a cluster of
  8-GPU nodes over InfiniBand: ``h100x64`` is 8 nodes);
- a spec file, ``.json`` or ``.toml`` (read with tomllib), with the layout of :meth:`DeviceSet.to_dict`::

      [[devices]]
      name = "cpu:0"            # kind:index, unique
      kind = "cpu"
      peak_flops = { fp32 = 1.65e11 }
      memory_bandwidth = 2.5e10  # bytes/s
      memory_bytes = 12e9
      launch_overhead_s = 2e-6
      host = "local"
      cores = [0]
      [intra_host_link]
      bandwidth = 8e9            # bytes/s per direction
      latency_s = 2e-5
      kind = "shm"

Numbers of the presets are the vendors' dense peaks (A100 SXM 80 GB, H100 SXM 80 GB; NVLink per direction;
InfiniBand NDR, one 400 Gb/s NIC per GPU). The host CPU's peak is nominal (see :func:`host_cpu`): the cost
model's calibration (graphc/costmodel.py) scales it to what the backend at hand really achieves.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import OptionError

GiB = 1024 ** 3


@dataclass
class Device:
    name: str                                # "cpu:0", "cuda:3"
    kind: str                                # "cpu" | "cuda"
    peak_flops: dict[str, float]             # per dtype: "fp32", "fp16", "bf16", "int8"
    memory_bandwidth: float                  # bytes/s
    memory_bytes: int                        # capacity
    launch_overhead_s: float = 2e-6          # fixed cost of one kernel
    host: str = "local"
    cores: list[int] = field(default_factory=list)  # CPU cores a worker for this device is pinned to
    overlaps_transfers: bool = False         # copy engines: transfers run beside compute (GPUs)
    scale: float = 1.0                       # calibration: measured / roofline (graphc.costmodel.calibrate)
    #: per-kernel calibration of one model: kernel name -> its measured time / its roofline time (overrides
    #: ``scale`` for that kernel; graphc.costmodel.calibrate fills it from measured kernel times)
    kernel_scales: dict[str, float] = field(default_factory=dict)

    def peak(self, dtype: str = "fp32") -> float:
        return float(self.peak_flops.get(dtype) or self.peak_flops.get("fp32") or 1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Link:
    bandwidth: float    # bytes/s, one direction
    latency_s: float
    kind: str = "shm"   # "shm" | "nvlink" | "pcie" | "infiniband" | ...

    def time(self, nbytes: int) -> float:
        return self.latency_s + nbytes / self.bandwidth if nbytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- link presets
# Between local worker processes: bytes are copied by one core into a shared-memory ring (8 GB/s); the latency
# is what the local runtime costs per message and micro-batch (pipe messages, Python in the worker and in the
# coordinator, on cores that run stages): measured 0.28 and 0.42 ms per micro-batch beyond the slowest stage in
# 2-stage pipelines (torch:mlp, the Transformer encoder; bench/pipeline_throughput.py), whose stages each
# send or receive two messages per micro-batch
SHM = Link(bandwidth=8e9, latency_s=100e-6, kind="shm")
NVLINK4 = Link(bandwidth=450e9, latency_s=3e-6, kind="nvlink")     # H100: 900 GB/s both directions
NVLINK3 = Link(bandwidth=300e9, latency_s=3e-6, kind="nvlink")     # A100: 600 GB/s both directions
PCIE5 = Link(bandwidth=50e9, latency_s=5e-6, kind="pcie")
INFINIBAND_NDR = Link(bandwidth=50e9, latency_s=5e-6, kind="infiniband")  # 400 Gb/s per GPU
ETHERNET_10G = Link(bandwidth=1.25e9, latency_s=50e-6, kind="ethernet")


@dataclass
class DeviceSet:
    devices: list[Device]
    intra_host_link: Link = field(default_factory=lambda: SHM)
    inter_host_link: Link = field(default_factory=lambda: INFINIBAND_NDR)
    #: host <-> device link for graph inputs and outputs (the caller's process is on the first device's host)
    host_link: Link | None = None
    links: dict[tuple[str, str], Link] = field(default_factory=dict)  # per-pair overrides (both directions)
    source: str = ""

    def __post_init__(self) -> None:
        names = [d.name for d in self.devices]
        if not names:
            raise OptionError("a device set needs at least one device")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise OptionError(f"device name(s) {', '.join(dup)} given twice")

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.devices]

    @property
    def hosts(self) -> list[str]:
        return list(dict.fromkeys(d.host for d in self.devices))

    def __len__(self) -> int:
        return len(self.devices)

    def __getitem__(self, i: int) -> Device:
        return self.devices[i]

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise OptionError(f"no device {name!r} in {', '.join(self.names)}")

    def link(self, a: str, b: str) -> Link:
        """The link from device ``a`` to device ``b`` (``"host"`` is the caller's process)."""
        if a == b:
            return Link(bandwidth=math.inf, latency_s=0.0, kind="local")
        if (a, b) in self.links:
            return self.links[(a, b)]
        if (b, a) in self.links:
            return self.links[(b, a)]
        if "host" in (a, b):
            other = self.device(b if a == "host" else a)
            if self.host_link is not None:
                return self.host_link
            if other.kind == "cpu":
                return self.intra_host_link if other.host == self.devices[0].host else self.inter_host_link
            return PCIE5 if other.host == self.devices[0].host else self.inter_host_link
        da, db = self.device(a), self.device(b)
        return self.intra_host_link if da.host == db.host else self.inter_host_link

    def subset(self, names: list[str]) -> "DeviceSet":
        return DeviceSet([self.device(n) for n in names], self.intra_host_link, self.inter_host_link,
                         self.host_link, dict(self.links), self.source)

    @property
    def homogeneous(self) -> bool:
        first = self.devices[0]
        return all((d.kind, d.peak_flops, d.memory_bandwidth, d.memory_bytes, d.scale, d.launch_overhead_s,
                    d.kernel_scales)
                   == (first.kind, first.peak_flops, first.memory_bandwidth, first.memory_bytes, first.scale,
                       first.launch_overhead_s, first.kernel_scales) for d in self.devices)

    # -- (de)serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"devices": [d.to_dict() for d in self.devices],
                               "intra_host_link": self.intra_host_link.to_dict(),
                               "inter_host_link": self.inter_host_link.to_dict()}
        if self.host_link is not None:
            out["host_link"] = self.host_link.to_dict()
        if self.links:
            out["links"] = [{"a": a, "b": b, **l.to_dict()} for (a, b), l in self.links.items()]
        if self.source:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, doc: Any, where: str = "device spec") -> "DeviceSet":
        if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list) or not doc["devices"]:
            raise OptionError(f"{where}: expected a table with a non-empty list 'devices'")
        devices = [_device_from(d, f"{where}: devices[{i}]") for i, d in enumerate(doc["devices"])]
        links = {}
        for i, entry in enumerate(doc.get("links") or []):
            if not isinstance(entry, dict) or "a" not in entry or "b" not in entry:
                raise OptionError(f"{where}: links[{i}] needs 'a' and 'b' (device names)")
            links[(str(entry["a"]), str(entry["b"]))] = _link_from(entry, f"{where}: links[{i}]")
        out = cls(devices,
                  _link_from(doc["intra_host_link"], f"{where}: intra_host_link") if "intra_host_link" in doc else SHM,
                  _link_from(doc["inter_host_link"], f"{where}: inter_host_link")
                  if "inter_host_link" in doc else INFINIBAND_NDR,
                  _link_from(doc["host_link"], f"{where}: host_link") if doc.get("host_link") else None,
                  links, str(doc.get("source", "")))
        for a, b in links:
            out.device(a), out.device(b)  # both must exist
        return out


def _number(doc: dict, key: str, where: str, default: Any = None, positive: bool = True) -> float:
    value = doc.get(key, default)
    if value is None:
        raise OptionError(f"{where}: missing '{key}'")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and not value > 0):
        raise OptionError(f"{where}: '{key}' must be a positive number, got {value!r}")
    return value


def _device_from(doc: Any, where: str) -> Device:
    if not isinstance(doc, dict):
        raise OptionError(f"{where}: expected a table")
    name = doc.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.-]*:\d+", name):
        raise OptionError(f"{where}: 'name' must look like kind:index (cpu:0, cuda:3), got {name!r}")
    kind = str(doc.get("kind", name.split(":")[0]))
    peaks = doc.get("peak_flops")
    if isinstance(peaks, (int, float)) and not isinstance(peaks, bool):
        peaks = {"fp32": peaks}
    if not isinstance(peaks, dict) or "fp32" not in peaks:
        raise OptionError(f"{where}: 'peak_flops' must be a number or a table with at least fp32")
    for k in list(peaks):
        _number(peaks, k, f"{where}: peak_flops")
    cores = doc.get("cores", [])
    if not isinstance(cores, list) or not all(isinstance(c, int) and c >= 0 for c in cores):
        raise OptionError(f"{where}: 'cores' must be a list of core numbers")
    own = doc.get("kernel_scales") or {}
    if not isinstance(own, dict):
        raise OptionError(f"{where}: 'kernel_scales' must be a table of kernel name -> measured / roofline")
    for k in list(own):
        _number(own, k, f"{where}: kernel_scales")
    return Device(name=name, kind=kind, peak_flops={k: float(v) for k, v in peaks.items()},
                  memory_bandwidth=float(_number(doc, "memory_bandwidth", where)),
                  memory_bytes=int(_number(doc, "memory_bytes", where)),
                  launch_overhead_s=float(_number(doc, "launch_overhead_s", where, 2e-6, positive=False)),
                  host=str(doc.get("host", "local")), cores=list(cores),
                  overlaps_transfers=bool(doc.get("overlaps_transfers", kind != "cpu")),
                  scale=float(_number(doc, "scale", where, 1.0)),
                  kernel_scales={str(k): float(v) for k, v in own.items()})


def _link_from(doc: Any, where: str) -> Link:
    if not isinstance(doc, dict):
        raise OptionError(f"{where}: expected a table with 'bandwidth' and 'latency_s'")
    return Link(float(_number(doc, "bandwidth", where)), float(_number(doc, "latency_s", where, 0.0, False)),
                str(doc.get("kind", "link")))


# ------------------------------------------------------------------------------------------------ this host
#: nominal fp32 FLOP/s of one core: Zen 4 runs AVX-512 on two 256-bit FMA pipes (32 fp32 FLOP/cycle), ~5 GHz
#: boost; this is the "about 165 GFLOP/s per core" figure. AVX2-only cores get the same 32 FLOP/cycle at a
#: lower nominal clock. Calibration replaces the guess with what the backend measures.
CPU_PEAK_PER_CORE = {"avx512f": 165e9, "avx2": 100e9, "": 16e9}
#: one core streams roughly this from DRAM (a documented constant, not measured here: the machine is shared)
CPU_BANDWIDTH_PER_CORE = 25e9
CPU_LAUNCH_OVERHEAD_S = 5e-6


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_cores() -> list[int]:
    """The cores this process may run on (sched_getaffinity), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _host_memory_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 * GiB


def cpu_device(index: int, cores: list[int] | None = None, share: int | None = None) -> Device:
    """``cpu:index``: one core of this host (core ``index`` modulo the cores this process may use)."""
    available = host_cores()
    flags = _cpu_flags()
    key = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else ""
    cores = cores if cores is not None else [available[index % len(available)]]
    share = share or len(available)
    n = len(cores)
    return Device(name=f"cpu:{index}", kind="cpu",
                  peak_flops={"fp32": CPU_PEAK_PER_CORE[key] * n, "int8": 2 * CPU_PEAK_PER_CORE[key] * n},
                  memory_bandwidth=CPU_BANDWIDTH_PER_CORE * n, memory_bytes=_host_memory_bytes() // share,
                  launch_overhead_s=CPU_LAUNCH_OVERHEAD_S, host="local", cores=cores, overlaps_transfers=False)


def host_cpu() -> DeviceSet:
    """Every core of this host as its own device (``cpu:0`` .. ``cpu:N-1``), linked by shared memory."""
    cores = host_cores()
    return DeviceSet([cpu_device(i, [c], len(cores)) for i, c in enumerate(cores)], SHM, ETHERNET_10G,
                     source="host-cpu")


# ------------------------------------------------------------------------------------------------- GPU presets
def a100(index: int = 0, host: str = "node0") -> Device:
    return Device(name=f"cuda:{index}", kind="cuda",
                  peak_flops={"fp32": 19.5e12, "tf32": 156e12, "fp16": 312e12, "bf16": 312e12, "int8": 624e12},
                  memory_bandwidth=2.039e12, memory_bytes=80 * 10 ** 9, launch_overhead_s=4e-6, host=host,
                  overlaps_transfers=True)


def h100(index: int = 0, host: str = "node0") -> Device:
    return Device(name=f"cuda:{index}", kind="cuda",
                  peak_flops={"fp32": 67e12, "tf32": 494e12, "fp16": 989e12, "bf16": 989e12, "int8": 1979e12},
                  memory_bandwidth=3.35e12, memory_bytes=80 * 10 ** 9, launch_overhead_s=3e-6, host=host,
                  overlaps_transfers=True)


def gpu_set(model: str, count: int) -> DeviceSet:
    """``count`` GPUs of ``model`` ("a100"/"h100"): one NVLink node up to 8, else nodes of 8 over InfiniBand."""
    make, nvlink = (a100, NVLINK3) if model == "a100" else (h100, NVLINK4)
    per_node = 8
    devices = [make(i, host=f"node{i // per_node}") for i in range(count)]
    suffix = "" if count == 1 else f"x{count}"
    return DeviceSet(devices, nvlink, INFINIBAND_NDR, PCIE5, source=f"{model}{suffix}")


#: preset name -> description (``h100xN``/``a100xN`` accept any N >= 1)
PRESETS = {
    "host-cpu": "every core of this host, one device each, over shared memory",
    "a100": "one A100 SXM 80 GB",
    "h100": "one H100 SXM 80 GB",
    "a100x8": "one 8 x A100 node over NVLink 3",
    "h100x8": "one 8 x H100 node over NVLink 4 (alias dgx-h100)",
    "h100xN": "N H100s: nodes of 8 over NVLink 4, nodes joined by InfiniBand NDR (h100x64: 8 nodes)",
    "a100xN": "N A100s: nodes of 8 over NVLink 3, nodes joined by InfiniBand NDR",
}

_GPU_PRESET = re.compile(r"(a100|h100)(?:x(\d+))?")
_DEVICE_LIST = re.compile(r"\s*(cpu|cuda)(:\d+(-\d+)?)?\s*(,\s*(cpu|cuda)(:\d+(-\d+)?)?\s*)*")


def preset(name: str) -> DeviceSet:
    key = name.strip().lower()
    if key == "host-cpu":
        return host_cpu()
    if key == "dgx-h100":
        return gpu_set("h100", 8)
    m = _GPU_PRESET.fullmatch(key)
    if m:
        count = int(m.group(2) or 1)
        if count < 1:
            raise OptionError(f"device preset {name!r}: needs at least one device")
        return gpu_set(m.group(1), count)
    raise OptionError(f"unknown device or device preset {name!r}: expected cpu:N or cuda:N (ranges like "
                      f"cuda:0-7, lists like cpu:0,cpu:1), a preset ({', '.join(PRESETS)}) or a .json/.toml "
                      "spec file")


def load_spec(path: str) -> DeviceSet:
    """A device set from a ``.json`` or ``.toml`` file (layout: :meth:`DeviceSet.to_dict`)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise OptionError(f"device spec {path!r}: cannot read it: {exc.strerror or exc}") from None
    try:
        if path.lower().endswith(".toml"):
            import tomllib

            doc = tomllib.loads(data.decode("utf-8"))
        else:
            doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OptionError(f"device spec {path!r} is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: "
                          f"{exc}") from None
    out = DeviceSet.from_dict(doc, f"device spec {path!r}")
    out.source = path
    return out


def is_spec_name(text: str) -> bool:
    """True when ``text`` is a preset name or a spec file path rather than a list like ``cpu:0,cpu:1``."""
    return isinstance(text, str) and not _DEVICE_LIST.fullmatch(text) and bool(text.strip())


def _names(spec: Any, target: str) -> list[str]:
    from .options import parse_devices

    return parse_devices(spec, target)


def resolve_devices(spec: Any, target: str = "reference") -> DeviceSet:
    """Any way of naming devices (see the module docstring) -> a :class:`DeviceSet`.

    ``cpu:N`` is core N of this host (modulo the cores available: cpu:0-3 on two cores share them);
    ``cuda:N`` an H100 of one node (nodes of 8 beyond cuda:7).
    """
    if isinstance(spec, DeviceSet):
        return spec
    if isinstance(spec, dict):
        return DeviceSet.from_dict(spec)
    if isinstance(spec, (str, os.PathLike)) and is_spec_name(os.fspath(spec)):
        text = os.fspath(spec).strip()
        if text.lower().endswith((".json", ".toml")) or os.path.sep in text:
            return load_spec(text)
        return preset(text)
    names = _names(spec, target)
    share = len(host_cores())
    devices = []
    for name in names:
        kind, index = name.split(":")
        i = int(index)
        devices.append(cpu_device(i, share=share) if kind == "cpu" else h100(i, host=f"node{i // 8}"))
    kinds = {d.kind for d in devices}
    if kinds == {"cpu"}:
        return DeviceSet(devices, SHM, ETHERNET_10G, source=",".join(names))
    return DeviceSet(devices, NVLINK4, INFINIBAND_NDR, PCIE5, source=",".join(names))


__all__ = ["Device", "Link", "DeviceSet", "PRESETS", "preset", "load_spec", "resolve_devices", "host_cpu",
           "cpu_device", "gpu_set", "is_spec_name", "host_cores", "SHM", "NVLINK3", "NVLINK4", "PCIE5",
           "INFINIBAND_NDR"]
