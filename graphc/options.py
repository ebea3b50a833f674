"""Compile options: validated once, at the API boundary, with messages a user can act on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .errors import OptionError

PRECISIONS = ("fp32", "mixed", "int8")
RUNTIMES = ("local", "ray")  # how a partitioned plan runs: worker processes on this host, or Ray actors


def default_target() -> str:
    from .backends import available_targets

    targets = available_targets()
    return "llvm" if "llvm" in targets else "reference"


@dataclass
class CompileOptions:
    target: str
    devices: list[str]
    precision: str = "fp32"
    threads: int = 0  # 0: all cores
    verify: bool = False  # run the IR verifier after every pass
    passes: list[str] = field(default_factory=list)  # extra (plugin) passes appended to the pipeline
    example_inputs: Any = None  # for torch modules
    extra: dict[str, Any] = field(default_factory=dict)  # options of the passes (see Pass.options)
    runtime: str = "local"  # one of RUNTIMES; only a plan over 2+ devices has a runtime to choose

    @classmethod
    def build(cls, *, target: str | None = None, devices: Any = None, precision: str = "fp32",
              threads: int | None = None, verify: bool | None = None, passes: list[str] | None = None,
              example_inputs: Any = None, runtime: str | None = None, **extra: Any) -> "CompileOptions":
        from .backends import KNOWN_TARGETS

        target = target or default_target()
        if target not in KNOWN_TARGETS:
            raise OptionError(f"unknown target {target!r}; choose one of {', '.join(KNOWN_TARGETS)}")
        if precision not in PRECISIONS:
            raise OptionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if precision == "int8":
            raise OptionError("precision='int8' is not implemented yet in this version; use 'fp32' or 'mixed'")
        if precision == "mixed" and target == "cuda":
            raise OptionError("precision='mixed' is not implemented for the cuda target yet; use 'fp32' there "
                              "(the llvm and reference targets implement 'mixed': bfloat16 operands, float32 "
                              "accumulation)")
        device_list = parse_devices(devices, target)
        if len(device_list) > 1 and extra.get("device_spec") is None:
            # the partitioning pass needs the devices' numbers, not just names; kept with the options (JSON)
            from .devices import resolve_devices

            extra["device_spec"] = resolve_devices(devices, target).to_dict()
        runtime = check_runtime(runtime, device_list)
        if threads is None:
            threads = 0
        if not isinstance(threads, int) or threads < 0:
            raise OptionError(f"threads must be a non-negative integer (0 = all cores), got {threads!r}")
        if isinstance(passes, str):
            passes = [p.strip() for p in passes.split(",") if p.strip()]
        if verify is None:
            verify = os.environ.get("GRAPHC_VERIFY", "") not in ("", "0")
        unknown: list[str] = []
        if extra:  # the passes are imported only to check pass options (an artifact's load has none to check)
            from .passes.registry import registered_pass_options

            unknown = sorted(set(extra) - set(registered_pass_options()))
        if unknown:
            raise OptionError(f"unknown compile option(s): {', '.join(unknown)}; pass options are "
                              f"{', '.join(sorted(registered_pass_options()))}")
        return cls(target=target, devices=device_list, precision=precision, threads=threads, verify=bool(verify),
                   passes=list(passes or []), example_inputs=example_inputs, extra=dict(extra), runtime=runtime)

    def to_json(self) -> dict[str, Any]:
        # the default runtime is left out, so plans, artifacts and cache keys from before it existed still match
        runtime = {"runtime": self.runtime} if self.runtime != "local" else {}
        return {"target": self.target, "devices": self.devices, "precision": self.precision,
                "threads": self.threads, "passes": self.passes, **self.extra, **runtime}


def check_runtime(runtime: Any, devices: list[str]) -> str:
    """``None`` -> "local"; "ray" needs 2+ devices and the ray package (a DeviceError says how to install it)."""
    runtime = "local" if runtime is None else runtime
    if runtime not in RUNTIMES:
        raise OptionError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)} (local: one worker "
                          "process per device on this host; ray: one Ray actor per device, on a Ray cluster)")
    if runtime != "local" and len(devices) < 2:
        raise OptionError(f"runtime={runtime!r} runs a model partitioned over several devices, but devices="
                          f"{','.join(devices)} names one; give two or more, e.g. devices='cpu:0,cpu:1'")
    if runtime == "ray":
        from .runtime.ray_runner import import_ray

        import_ray()
    return runtime


def parse_devices(devices: Any, target: str) -> list[str]:
    """``None`` / ``"cpu:0,cpu:1"`` / ``"cuda:0-7"`` / an int count / a preset / a spec file -> device names."""
    kind = "cuda" if target == "cuda" else "cpu"
    if devices is None:
        return [f"{kind}:0"]
    if isinstance(devices, bool):
        raise OptionError(f"devices must be a string, a list or a count, got {devices!r}")
    if isinstance(devices, int):
        if devices < 1:
            raise OptionError(f"devices must be at least 1, got {devices}")
        return [f"{kind}:{i}" for i in range(devices)]
    if isinstance(devices, (list, tuple)):
        items = [str(d) for d in devices]
    elif isinstance(devices, str):
        from .devices import is_spec_name, resolve_devices

        if is_spec_name(devices):  # a preset ("h100x8") or a spec file ("devices.toml")
            return resolve_devices(devices, target).names
        items = [d.strip() for d in devices.split(",") if d.strip()]
    else:
        raise OptionError(f"devices must be a string, a list or a count, got {type(devices).__name__}")
    out: list[str] = []
    for item in items:
        name, _, index = item.partition(":")
        if name not in ("cpu", "cuda"):
            raise OptionError(f"unknown device {item!r}: expected cpu:N or cuda:N (or a range like cuda:0-7)")
        if not index:
            out.append(f"{name}:0")
            continue
        lo, _, hi = index.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise OptionError(f"bad device index in {item!r}: expected a number or a range like 0-7")
        for i in range(int(lo), int(hi or lo) + 1):
            out.append(f"{name}:{i}")
    if not out:
        raise OptionError(f"devices={devices!r} names no device")
    return out
