"""What an llvm executable keeps in a ``.gcx`` artifact, and how it takes it back without lowering again.

Parts (under ``backend/`` in the artifact, each with its SHA-256 in the manifest like every other part):

- ``llvm/index.json``: the triple, CPU name and LLVM features the code was made for, the SHA-256 of the
  plan.json it was lowered from, and per specialisation: its input shapes, the thread count the code was
  generated for, the *layout digest* (below) and the names of the parts below;
- ``llvm/specN.o``: the relocatable machine code MCJIT produced (ELF here); its entry symbol is
  ``graphc_entry``;
- ``llvm/specN.layout.json``: the program's layout (layout.py): slot table, where the values Python touches
  live, fallback steps, error messages -- what lowering computed besides the code;
- ``llvm/specN.const``: the arrays the code generators packed at compile time (weights in microkernel panels,
  tables), raw native bytes at 64-byte aligned offsets that the layout names; the plan's own weights are not
  repeated (the layout binds them to the arrays of ``weights.bin``);
- ``llvm/specN.ll``: the LLVM IR, the readable form of what the code was made from;
- ``llvm/specN.so`` and ``llvm/workers.so`` (when ``cc`` existed at save time): the object code, and the
  thread pool's runtime, linked into shared libraries (native.py), named with their SHA-256 in the index,
  which also records the saving host (machine, system, CPU flags).

**Load.** On a host with every CPU flag of the saving one, the shared libraries are loaded with ctypes and
LLVM is never imported; elsewhere (or without them) the object code goes through MCJIT. The kept code and
layout are used as they are -- no lowering, no IR, no packing -- when the
machine code fits this process: same triple, every CPU feature it was made for present, the plan is the one
the layout was made for (plan.json's SHA-256), and the executable runs as many threads as the code was
generated for. Otherwise the plan is lowered again (Python), and the kept machine code is still used when that
lowering's layout digest matches the kept one (a SHA-256 over what the code assumes of the program: every
slot's kind, size, dtype and shape, the kernel functions and their order, the fallback steps, the error
messages, the scratch size); failing that the new IR is compiled for this CPU (re-JIT). Each specialisation's
line in ``describe()["load"]`` says which happened and why. A missing CPU feature is therefore not an error
for the llvm target: the plan is portable, only the machine code is not.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

INDEX_FORMAT = 2


def host_features() -> list[str]:
    """This CPU's LLVM features (jit.py; imported here when needed, so that tests can stand in for them)."""
    from .jit import host_features as features

    return features()


def host_triple() -> str:
    from .jit import host_cpu

    return host_cpu()[0]


def ir_digest(program) -> str:
    """The layout digest of a lowered program (see the module docstring)."""
    from .layout import SCRATCH_SLOT

    slots = [[spec.kind, spec.index, int(spec.nbytes),
              [spec.array.dtype.str, list(spec.array.shape)] if spec.array is not None else None]
             for spec in program.slots]
    steps = [[step.kind, step.name, step.emitter, step.fallback] for step in program.steps]
    doc = {"slots": slots, "steps": steps, "errors": program.error_messages,
           "scratch": int(program.slots[SCRATCH_SLOT].nbytes)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def artifact_parts(executable, plan_sha256: str | None = None) -> dict[str, Any]:
    """The backend parts of ``executable`` (bytes, or a :class:`graphc.artifact.Blob` for the packed
    constants, which are written from the arrays without joining them into one bytes object)."""
    from ...artifact import Blob
    from .jit import host_cpu
    from .layout import layout_of

    triple, cpu, _ = host_cpu()
    parts: dict[str, Any] = {}
    specs = []
    for i, (shapes, compiled) in enumerate(executable.specializations.items()):
        code = compiled.jit.object_code
        if code is None:
            continue
        ir_text = compiled.program.ir_text()
        parts[f"llvm/spec{i}.o"] = code
        parts[f"llvm/spec{i}.ll"] = ir_text
        spec = {"input_shapes": [list(s) if s is not None else None for s in shapes],
                "ir_sha256": hashlib.sha256(ir_text).hexdigest(), "layout_sha256": ir_digest(compiled.program),
                "threads": int(executable.threads), "object": f"llvm/spec{i}.o", "ir": f"llvm/spec{i}.ll"}
        try:
            doc, blob = layout_of(compiled.program)
        except ValueError:
            doc = None  # a value the layout cannot name: a load lowers this specialisation again
        if doc is not None:
            parts[f"llvm/spec{i}.layout.json"] = json.dumps(doc, separators=(",", ":")).encode()
            parts[f"llvm/spec{i}.const"] = Blob(blob, doc["constants_bytes"])
            spec.update(layout=f"llvm/spec{i}.layout.json", constants=f"llvm/spec{i}.const")
        specs.append(spec)
    index = {"format": INDEX_FORMAT, "triple": triple, "cpu": cpu, "features": host_features(),
             "plan_sha256": plan_sha256, "specializations": specs, "host": native_host()}
    _add_shared_libraries(executable, parts, specs, index)
    parts["llvm/index.json"] = json.dumps(index, indent=1, sort_keys=True).encode()
    return parts


def native_host() -> dict:
    """What a load checks, without LLVM, before it runs a shared library made here: the machine, the system
    and every CPU flag of this host (the code may use any of them)."""
    from ...artifact import cpu_features

    return {"machine": platform.machine(), "system": platform.system(), "cpu_flags": cpu_features()}


def native_fits(index: dict) -> str | None:
    """None when shared libraries made on the host ``index`` describes run here, else why not."""
    host = index.get("host")
    if not isinstance(host, dict) or not isinstance(host.get("cpu_flags"), list) or not host["cpu_flags"]:
        return "the artifact does not describe its host's CPU"
    here = native_host()
    if (host.get("machine"), host.get("system")) != (here["machine"], here["system"]):
        return f"the machine code is for {host.get('machine')}/{host.get('system')}"
    missing = sorted(set(map(str, host["cpu_flags"])) - set(here["cpu_flags"]))
    if missing:
        return f"this CPU lacks {', '.join(missing[:8])}{'...' if len(missing) > 8 else ''}"
    return None


def _add_shared_libraries(executable, parts: dict, specs: list, index: dict) -> None:
    """``llvm/specN.so`` for every specialisation and ``llvm/workers.so`` for the thread pool, linked by the
    system toolchain when there is one (native.py): a load then runs them without LLVM."""
    from .native import link_shared, linker

    if linker() is None and not any(getattr(c.jit, "shared", None) for c in executable.specializations.values()):
        return
    by_object = {spec["object"]: spec for spec in specs}
    for i, compiled in enumerate(executable.specializations.values()):
        spec = by_object.get(f"llvm/spec{i}.o")
        if spec is None:
            continue
        library = getattr(compiled.jit, "shared", None) or link_shared([compiled.jit.object_code])
        if library:
            parts[f"llvm/spec{i}.so"] = library
            spec.update(library=f"llvm/spec{i}.so", library_sha256=hashlib.sha256(library).hexdigest())
    workers = getattr(executable, "_workers", None)
    runtime = getattr(workers, "_jit", None)
    if runtime is not None:
        library = getattr(runtime, "shared", None) or (link_shared([runtime.object_code])
                                                       if runtime.object_code else None)
        if library:
            parts["llvm/workers.so"] = library
            index.update(workers_library="llvm/workers.so",
                         workers_library_sha256=hashlib.sha256(library).hexdigest())


@dataclass
class Prebuilt:
    """One specialisation's machine code as an artifact kept it, and what is needed to use it."""

    object_code: bytes
    layout_sha256: str
    threads: int | None = None  # None: not recorded (index format 1)
    layout: Any = None  # the layout document (None: lower again and compare layout digests)
    constants: np.ndarray | None = None
    ir_text: Callable[[], bytes] | None = None
    plan_matches: bool = False  # the plan is the one the layout was made for
    library: tuple | None = None  # (the shared library's bytes, its SHA-256) when it runs here (native.py)


def _array(parts, name: str) -> np.ndarray:
    """A part as a 64-byte aligned uint8 array (the artifact's own mapping when it offers one)."""
    get_array = getattr(parts, "array", None)
    if callable(get_array):
        array = get_array(name)
        if array.ctypes.data % 64 == 0:
            return array
    data = parts[name]
    raw = np.empty(len(data) + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    out = raw[start:start + len(data)]
    out[:] = np.frombuffer(data, np.uint8)
    return out


def prebuilt_from_parts(parts, plan_sha256: str | None = None) -> tuple[dict, list[str], tuple | None]:
    """({input shapes: Prebuilt}, notes, the thread pool's shared library as (bytes, SHA-256) or None) from an
    artifact's backend parts."""
    raw = parts.get("llvm/index.json")
    if raw is None:
        return {}, ["the artifact holds no machine code; JIT"], None
    try:
        index = json.loads(raw)
        specs = index["specializations"]
        triple, features = index["triple"], set(index["features"])
        if not isinstance(specs, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return {}, ["the artifact's llvm/index.json is malformed; re-JIT"], None
    # Shared libraries made on a host whose every CPU flag this one has run as they are, and LLVM is not asked
    # (importing it costs more memory than a small model); otherwise LLVM compares triples and features.
    native_problem = native_fits(index)
    notes: list[str] = []
    if native_problem is not None:
        if any(isinstance(spec, dict) and "library" in spec for spec in specs):
            notes.append(f"shared libraries not used: {native_problem}")
        here_triple = host_triple()
        missing = sorted(features - set(host_features()))
        if triple != here_triple:
            return {}, [f"the machine code is for {triple}, this machine is {here_triple}; re-JIT from the IR"], None
        if missing:
            return {}, [f"this CPU lacks {', '.join(missing[:8])}{'...' if len(missing) > 8 else ''} that the "
                        f"machine code was made for; re-JIT from the IR"], None
    workers = None
    if native_problem is None:
        workers = _library(parts, index.get("workers_library"), index.get("workers_library_sha256"))
    plan_matches = (index.get("format") == INDEX_FORMAT and plan_sha256 is not None
                    and index.get("plan_sha256") == plan_sha256)
    prebuilt = {}
    for spec in specs:
        try:
            shapes = tuple(tuple(s) if s is not None else None for s in spec["input_shapes"])
            entry = Prebuilt(parts[spec["object"]], spec["layout_sha256"], plan_matches=plan_matches)
        except (KeyError, TypeError):
            continue
        threads = spec.get("threads")
        entry.threads = threads if isinstance(threads, int) and not isinstance(threads, bool) else None
        if isinstance(spec.get("layout"), str) and isinstance(spec.get("constants"), str):
            try:
                entry.layout = json.loads(parts[spec["layout"]])
                entry.constants = _array(parts, spec["constants"])
            except (KeyError, ValueError):
                entry.layout = None
                notes.append(f"{[list(s) if s else s for s in shapes]}: the stored layout is unreadable")
        if isinstance(spec.get("ir"), str):
            entry.ir_text = lambda name=spec["ir"]: parts[name]
        if native_problem is None:
            entry.library = _library(parts, spec.get("library"), spec.get("library_sha256"))
        prebuilt[shapes] = entry
    return prebuilt, notes, workers


def _library(parts, name, sha256) -> tuple | None:
    """(bytes as the artifact holds them, SHA-256 the index names) of a shared library part, or None."""
    if not isinstance(name, str) or not isinstance(sha256, str) or name not in parts:
        return None
    get_array = getattr(parts, "array", None)
    return (get_array(name) if callable(get_array) else parts[name]), sha256
