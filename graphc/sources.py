"""Turning whatever the user handed to ``compile`` into an ONNX ModelProto (and its directory)."""

from __future__ import annotations

import io
import os
from typing import Any

import onnx

from .errors import ModelLoadError, OptionError
from .frontend import load_model_proto


def resolve_model(model: Any, example_inputs: Any = None) -> tuple[onnx.ModelProto, str | None, str]:
    """Return (ModelProto, directory for external data, a short description of the source)."""
    if isinstance(model, str) and model.startswith("zoo:"):
        from . import zoo

        name = model[len("zoo:"):]
        return zoo.load(name), None, model
    if _is_torch_module(model):
        return export_torch(model, example_inputs), None, f"torch:{type(model).__name__}"
    if isinstance(model, (str, os.PathLike)):
        proto, base = load_model_proto(model)
        return proto, base, os.fspath(model)
    if isinstance(model, (onnx.ModelProto, bytes, bytearray, memoryview)):
        proto, base = load_model_proto(model)
        return proto, base, "<model>"
    raise ModelLoadError(f"cannot compile a {type(model).__name__}: give a path, an onnx.ModelProto, bytes, "
                         "'zoo:NAME' or a torch.nn.Module with example_inputs=")


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
