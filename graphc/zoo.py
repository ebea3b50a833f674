"""The light model zoo that ships inside the ``onnx`` package, addressable as ``"zoo:NAME"``.

These models carry no trained weights: every weight is made by a ``ConstantOfShape`` filling 0.02, so their
outputs are uniform. For correctness checks use ``load(name, weights="random", seed=0)``, which replaces each
of those weights by seeded random values scaled the way real weights are (He initialisation; BatchNorm
variances positive), so that a wrong kernel shows up as a wrong output.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ModelLoadError

MODELS = ("resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet", "vgg19",
          "bvlc_alexnet", "zfnet512")
_ALIASES = {"alexnet": "bvlc_alexnet", "zfnet": "zfnet512"}


def path(name: str) -> str:
    name = _ALIASES.get(name, name)
    if name not in MODELS:
        raise ModelLoadError(f"unknown zoo model {name!r}; available: {', '.join(MODELS)}")
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    file = os.path.join(root, f"light_{name}.onnx")
    if not os.path.isfile(file):
        raise ModelLoadError(f"zoo model {name!r} not found in the installed onnx package ({file})")
    return file


def load(name: str, weights: str = "constant", seed: int = 0) -> onnx.ModelProto:
    """The zoo model ``name``; ``weights="random"`` gives a copy with seeded random weights."""
    model = onnx.load(path(name))
    if weights == "constant":
        return model
    if weights != "random":
        raise ModelLoadError(f"weights must be 'constant' or 'random', got {weights!r}")
    return randomize_weights(model, seed)


def _weight_role(name: str, consumers: dict[str, list[tuple[onnx.NodeProto, int]]]) -> str:
    for node, index in consumers.get(name, []):
        if node.op_type == "BatchNormalization":
            return {1: "bn_scale", 2: "bn_bias", 3: "bn_mean", 4: "bn_var"}.get(index, "bias")
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and index == 1:
            return "gemm_b" if node.op_type == "Gemm" and _attr(node, "transB", 0) == 0 else "weight"
    return "bias"


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace every constant-filled weight (``ConstantOfShape`` of a constant shape) by seeded random values."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_attr(node, "value", None))
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    kept = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in consts:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in consts[node.input[0]])
        out = node.output[0]
        role = _weight_role(out, consumers)
        if role == "weight":
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            values = rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
        elif role == "gemm_b":
            values = rng.standard_normal(shape) * np.sqrt(2.0 / max(shape[0], 1))
        elif role in ("bn_scale", "bn_var"):
            values = rng.uniform(0.5, 1.5, shape)
        else:
            values = rng.standard_normal(shape) * 0.1
        graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), out))
    del graph.node[:]
    graph.node.extend(kept)
    # Before IR 4 every initializer had to be a graph input too, which makes weights overridable inputs that
    # no engine may fold or prepack; the copy moves to IR 4 and lists only the real inputs.
    model.ir_version = max(model.ir_version, 4)
    weights = {t.name for t in graph.initializer}
    real_inputs = [vi for vi in graph.input if vi.name not in weights]
    del graph.input[:]
    graph.input.extend(real_inputs)
    return model


def without_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (changed in place and returned) with a trailing Softmax removed: its input becomes the graph
    output. Accuracy comparisons use the logits, because a saturated softmax hides their differences."""
    last = model.graph.node[-1] if model.graph.node else None
    if last is not None and last.op_type == "Softmax" and last.output[0] == model.graph.output[0].name:
        del model.graph.node[-1]
        model.graph.output[0].name = last.input[0]
    return model


def sample_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input of ``model`` (symbolic dims set to ``batch``)."""
    from .ir.types import dtype_from_onnx

    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim)
        dtype = dtype_from_onnx(tt.elem_type)
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds
