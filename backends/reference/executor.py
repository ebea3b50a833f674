"""Interpreter over the graphc IR (the shape of torch.fx's Interpreter, for a graph of ONNX ops)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np

from ...errors import ExecutionError, GraphcError
from ...ir.graph import Graph, Node, node_reads
from ...ops import OpContext, lookup
from ...plan import Plan
from ...plan.memory import MemoryPlan, memory_plan_of


@dataclass
class _Step:
    node: Node
    ctx: OpContext
    inputs: list  # Value or None
    outputs: list  # Value or None
    frees: list  # Values whose last reader is this step
    has_subgraphs: bool


class _Env(dict):
    """Values by id; a subgraph's environment falls back to its enclosing graph's (outer-scope reads)."""

    def __init__(self, parent: "_Env | None" = None):
        super().__init__()
        self.parent = parent

    def __missing__(self, key):
        if self.parent is None:
            raise KeyError(key)
        return self.parent[key]


def bf16_operands(args: list) -> list:
    """The inputs of a node the precision pass marked ``bf16``: its two matrix operands (MatMul/Gemm A and B,
    Conv X and W) rounded to bfloat16 (nearest even) and widened back, so that numpy's float32 product
    accumulates exactly the values a bf16 dot product multiplies. Bias and other inputs are left alone."""
    from ml_dtypes import bfloat16

    out = list(args)
    for i in (0, 1):
        x = out[i] if i < len(out) else None
        if isinstance(x, np.ndarray) and x.dtype == np.float32:
            out[i] = x.astype(bfloat16).astype(np.float32)
    return out


class _Program:
    """One graph prepared for repeated execution: op contexts resolved, frees computed once."""

    def __init__(self, graph: Graph, emulate_precision: bool = True):
        self.graph = graph
        # honour the precision pass's marks; False runs every node in its storage types (float32): the
        # baseline that mixed-precision errors are measured against
        self.emulate_precision = emulate_precision
        self.steps: list[_Step] = []
        keep = {id(v) for v in graph.outputs}
        last_reader: dict[int, int] = {}
        for i, node in enumerate(graph.nodes):
            for v in node_reads(node):
                last_reader[id(v)] = i
        frees_at: dict[int, list] = {}
        local = {id(v) for v in graph.values() if not v.is_constant}
        for node in graph.nodes:
            for v in node_reads(node):
                if id(v) in local and id(v) not in keep:
                    frees_at.setdefault(last_reader[id(v)], {})[id(v)] = v
        for i, node in enumerate(graph.nodes):
            opdef = lookup(node.domain, node.op_type)
            if opdef is None:
                raise ExecutionError(f"no reference kernel for {node.op_type}")
            self.steps.append(_Step(node, OpContext(node, opdef), list(node.inputs), list(node.outputs),
                                    list(frees_at.get(i, {}).values()), bool(node.subgraphs())))
        self.subprograms: dict[int, _Program] = {}

    def subprogram(self, graph: Graph) -> "_Program":
        prog = self.subprograms.get(id(graph))
        if prog is None:
            prog = self.subprograms[id(graph)] = _Program(graph, self.emulate_precision)
        return prog

    def run(self, inputs: list, parent_env: _Env | None = None, memory_plan: MemoryPlan | None = None) -> list:
        graph = self.graph
        env = _Env(parent_env)
        if len(inputs) != len(graph.inputs):
            raise ExecutionError(f"graph {graph.name!r} takes {len(graph.inputs)} inputs, got {len(inputs)}")
        for v, x in zip(graph.inputs, inputs):
            env[id(v)] = x
        for v in graph.initializers.values():
            env[id(v)] = v.const
        arena = _Arena(memory_plan, graph, inputs) if memory_plan is not None else None
        for step in self.steps:
            args = [env[id(v)] if v is not None else None for v in step.inputs]
            ctx = step.ctx
            if step.has_subgraphs:
                ctx = copy.copy(ctx)
                ctx.subgraph_runner = lambda g, xs, _env=env: self.subprogram(g).run(list(xs), _env)
            results = self._call(step, ctx, args, self.emulate_precision)
            if arena is not None:
                results = [arena.store(step.node, v, r) if v is not None else r for v, r in zip(step.outputs, results)]
            for v, r in zip(step.outputs, results):
                if v is not None:
                    env[id(v)] = r
            for v in step.frees:
                env.pop(id(v), None)
        # a graph output that is a weight (constant folding makes those) is copied: the caller owns its outputs
        return [v.const.copy() if v.is_constant and isinstance(v.const, np.ndarray) else env[id(v)]
                for v in graph.outputs]

    @staticmethod
    def _call(step: _Step, ctx: OpContext, args: list, emulate_precision: bool = True) -> list:
        node = step.node
        if emulate_precision and node.meta.get("precision") == "bf16":
            args = bf16_operands(args)
        try:
            out = ctx.opdef.compute(ctx, *args)
        except GraphcError:
            raise
        except MemoryError:
            raise ExecutionError(f"{node.op_type} node {node.name!r} ran out of memory") from None
        except Exception as exc:
            raise ExecutionError(f"{node.op_type} node {node.name!r} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, (list, tuple)):
            out = [out]
        if len(out) < sum(v is not None for v in step.outputs):
            raise ExecutionError(f"{node.op_type} node {node.name!r} produced {len(out)} output(s) where the model "
                                 f"expects {len(step.outputs)}")
        return [np.asarray(r) if isinstance(r, np.generic) else r for r in out]


class _Arena:
    """Arena execution (``GRAPHC_ARENA=1`` or the compile option ``execute_in_arena=True``): one byte array of
    the planned size per run; every planned value is copied into its slot right after its node ran, and its
    readers get the view of that slot. Slower than the plain interpreter, but it proves the plan: were two
    buffers live at once to overlap, the later write would change what an earlier value's readers see, and
    the outputs would differ. Values outside the plan (graph outputs, unplanned values) never alias the arena.
    """

    def __init__(self, memory_plan: MemoryPlan, graph: Graph, inputs: list):
        bindings: dict[str, int] = {}
        for v, x in zip(graph.inputs, inputs):
            shape = getattr(getattr(v, "type", None), "shape", None)
            if shape is not None and hasattr(x, "shape") and len(shape) == len(x.shape):
                bindings.update({d: int(n) for d, n in zip(shape, x.shape) if isinstance(d, str)})
        try:
            plan = memory_plan.at(bindings)
        except KeyError as exc:
            raise ExecutionError(f"arena execution: symbolic dim {exc.args[0]!r} is not bound by the inputs") from None
        self.plan = plan
        self.buffers = plan.by_value()
        self.memory = np.empty(plan.arena_bytes, np.uint8)

    def store(self, node: Node, value, result):
        buf = self.buffers.get(value.name)
        if buf is None:  # not planned: keep the result, but never as a view of the arena
            if isinstance(result, np.ndarray) and np.may_share_memory(result, self.memory):
                return result.copy()
            return result
        result = np.asarray(result)
        if result.nbytes != buf.size:
            raise ExecutionError(f"arena execution: {node.op_type} node {node.name!r} wrote {result.nbytes} bytes "
                                 f"for {value.name!r}, the plan holds {buf.size}")
        view = self.memory[buf.offset:buf.offset + buf.size].view(result.dtype).reshape(result.shape)
        np.copyto(view, result)
        return view


def _arena_requested(plan: Plan) -> bool:
    env = os.environ.get("GRAPHC_ARENA", "").strip().lower() in {"1", "true", "yes", "on"}
    return env or bool(plan.options.get("execute_in_arena"))


class ReferenceExecutable:
    """Runs a plan with the reference kernels. ``emulate_precision=False`` ignores the precision pass's marks
    (the float32 baseline of a mixed-precision plan)."""

    def __init__(self, plan: Plan, emulate_precision: bool = True):
        self.plan = plan
        self._program = _Program(plan.graph, emulate_precision)
        self.memory_plan = memory_plan_of(plan) if _arena_requested(plan) else None

    def run(self, inputs: list) -> list:
        with np.errstate(all="ignore"):
            return self._program.run(list(inputs), memory_plan=self.memory_plan)


def compile(plan: Plan) -> ReferenceExecutable:
    return ReferenceExecutable(plan)
