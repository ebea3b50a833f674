"""CompiledModel: what ``graphc.compile`` returns."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from .errors import InputError
from .ir.graph import Graph
from .plan import Plan
from .report import build_report
from .runtime import check_inputs


class CompiledModel:
    """A model compiled for one target. Call it with arrays in input order or ``run`` it with a dict."""

    def __init__(self, *, plan: Plan, executable: Any, source_model: Any, source: str, options: Any,
                 imported_nodes: int, compile_seconds: float):
        self.plan = plan
        self.executable = executable
        self.options = options
        self.source = source
        # the ONNX ModelProto, kept for save() and comparisons; a graphc.sources.ModelFile when graphc read it
        # from a file itself (then the file is read again when asked for, see source_model)
        self._source_model = source_model
        self._imported_nodes = imported_nodes
        self.compile_seconds = compile_seconds
        graph = plan.graph
        self._input_types = [v.type for v in graph.inputs]
        self._report: dict | None = None
        self.cache_info: dict | None = None  # set by graphc.cache: hit or miss, key, entry path

    @property
    def graph(self) -> Graph:
        return self.plan.graph

    @property
    def target(self) -> str:
        return self.plan.target

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.plan.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.plan.graph.outputs]

    @property
    def input_types(self) -> dict[str, str]:
        return {v.name: str(v.type) for v in self.plan.graph.inputs}

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run on ``{input name: array}``; return ``{output name: array}``."""
        values = check_inputs(self.input_names, self._input_types, feeds)
        outputs = self.executable.run(values)
        return dict(zip(self.output_names, outputs))

    def __call__(self, *arrays: Any) -> list[np.ndarray] | np.ndarray:
        """Run on arrays given in graph-input order; one output comes back bare, several as a list."""
        if len(arrays) != len(self.input_names):
            raise InputError(f"the model takes {len(self.input_names)} input(s) {self.input_names}, "
                             f"got {len(arrays)}")
        out = self.run(dict(zip(self.input_names, arrays)))
        values = [out[n] for n in self.output_names]
        return values[0] if len(values) == 1 else values

    def report(self) -> dict:
        """What graphc did: node and kernel counts, fallbacks, memory, FLOPs, pass decisions."""
        if self._report is None:
            self._report = build_report(self.plan, self._imported_nodes, self.compile_seconds, self.executable)
            self._report["cache"] = self.cache_info
        return self._report

    def save(self, path: str | os.PathLike) -> str:
        """Write a self-contained artifact (``.gcx``) that ``graphc.load`` reads back."""
        from .artifact import save_artifact

        return save_artifact(self, path)

    @property
    def source_model(self):
        """The ONNX model compiled: a ModelProto, or (compiled from a path, or loaded from an artifact) a stand-in
        with ``SerializeToString()`` and the proto's attributes that reads it when used. None when there is
        none: an artifact saved without it, or a model file changed or removed since it was compiled."""
        from .sources import ModelFile

        model = self._source_model
        if isinstance(model, ModelFile) and not model.unchanged():
            return None
        return model

    def __repr__(self) -> str:
        sig = ", ".join(f"{n}: {t}" for n, t in self.input_types.items())
        return f"<CompiledModel {self.source!r} target={self.target} ({sig})>"
