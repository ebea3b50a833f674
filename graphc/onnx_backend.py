"""``graphc.onnx_backend``: graphc behind ONNX's ``onnx.backend.base.Backend`` interface.

This is how the ONNX backend test suite drives graphc. The target comes from the environment variable
``GRAPHC_TARGET`` (default: the best target this build has, see :func:`graphc.options.default_target`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType

from .options import CompileOptions, default_target
from .pipeline import compile_proto


def target() -> str:
    return os.environ.get("GRAPHC_TARGET") or default_target()


class GraphcRep(BackendRep):
    def __init__(self, compiled):
        self.compiled = compiled

    def run(self, inputs: Any, **kwargs: Any) -> tuple:
        names = self.compiled.input_names
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feeds = dict(zip(names, inputs))
        out = self.compiled.run(feeds)
        return tuple(out[n] for n in self.compiled.output_names)


class GraphcBackend(Backend):
    @classmethod
    def supports_device(cls, device: str) -> bool:
        kind = Device(device).type
        if kind == DeviceType.CPU:
            return target() in ("reference", "llvm")
        if kind == DeviceType.CUDA:
            return target() == "cuda"
        return False

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> GraphcRep:
        opts = CompileOptions.build(target=target())
        return GraphcRep(compile_proto(model, None, "<onnx backend>", opts))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU", outputs_info=None,
                 **kwargs: Any) -> tuple:
        """Run a single node: wrap it in a one-node model with the given inputs' types."""
        arrays = [np.asarray(x) for x in inputs]
        graph_inputs = [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype),
                                                           a.shape)
                        for name, a in zip(node.input, arrays) if name]
        graph_outputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
                         for name in node.output if name]
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = onnx.helper.make_model(
            onnx.helper.make_graph([node], "run_node", graph_inputs, graph_outputs),
            opset_imports=[onnx.helper.make_opsetid(node.domain or "", opset)])
        rep = cls.prepare(model, device)
        return rep.run([a for name, a in zip(node.input, arrays) if name])


prepare = GraphcBackend.prepare
run_model = GraphcBackend.run_model
run_node = GraphcBackend.run_node
supports_device = GraphcBackend.supports_device
