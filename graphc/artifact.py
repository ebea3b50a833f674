"""Saved compiled models (``.gcx``): a zip archive with a manifest and SHA-256 checked parts. No pickle.

Layout (format version 2)::

    manifest.json   format, format_version 2, graphc version, target, options, signature, created, host
                    (machine, CPU features, byte order), required CPU features, sha256 and size of every part
    plan.json       the post-pass graph (graphc/ir/serialize.py), the weights table (dtype, shape, offset and
                    size in weights.bin; object/string arrays inline as JSON lists), the Plan's decisions and
                    pipeline records, node count at import, compile time
    weights.bin     every weight as raw little-endian bytes, each at a 64-byte aligned offset
    backend/...     what the backend built (llvm: machine code, layout, packed constants, IR; cuda: source and
                    binaries), handed back to its ``compile_with_parts``
    model.onnx      the source model, kept so the artifact can be recompiled by another graphc or for another
                    target; optional on load

Members are stored uncompressed; ``weights.bin`` and large backend parts (:class:`Blob`) start at a 64-byte
aligned offset in the file (a zipalign-style extra field pads the local header), so that a load maps them
(copy-on-write) instead of copying them: the weights are views of the file, and their pages become resident
only where a run reads them.

Loading verifies (size, SHA-256) every part it uses -- all but model.onnx, which is checked when a loaded model is
saved again -- in parallel threads, rebuilds the Graph from plan.json + weights.bin, checks it with ``verify``
and hands the Plan straight to the backend (``compile_with_parts(plan, parts, plan_sha256=...)`` where it has
one, else ``compile(plan)``): no ONNX import, no passes. A missing, corrupted or tampered part, a plan that
does not describe a valid graph, another format version or graphc version, a target this build lacks, or a host
lacking a CPU feature the artifact requires raises :class:`~graphc.errors.ArtifactError`. Format version 1
artifacts (manifest + model.onnx) still load by recompiling their model. SHA-256 finds corruption, not a
forger: the manifest is not signed, and an artifact carries machine code, so load only artifacts you trust.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import mmap
import os
import platform
import struct
import sys
import time
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .errors import ArtifactError, GraphcError

FORMAT = "graphc-artifact"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
ALIGNMENT = 64
_MAX_MANIFEST = 1 << 20
_MAX_PLAN = 1 << 30
_CHUNK = 1 << 22


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- host description -----------------------------------------------------------------------------------------
def cpu_features() -> list[str]:
    """This CPU's feature flags (``/proc/cpuinfo`` flags on x86, Features on ARM); empty when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return sorted(set(rest.split()))
    except OSError:
        pass
    return []


def host_info() -> dict[str, Any]:
    return {"machine": platform.machine(), "system": platform.system(), "byteorder": sys.byteorder,
            "cpu_features": cpu_features()}


# -- weights as raw bytes -------------------------------------------------------------------------------------
def _unit(dtype: np.dtype) -> int:
    """Size of the scalar that byte order applies to (a complex number's parts are two floats)."""
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize


def _to_le_bytes(array: np.ndarray) -> memoryview:
    array = np.ascontiguousarray(array)
    unit = _unit(array.dtype)
    if sys.byteorder == "little" or unit == 1:
        return memoryview(array.reshape(-1).view(np.uint8))
    raw = array.reshape(-1).view(f"=u{unit}").astype(f"<u{unit}")
    return memoryview(raw.view(np.uint8))


def _from_le_bytes(raw: np.ndarray, dtype: np.dtype, shape: tuple) -> np.ndarray:
    unit = _unit(dtype)
    if sys.byteorder != "little" and unit > 1:
        raw = raw.view(f"<u{unit}").astype(f"=u{unit}").view(np.uint8)
    return raw.view(dtype).reshape(shape)


def _object_to_json(array: np.ndarray) -> list:
    out = []
    for x in array.reshape(-1).tolist():
        if isinstance(x, bytes):
            import base64

            out.append({"$bytes": base64.b64encode(x).decode("ascii")})
        elif isinstance(x, str):
            out.append(x)
        else:
            raise ArtifactError(f"cannot store an object array holding {type(x).__name__}")
    return out


def _object_from_json(data: list, shape: tuple) -> np.ndarray:
    import base64

    items = []
    for x in data:
        if isinstance(x, str):
            items.append(x)
        elif isinstance(x, dict) and set(x) == {"$bytes"} and isinstance(x["$bytes"], str):
            items.append(base64.b64decode(x["$bytes"], validate=True))
        else:
            raise ValueError(f"string weight holds {str(x)[:40]!r}")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def _jsonable(x: Any) -> Any:
    """Plan records as plain JSON (numpy scalars to Python, tuples to lists, anything else to its str)."""
    if x is None or isinstance(x, (bool, str, int, float)):
        return x
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray) and x.size <= 64:
        return _jsonable(x.tolist())
    return str(x)


# -- saving ---------------------------------------------------------------------------------------------------
class Blob:
    """A part made of arrays at 64-byte aligned offsets (zeros between), written without joining them into one
    bytes object. Backends return one from ``artifact_parts()`` for large data (the llvm backend's packed
    constants); on load the part comes back as one aligned uint8 array (``BackendParts.array``)."""

    def __init__(self, chunks: list[tuple[int, np.ndarray]], size: int):
        self.chunks = [(int(offset), np.ascontiguousarray(array)) for offset, array in chunks]
        self.size = int(size)


_ALIGN_EXTRA_ID = 0xD935  # the extra field zipalign uses: padding that puts a member's data on a boundary


def _aligned_info(zf: zipfile.ZipFile, name: str, size: int) -> tuple[zipfile.ZipInfo, bool]:
    """A ZipInfo whose stored data will start at a multiple of ALIGNMENT in the file (so that a load can map it
    instead of copying it), and whether the member needs zip64 (decided here as zipfile decides it)."""
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
    header_at = getattr(zf, "start_dir", None)
    header_at = zf.fp.tell() if header_at is None else header_at
    # local header (30 bytes), the name, our extra field (4 + pad), zipfile's zip64 extra field (20) if any
    data_at = header_at + 30 + len(name.encode("utf-8")) + 4 + (20 if zip64 else 0)
    pad = (-data_at) % ALIGNMENT
    info.extra = struct.pack("<HH", _ALIGN_EXTRA_ID, pad) + bytes(pad)
    return info, zip64


def _write_aligned(zf: zipfile.ZipFile, name: str, chunks, size: int) -> str:
    """Write ``(offset, bytes-like)`` chunks (ascending, zeros between) as an aligned stored member of ``size``
    bytes; its SHA-256."""
    info, zip64 = _aligned_info(zf, name, size)
    digest = hashlib.sha256()
    with zf.open(info, "w", force_zip64=zip64) as out:
        pos = 0
        for offset, raw in chunks:
            raw = memoryview(raw).cast("B")
            if offset > pos:
                pad = bytes(offset - pos)
                out.write(pad)
                digest.update(pad)
            out.write(raw)
            digest.update(raw)
            pos = offset + raw.nbytes
        if size > pos:
            pad = bytes(size - pos)
            out.write(pad)
            digest.update(pad)
    return digest.hexdigest()


def _blob_chunks(blob: Blob):
    for offset, array in blob.chunks:
        yield offset, array.reshape(-1).view(np.uint8)


def _backend_parts(executable, plan_sha256: str) -> dict:
    """The executable's ``artifact_parts()``, told which plan.json they go with when it asks."""
    make = getattr(executable, "artifact_parts", None)
    if not callable(make):
        return {}
    try:
        wants_plan = "plan_sha256" in inspect.signature(make).parameters
    except (TypeError, ValueError):
        wants_plan = False
    return make(plan_sha256=plan_sha256) if wants_plan else make()


class StoredModel:
    """The source model of a loaded artifact: read (and checked) from the artifact, then parsed into an
    ``onnx.ModelProto``, only when asked -- running a loaded model never needs it, saving it again does.
    """

    def __init__(self, data):
        self._data = data  # bytes, a uint8 array as read from the artifact, or a callable that reads them
        self._proto = None

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf name, so save() and bench take either
        if callable(self._data):
            self._data = self._data()
        if not isinstance(self._data, bytes):
            self._data = bytes(self._data)
        return self._data

    @property
    def proto(self):
        if self._proto is None:
            import onnx

            self._proto = onnx.ModelProto.FromString(self.SerializeToString())
        return self._proto

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.proto, name)


def _source_bytes(compiled) -> bytes | None:
    model = compiled.source_model
    if model is None:
        return None
    try:
        return model.SerializeToString()
    except ValueError:  # protobuf refuses messages over 2 GB: the plan and weights are enough to load
        return None


def save_artifact(compiled, path: str | os.PathLike) -> str:
    from . import __version__
    from .ir.serialize import SerializationError, graph_to_json

    path = os.fspath(path)
    plan = compiled.plan
    try:
        graph_doc, weights = graph_to_json(plan.graph)
    except SerializationError as exc:
        raise ArtifactError(f"cannot save this model as an artifact: {exc}") from None

    table: dict[str, dict] = {}
    chunks: list[tuple[int, memoryview]] = []
    end = 0
    for wid, array in weights.items():
        dtype = np.dtype(array.dtype)
        shape = [int(d) for d in array.shape]
        if dtype.kind in "OUS":
            table[wid] = {"dtype": "object", "shape": shape, "data": _object_to_json(np.asarray(array, object))}
            continue
        raw = _to_le_bytes(array)
        offset = -(-end // ALIGNMENT) * ALIGNMENT
        table[wid] = {"dtype": dtype.name, "shape": shape, "offset": offset, "nbytes": raw.nbytes}
        chunks.append((offset, raw))
        end = offset + raw.nbytes

    plan_doc = {
        "graph": graph_doc,
        "weights": table,
        "target": plan.target,
        "options": _jsonable(plan.options),
        "decisions": _jsonable(plan.decisions),
        "pipeline": _jsonable(plan.pipeline),
        "imported_nodes": int(getattr(compiled, "_imported_nodes", 0) or 0),
        "compile_seconds": float(compiled.compile_seconds),
    }
    plan_bytes = json.dumps(plan_doc, separators=(",", ":")).encode("utf-8")
    model_bytes = _source_bytes(compiled)

    plan_sha256 = _sha256(plan_bytes)
    parts: dict[str, dict] = {"plan.json": {"sha256": plan_sha256, "size": len(plan_bytes)}}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr("plan.json", plan_bytes)
            # aligned in the file, so that a load maps the weights instead of copying them
            parts["weights.bin"] = {"sha256": _write_aligned(zf, "weights.bin", chunks, end), "size": end}
            # what the backend built (the cuda backend: source, launch list, build log, binaries; the llvm
            # backend: machine code, layout, packed constants, IR), kept as-is
            for name, data in _backend_parts(compiled.executable, plan_sha256).items():
                if isinstance(data, Blob):
                    digest = _write_aligned(zf, f"backend/{name}", _blob_chunks(data), data.size)
                    parts[f"backend/{name}"] = {"sha256": digest, "size": data.size}
                    continue
                zf.writestr(f"backend/{name}", data)
                parts[f"backend/{name}"] = {"sha256": _sha256(data), "size": len(data)}
            if model_bytes is not None:
                zf.writestr("model.onnx", model_bytes)
                parts["model.onnx"] = {"sha256": _sha256(model_bytes), "size": len(model_bytes)}
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "graphc_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source": compiled.source,
                "target": compiled.target,
                "options": compiled.options.to_json(),
                "inputs": compiled.input_types,
                "outputs": compiled.output_names,
                "host": host_info(),
                # features the code in this artifact needs; the plan-only artifacts of today need none (the llvm
                # backend will list what it compiled for)
                "required_cpu_features": [],
                "parts": parts,
            }
            zf.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(tmp, path)  # never leave a half-written artifact under the final name
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ArtifactError(f"cannot write artifact {path!r}: {exc.strerror or exc}") from None
    return path


# -- loading --------------------------------------------------------------------------------------------------
def read_manifest(zf: zipfile.ZipFile, path: str) -> dict:
    try:
        info = zf.getinfo("manifest.json")
    except KeyError:
        raise ArtifactError(f"{path!r} is not a graphc artifact (no manifest.json)") from None
    if info.file_size > _MAX_MANIFEST:
        raise ArtifactError(f"{path!r}: manifest.json is implausibly large ({info.file_size} bytes)")
    try:
        manifest = json.loads(zf.read("manifest.json"))
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(f"{path!r}: manifest.json is corrupted ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path!r} is not a graphc artifact (format {manifest.get('format')!r})"
                            if isinstance(manifest, dict) else f"{path!r}: manifest.json is not an object")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ArtifactError(f"{path!r} has artifact format version {version!r}; this graphc reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))}: recompile the model with this graphc")
    if not isinstance(manifest.get("parts"), dict):
        raise ArtifactError(f"{path!r}: manifest lists no parts")
    needed = ("model.onnx",) if version == 1 else ("plan.json", "weights.bin")
    for name in needed:
        if name not in manifest["parts"]:
            raise ArtifactError(f"{path!r}: manifest lists no {name} part")
    return manifest


def _part_meta(manifest: dict, name: str, path: str) -> dict:
    meta = manifest["parts"].get(name)
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
        raise ArtifactError(f"{path!r}: manifest has no checksum for part {name!r}")
    return meta


def _open_part(zf: zipfile.ZipFile, meta: dict, name: str, path: str) -> zipfile.ZipInfo:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ArtifactError(f"{path!r}: part {name!r} is missing") from None
    if info.file_size != meta.get("size"):
        raise ArtifactError(f"{path!r}: part {name!r} is {info.file_size} bytes, manifest says {meta.get('size')}")
    return info


def read_part(zf: zipfile.ZipFile, manifest: dict, name: str, path: str, limit: int | None = None) -> bytes:
    meta = _part_meta(manifest, name, path)
    info = _open_part(zf, meta, name, path)
    if limit is not None and info.file_size > limit:
        raise ArtifactError(f"{path!r}: part {name!r} is implausibly large ({info.file_size} bytes)")
    try:
        data = zf.read(name)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArtifactError(f"{path!r}: part {name!r} cannot be read ({exc})") from None
    if _sha256(data) != meta["sha256"]:
        raise ArtifactError(f"{path!r}: part {name!r} fails its SHA-256 check (corrupted or tampered with)")
    return data


def _stored_offset(path: str, info: zipfile.ZipInfo) -> int | None:
    """Where an uncompressed member's bytes start in the file (None when it is compressed)."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        end = f.seek(0, os.SEEK_END)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename!r}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > end:
        raise zipfile.BadZipFile(f"{info.filename!r} runs past the end of the file")
    return start


def read_part_buffer(zf: zipfile.ZipFile, manifest: dict, name: str, path: str,
                     limit: int | None = None) -> np.ndarray:
    """A part, checked against its SHA-256, in a writable 64-byte aligned uint8 array.

    Uncompressed members (all that graphc writes) are read straight from the file into the buffer and hashed
    there (the zip's own CRC-32 is redundant next to SHA-256); compressed ones go through zipfile.
    """
    meta = _part_meta(manifest, name, path)
    info = _open_part(zf, meta, name, path)
    size = info.file_size
    if limit is not None and size > limit:
        raise ArtifactError(f"{path!r}: part {name!r} is implausibly large ({size} bytes)")
    store = np.empty(size + ALIGNMENT, np.uint8)
    begin = (-store.ctypes.data) % ALIGNMENT
    buf = store[begin:begin + size]
    view = memoryview(buf)
    pos = 0
    try:
        start = _stored_offset(path, info)
        if start is not None:
            with open(path, "rb", buffering=0) as f:
                f.seek(start)
                while pos < size:
                    got = f.readinto(view[pos:])
                    if not got:
                        break
                    pos += got
        else:
            with zf.open(name) as f:
                while pos < size:
                    chunk = f.read(min(_CHUNK, size - pos))
                    if not chunk:
                        break
                    view[pos:pos + len(chunk)] = chunk
                    pos += len(chunk)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArtifactError(f"{path!r}: part {name!r} cannot be read ({exc})") from None
    if pos != size or hashlib.sha256(view).hexdigest() != meta["sha256"]:
        raise ArtifactError(f"{path!r}: part {name!r} fails its SHA-256 check (corrupted or tampered with)")
    return buf


def _map_file(path: str) -> mmap.mmap | None:
    """A copy-on-write mapping of the whole artifact (None where the file cannot be mapped): parts stored
    uncompressed at aligned offsets are used from it in place, and only the pages a run touches stay resident.
    Writes to a mapped array stay private to the process. The file must not be rewritten in place while a
    model loaded from it lives (graphc only ever replaces artifacts and cache entries by renaming a new file
    over them, which leaves the mapped file intact)."""
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        return None


def _hash_file_region(path: str, start: int, size: int) -> str:
    """SHA-256 of ``size`` bytes of the file from ``start``, read through one small buffer."""
    digest = hashlib.sha256()
    buf = bytearray(min(_CHUNK, max(size, 1)))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = size
        while left:
            got = f.readinto(view[:min(left, len(buf))])
            if not got:
                break
            digest.update(view[:got])
            left -= got
    return digest.hexdigest() if not left else ""


def read_part_mapped(mapped: mmap.mmap | None, zf: zipfile.ZipFile, manifest: dict, name: str, path: str,
                     limit: int | None = None, touch: bool = True) -> np.ndarray:
    """A part, checked against its SHA-256, as a 64-byte aligned uint8 array: a view of ``mapped`` when the
    member is stored at an aligned offset (what graphc writes for weights and backend blobs), else a copy
    (:func:`read_part_buffer`). ``touch=False`` hashes the part by reading the file rather than through the
    mapping, so that its pages become resident in this process only where something uses them (the plan's
    weights: most are only read packed, from the backend's part, by a compiled model)."""
    meta = _part_meta(manifest, name, path)
    info = _open_part(zf, meta, name, path)
    if limit is not None and info.file_size > limit:
        raise ArtifactError(f"{path!r}: part {name!r} is implausibly large ({info.file_size} bytes)")
    try:
        start = _stored_offset(path, info) if mapped is not None and info.file_size else None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(f"{path!r}: part {name!r} cannot be read ({exc})") from None
    if start is None or start % ALIGNMENT or start + info.file_size > len(mapped):
        return read_part_buffer(zf, manifest, name, path, limit)
    buf = np.frombuffer(mapped, np.uint8, count=info.file_size, offset=start)
    digest = hashlib.sha256(buf).hexdigest() if touch else _hash_file_region(path, start, info.file_size)
    if digest != meta["sha256"]:
        raise ArtifactError(f"{path!r}: part {name!r} fails its SHA-256 check (corrupted or tampered with)")
    return buf


class BackendParts(Mapping):
    """The ``backend/`` parts of a loaded artifact (names without the prefix), each checked against its
    SHA-256 at load: ``parts[name]`` is the part's bytes, ``parts.array(name)`` the aligned uint8 array it was
    read (or mapped) into, without a copy."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self._arrays = arrays

    def __getitem__(self, name: str) -> bytes:
        return self._arrays[name].tobytes()

    def array(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)


def _weights_from_table(table: Any, blob: np.ndarray) -> dict[str, np.ndarray]:
    from .ir.serialize import dtype_by_name

    if not isinstance(table, dict):
        raise ValueError("the weights table is not an object")
    out = {}
    for wid, entry in table.items():
        if not isinstance(entry, dict):
            raise ValueError(f"weight {wid!r}: entry is not an object")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise ValueError(f"weight {wid!r}: bad shape {shape!r}")
        shape = tuple(shape)
        count = int(np.prod(shape, dtype=object)) if shape else 1
        dtype = dtype_by_name(entry.get("dtype"))
        if dtype == np.dtype(object):
            data = entry.get("data")
            if not isinstance(data, list) or len(data) != count:
                raise ValueError(f"weight {wid!r}: string data does not match shape {list(shape)}")
            out[wid] = _object_from_json(data, shape)
            continue
        offset, nbytes = entry.get("offset"), entry.get("nbytes")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (offset, nbytes)):
            raise ValueError(f"weight {wid!r}: offset and nbytes must be integers")
        if nbytes != count * dtype.itemsize:
            raise ValueError(f"weight {wid!r}: {nbytes} bytes do not hold {dtype.name}{list(shape)}")
        if offset < 0 or offset + nbytes > blob.size:
            raise ValueError(f"weight {wid!r}: bytes [{offset}, {offset + nbytes}) lie outside weights.bin "
                             f"({blob.size} bytes)")
        out[wid] = _from_le_bytes(blob[offset:offset + nbytes], dtype, shape)
    return out


def _check_host(manifest: dict, path: str) -> None:
    required = manifest.get("required_cpu_features") or []
    if not isinstance(required, list) or not all(isinstance(f, str) for f in required):
        raise ArtifactError(f"{path!r}: manifest required_cpu_features is not a list of names")
    if not required:
        return
    host = manifest.get("host") if isinstance(manifest.get("host"), dict) else {}
    machine = platform.machine()
    if host.get("machine") and host.get("machine") != machine:
        raise ArtifactError(f"{path!r} holds code for {host.get('machine')}; this machine is {machine}: "
                            f"recompile the model here")
    have = set(cpu_features())
    missing = [f for f in required if f not in have]
    if missing:
        raise ArtifactError(f"{path!r} needs CPU feature(s) {', '.join(missing)} that this CPU lacks: "
                            f"recompile the model here")


def load_artifact(path: str | os.PathLike):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"artifact {path!r} does not exist")
    start = time.perf_counter()
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = read_manifest(zf, path)
            if manifest["format_version"] == 1:
                model_bytes = read_part(zf, manifest, "model.onnx", path)
                return _load_v1(manifest, model_bytes, path)
            _check_version(manifest, path)
            _check_host(manifest, path)
            # the source model is only needed to save again: checked for presence and size now, read and
            # hashed when (if ever) it is asked for
            has_model = "model.onnx" in manifest["parts"]
            names = ["weights.bin", "plan.json"] + [n for n in manifest["parts"]
                                                    if isinstance(n, str) and n.startswith("backend/")]
            sizes = {}
            for name in names + (["model.onnx"] if has_model else []):  # cheap checks first, broken part named
                sizes[name] = _open_part(zf, _part_meta(manifest, name, path), name, path).file_size
            # parts are mapped (or read) and hashed in parallel, largest first (hashlib releases the GIL)
            mapped = _map_file(path)
            with ThreadPoolExecutor(max_workers=min(len(names), max(2, min(4, os.cpu_count() or 1)))) as pool:
                futures = {n: pool.submit(read_part_mapped, mapped, zf, manifest, n, path,
                                          _MAX_PLAN if n == "plan.json" else None, n != "weights.bin")
                           for n in sorted(names, key=lambda n: -sizes[n])}
                buffers = {n: f.result() for n, f in futures.items()}
            plan_bytes = buffers.pop("plan.json").tobytes()
            blob = buffers.pop("weights.bin")
            backend_parts = BackendParts({n[len("backend/"):]: b for n, b in buffers.items()})
            plan_sha256 = manifest["parts"]["plan.json"]["sha256"]
            model_bytes = (lambda: _read_source_model(path, manifest)) if has_model else None
    except zipfile.BadZipFile:
        raise ArtifactError(f"{path!r} is not a graphc artifact (not a zip archive, or truncated)") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path!r}: {exc.strerror or exc}") from None
    return _load_v2(manifest, plan_bytes, blob, model_bytes, path, start, backend_parts, plan_sha256)


def _read_source_model(path: str, manifest: dict) -> bytes:
    """The artifact's model.onnx, checked against its SHA-256 (read lazily, see StoredModel)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return read_part(zf, manifest, "model.onnx", path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(f"cannot read the source model kept in {path!r}: {exc}") from None


def _check_version(manifest: dict, path: str) -> None:
    from . import __version__

    version = manifest.get("graphc_version")
    if version != __version__:
        raise ArtifactError(f"{path!r} was written by graphc {version!r}, this is graphc {__version__}: its plan "
                            f"may not mean the same here; recompile the model with this graphc")


def _options(manifest: dict, path: str):
    from .options import CompileOptions

    options = manifest.get("options") or {}
    if not isinstance(options, dict):
        raise ArtifactError(f"{path!r}: manifest options are not an object")
    try:
        return CompileOptions.build(**options)
    except GraphcError as exc:
        raise ArtifactError(f"{path!r} was compiled with options this graphc cannot use: {exc}") from None
    except TypeError as exc:
        raise ArtifactError(f"{path!r}: manifest options are malformed: {exc}") from None


def _load_v1(manifest: dict, model_bytes: bytes, path: str):
    """Format 1 holds only the source model: recompile it with the stored options."""
    from .errors import ModelLoadError
    from .frontend.onnx_import import _parse
    from .pipeline import compile_proto

    opts = _options(manifest, path)
    try:
        proto = _parse(model_bytes, path)
    except ModelLoadError as exc:
        raise ArtifactError(f"{path!r}: stored model is unreadable: {exc}") from None
    return compile_proto(proto, None, manifest.get("source", path), opts)


def _load_v2(manifest: dict, plan_bytes: bytes, blob: np.ndarray, model_bytes, path: str,
             start: float, backend_parts: Mapping | None = None, plan_sha256: str | None = None):
    from .backends import get_backend
    from .ir.verify import verify

    opts = _options(manifest, path)
    try:
        doc = json.loads(plan_bytes)
    except ValueError as exc:
        raise ArtifactError(f"{path!r}: plan.json is not valid JSON ({exc})") from None
    try:
        if not isinstance(doc, dict):
            raise ValueError("plan.json is not an object")
        target = doc.get("target")
        if target != manifest.get("target") or target != opts.target:
            raise ValueError(f"plan target {target!r} disagrees with the manifest's {manifest.get('target')!r}")
        weights = _weights_from_table(doc.get("weights"), blob)
        plan = build_plan(doc, weights)
        verify(plan.graph)
    except GraphcError as exc:
        raise ArtifactError(f"{path!r}: plan.json does not describe a valid program: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any malformed plan is the artifact's fault, reported as such
        raise ArtifactError(f"{path!r}: plan.json does not describe a valid program: {exc}") from None
    try:
        backend = get_backend(plan.target)
    except GraphcError as exc:
        raise ArtifactError(f"{path!r} was compiled for target {plan.target!r}: {exc}") from None
    try:
        with_parts = getattr(backend, "compile_with_parts", None)
        if len(opts.devices) > 1:  # partitioned: one worker process per device, as after a compile
            from .runtime.multidevice import compile_plan

            executable = compile_plan(plan)
        elif backend_parts and with_parts:
            executable = _with_parts(with_parts, plan, backend_parts, plan_sha256)
        else:
            executable = backend.compile(plan)
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{path!r}: the {plan.target} backend cannot build the stored plan: {exc}") from None
    stored = None if model_bytes is None else StoredModel(model_bytes)
    compiled = compiled_from_plan(plan, executable, source_model=stored,
                                  source=str(manifest.get("source", path)), options=opts,
                                  imported_nodes=int(doc.get("imported_nodes") or 0),
                                  compile_seconds=float(doc.get("compile_seconds") or 0.0))
    compiled.load_seconds = time.perf_counter() - start
    compiled.artifact_manifest = manifest
    return compiled


def _with_parts(with_parts, plan, backend_parts: Mapping, plan_sha256: str | None):
    """``backend.compile_with_parts``, told which plan.json the parts were saved with when it asks (the llvm
    backend then uses its stored layout as it is)."""
    try:
        wants_plan = "plan_sha256" in inspect.signature(with_parts).parameters
    except (TypeError, ValueError):
        wants_plan = False
    return with_parts(plan, backend_parts, plan_sha256=plan_sha256) if wants_plan else with_parts(plan, backend_parts)


def build_plan(doc: dict, weights: dict[str, np.ndarray]):
    """The :class:`~graphc.plan.Plan` a plan.json document describes (weights already decoded)."""
    from .ir.serialize import graph_from_json
    from .plan import Plan

    graph = graph_from_json(doc.get("graph"), weights)
    for key in ("options", "pipeline"):
        if not isinstance(doc.get(key, {}), dict):
            raise ValueError(f"plan {key} is not an object")
    if not isinstance(doc.get("decisions", []), list):
        raise ValueError("plan decisions are not a list")
    return Plan(graph=graph, target=doc["target"], options=doc.get("options") or {},
                decisions=doc.get("decisions") or [], pipeline=doc.get("pipeline") or {})


def compiled_from_plan(plan, executable, *, source_model, source: str, options, imported_nodes: int,
                       compile_seconds: float):
    """A :class:`~graphc.compiled.CompiledModel` around a Plan and its executable (no import, no passes)."""
    from .compiled import CompiledModel

    return CompiledModel(plan=plan, executable=executable, source_model=source_model, source=source,
                         options=options, imported_nodes=imported_nodes, compile_seconds=compile_seconds)
