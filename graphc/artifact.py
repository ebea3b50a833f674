"""Saved compiled models (``.gcx``): a zip archive with a manifest and SHA-256 checked parts. No pickle.

Layout (format version 1)::

    manifest.json   graphc version, target, options, signature, sha256 and size of every other part
    model.onnx      the source model as imported (weights included)

Loading verifies every part before using it; a missing, corrupted or tampered part, an unknown format version or
an artifact for a target this build lacks raises :class:`~graphc.errors.ArtifactError`. This version recompiles
the stored model on load; machine code in the artifact arrives with the AOT work (see docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile

from .errors import ArtifactError, GraphcError

FORMAT = "graphc-artifact"
FORMAT_VERSION = 1
_MAX_MANIFEST = 1 << 20


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_artifact(compiled, path: str | os.PathLike) -> str:
    from . import __version__

    path = os.fspath(path)
    model = compiled.source_model
    try:
        model_bytes = model.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GB
        raise ArtifactError(f"cannot save a model this large in format {FORMAT_VERSION}: {exc}") from None
    parts = {"model.onnx": model_bytes}
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
        "parts": {name: {"sha256": _sha256(data), "size": len(data)} for name, data in parts.items()},
    }
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
            for name, data in parts.items():
                zf.writestr(name, data)
        os.replace(tmp, path)  # never leave a half-written artifact under the final name
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ArtifactError(f"cannot write artifact {path!r}: {exc.strerror or exc}") from None
    return path


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
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path!r} has artifact format version {version!r}; this graphc reads version "
                            f"{FORMAT_VERSION}: recompile the model with this graphc")
    if not isinstance(manifest.get("parts"), dict) or "model.onnx" not in manifest["parts"]:
        raise ArtifactError(f"{path!r}: manifest lists no model part")
    return manifest


def read_part(zf: zipfile.ZipFile, manifest: dict, name: str, path: str) -> bytes:
    meta = manifest["parts"].get(name)
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
        raise ArtifactError(f"{path!r}: manifest has no checksum for part {name!r}")
    try:
        info = zf.getinfo(name)
        if info.file_size != meta.get("size"):
            raise ArtifactError(f"{path!r}: part {name!r} is {info.file_size} bytes, manifest says {meta.get('size')}")
        data = zf.read(name)
    except KeyError:
        raise ArtifactError(f"{path!r}: part {name!r} is missing") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArtifactError(f"{path!r}: part {name!r} cannot be read ({exc})") from None
    if _sha256(data) != meta["sha256"]:
        raise ArtifactError(f"{path!r}: part {name!r} fails its SHA-256 check (corrupted or tampered with)")
    return data


def load_artifact(path: str | os.PathLike):
    from .errors import ModelLoadError
    from .frontend.onnx_import import _parse
    from .options import CompileOptions
    from .pipeline import compile_proto

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"artifact {path!r} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = read_manifest(zf, path)
            model_bytes = read_part(zf, manifest, "model.onnx", path)
    except zipfile.BadZipFile:
        raise ArtifactError(f"{path!r} is not a graphc artifact (not a zip archive, or truncated)") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path!r}: {exc.strerror or exc}") from None
    options = manifest.get("options") or {}
    if not isinstance(options, dict):
        raise ArtifactError(f"{path!r}: manifest options are not an object")
    try:
        opts = CompileOptions.build(**options)
        proto = _parse(model_bytes, path)
    except ModelLoadError as exc:
        raise ArtifactError(f"{path!r}: stored model is unreadable: {exc}") from None
    except GraphcError as exc:
        raise ArtifactError(f"{path!r} was compiled with options this graphc cannot use: {exc}") from None
    return compile_proto(proto, None, manifest.get("source", path), opts)
