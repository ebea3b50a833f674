"""The compile pipeline: source -> ONNX -> IR -> passes -> plan -> backend executable."""

from __future__ import annotations

import time
from typing import Any

from .compiled import CompiledModel
from .frontend import import_onnx
from .options import CompileOptions
from .plan import Plan
from .sources import ResolvedModel, resolve


def compile_model(model: Any, opts: CompileOptions) -> CompiledModel:
    start = time.perf_counter()
    return compile_resolved(resolve(model, opts.example_inputs), opts, start)


def compile_proto(proto, base_dir, source: str, opts: CompileOptions, start: float | None = None) -> CompiledModel:
    """Compile a ModelProto the caller holds (and keeps: it becomes ``source_model``)."""
    return compile_resolved(ResolvedModel(proto, base_dir, source), opts, start)


def compile_resolved(resolved: ResolvedModel, opts: CompileOptions, start: float | None = None) -> CompiledModel:
    """Compile a resolved model. A proto graphc read from a file itself is dropped as soon as its weights are in
    the graph (``resolved.release()``): the passes and the backend then run without it (on ResNet-50 it is as
    large as the weights), and ``source_model`` reads the file again if asked."""
    from .backends import get_backend
    from .passes import PassContext, PassManager, resolve_pipeline

    start = time.perf_counter() if start is None else start
    backend = get_backend(opts.target)
    graph = import_onnx(resolved.proto, resolved.base_dir)
    source_model = resolved.release()
    imported_nodes = sum(1 for _ in graph.walk())
    options = opts.to_json()
    ctx = PassContext(target=opts.target, precision=opts.precision, devices=opts.devices, options=options,
                      verify=opts.verify or None, properties={"shapes_inferred"})
    pipeline = resolve_pipeline(opts.target, {**options, "passes": opts.passes or None})
    result = PassManager(pipeline, verify=ctx.verify).run(graph, ctx)
    plan = Plan(graph=graph, target=opts.target, options=options,
                decisions=[d.to_dict() for d in ctx.decisions], pipeline=result.to_dict())
    if len(opts.devices) > 1:  # partitioned: one worker process per device (graphc/runtime/multidevice.py)
        from .runtime.multidevice import compile_plan

        executable = compile_plan(plan)
    else:
        executable = backend.compile(plan)
    if opts.precision != "fp32" and opts.extra.get("precision_check", True):
        from .precision import record_error

        record_error(plan, executable)
    return CompiledModel(plan=plan, executable=executable, source_model=source_model, source=resolved.source,
                         options=opts, imported_nodes=imported_nodes, compile_seconds=time.perf_counter() - start)
