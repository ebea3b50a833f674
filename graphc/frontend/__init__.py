"""Frontends: turning models from the outside world into graphc IR."""

from .onnx_import import check_model_proto, import_onnx, load_model_proto, load_onnx, read_model_file

__all__ = ["check_model_proto", "import_onnx", "load_model_proto", "load_onnx", "read_model_file"]
