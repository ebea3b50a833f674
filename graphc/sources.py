"""Turning whatever the user handed to ``compile`` into an ONNX ModelProto (and its directory)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from typing import Any

import onnx

from .errors import ModelLoadError, OptionError
from .frontend import load_model_proto, read_model_file


class ModelFile:
    """The .onnx file a model was compiled from, standing in for its ModelProto once the weights are in the
    graph: ``compile`` drops the proto it parsed itself (as large as the weights: 100 MB on ResNet-50) before the
    passes and the backend run, and this reads the file again when the source model is asked for (``save()``,
    ``graphc bench --vs onnxruntime``), refusing bytes that are not the ones compiled.

    Like the artifact's ``StoredModel`` it offers ``SerializeToString()`` (the file's bytes, not kept) and the
    ModelProto's attributes (parsed once, on first use, then kept).
    """

    def __init__(self, path: str, sha256: str):
        self.path = path
        self.sha256 = sha256
        self._stat = _identity(path)
        self._proto: onnx.ModelProto | None = None

    def unchanged(self) -> bool:
        """Whether the file still looks like the one compiled (same inode, size and modification time); the
        bytes themselves are checked against the SHA-256 whenever they are read."""
        return self._proto is not None or _identity(self.path) == self._stat

    def SerializeToString(self, **_ignored: Any) -> bytes:  # noqa: N802 - the protobuf name, so callers take either
        if self._proto is not None:  # parsed (and checked) already: the file may have moved on since
            return self._proto.SerializeToString()
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ModelLoadError(f"cannot read the source model {self.path!r} again: {exc.strerror or exc}") from None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ModelLoadError(f"model file {self.path!r} changed since it was compiled: the compiled model no "
                                 "longer has its source model (compile it again to keep one)")
        return data

    @property
    def proto(self) -> onnx.ModelProto:
        if self._proto is None:
            from .frontend.onnx_import import _parse

            self._proto = _parse(self.SerializeToString(), self.path)
        return self._proto

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.proto, name)

    def __repr__(self) -> str:
        return f"<ModelFile {self.path!r} sha256={self.sha256[:12]}>"


def _identity(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclasses.dataclass
class ResolvedModel:
    """What ``compile`` got, as an ONNX model: the proto, the directory for external data, a short description
    of the source, and -- when graphc read the proto from a file itself, so that nobody else holds it -- that
    file, which :meth:`release` then keeps instead of the proto."""

    proto: onnx.ModelProto | None
    base_dir: str | None
    source: str
    file: ModelFile | None = None

    def release(self):
        """The source model to keep once the graph is imported: the file (the proto is dropped) or the proto."""
        if self.file is None:
            return self.proto
        self.proto = None
        return self.file


def resolve(model: Any, example_inputs: Any = None) -> ResolvedModel:
    """Turn whatever the user handed to ``compile`` into a :class:`ResolvedModel`."""
    if isinstance(model, str) and model.startswith("zoo:"):
        from . import zoo

        name = model[len("zoo:"):]
        return ResolvedModel(zoo.load(name), None, model)
    if _is_torch_module(model):
        return ResolvedModel(export_torch(model, example_inputs), None, f"torch:{type(model).__name__}")
    if isinstance(model, (str, os.PathLike)):
        proto, base, digest = read_model_file(model)
        return ResolvedModel(proto, base, os.fspath(model), ModelFile(os.path.abspath(model), digest))
    if isinstance(model, (onnx.ModelProto, bytes, bytearray, memoryview)):
        proto, base = load_model_proto(model)
        return ResolvedModel(proto, base, "<model>")
    raise ModelLoadError(f"cannot compile a {type(model).__name__}: give a path, an onnx.ModelProto, bytes, "
                         "'zoo:NAME' or a torch.nn.Module with example_inputs=")


def resolve_model(model: Any, example_inputs: Any = None) -> tuple[onnx.ModelProto, str | None, str]:
    """Return (ModelProto, directory for external data, a short description of the source)."""
    resolved = resolve(model, example_inputs)
    return resolved.proto, resolved.base_dir, resolved.source


def _is_torch_module(obj: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__)


def export_torch(module: Any, example_inputs: Any) -> onnx.ModelProto:
    """Export a torch.nn.Module to ONNX through ``torch.onnx`` (torch is an optional extra)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - a torch module without torch cannot exist
        raise OptionError("compiling a torch module needs torch: pip install 'graphc[torch]'") from None
    if example_inputs is None:
        raise OptionError("compiling a torch.nn.Module needs example_inputs=(tensor, ...) to trace it")
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    example_inputs = tuple(torch.as_tensor(x) for x in example_inputs)
    buffer = io.BytesIO()
    module = module.eval()
    # torch's fused inference kernels (the "fast path" of nn.MultiheadAttention / TransformerEncoderLayer) have
    # no ONNX form; exporting the plain composition is what a compiler wants anyway
    mha = getattr(torch.backends, "mha", None)
    fastpath = mha.get_fastpath_enabled() if mha is not None else None
    try:
        if mha is not None:
            mha.set_fastpath_enabled(False)
        with torch.no_grad():
            torch.onnx.export(module, example_inputs, buffer, dynamo=False,
                              input_names=[f"input_{i}" for i in range(len(example_inputs))])
    except Exception as exc:
        message = " ".join(str(exc).split())[:400]
        raise ModelLoadError(f"torch.onnx.export failed for {type(module).__name__}: {message}") from exc
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(fastpath)
    return onnx.load_from_string(buffer.getvalue())
