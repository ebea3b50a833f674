"""Ops: control flow (If, Loop, Scan), which run subgraphs through ``ctx.run_subgraph``.

Subgraph attributes arrive as :class:`graphc.ir.Graph` objects. Values flowing through control flow may be
tensors, sequences (lists) or optionals (None when empty), so these ops always return a tuple of outputs and
never inspect carried values beyond what their semantics need.

Their ``infer`` rules check the subgraphs' signatures against the node (counts, and dtypes where both sides are
known) so that a malformed model fails at compile time, and derive output types from the subgraphs.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph
from ..ir.types import TensorType
from .registry import FusionClass, OpContext, OpDef, register


class _ControlFlow(OpDef):
    fusion = FusionClass.OPAQUE


def _dtype(t) -> np.dtype | None:
    return t.dtype if isinstance(t, TensorType) else None


def _check_count(ctx: OpContext, what: str, got: int, want: int) -> None:
    if got != want:
        raise ctx.shape_error(f"{what} has {got}, the node needs {want}")


def _check_same_dtype(ctx: OpContext, what: str, a, b) -> None:
    da, db = _dtype(a), _dtype(b)
    if da is not None and db is not None and da != db:
        raise ctx.shape_error(f"{what}: {da.name} against {db.name}")


def _join(a, b):
    """The type of a value that is either ``a`` or ``b`` (If's outputs): dims kept where both agree."""
    if not isinstance(a, TensorType) or not isinstance(b, TensorType) or a.dtype != b.dtype:
        return None
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return TensorType(a.dtype, None)
    return TensorType(a.dtype, tuple(x if x == y else None for x, y in zip(a.shape, b.shape)))


def _stack_scan_outputs(ctx: OpContext, per_iteration: list[list], body: Graph, first: int, axes=None,
                        reverse=None) -> list[np.ndarray]:
    """Stack each scan output over the iterations (along ``axes[k]``, newest first where ``reverse[k]``).

    ``per_iteration[i]`` holds iteration i's scan outputs; body output ``first + k`` declares output k's type,
    which gives the dtype and element shape of an output when there were no iterations.
    """
    count = len(body.outputs) - first
    stacked = []
    for k in range(count):
        values = [outs[k] for outs in per_iteration]
        if reverse is not None and reverse[k]:
            values = values[::-1]
        if values:
            shapes = {np.shape(v) for v in values}
            if len(shapes) > 1:
                raise ctx.fail(f"scan output {k} changes shape between iterations: {sorted(shapes)}")
            out = np.stack([np.asarray(v) for v in values])
        else:
            declared = body.outputs[first + k].type
            elem_shape, dtype = (), np.float32
            if isinstance(declared, TensorType):
                dtype = declared.dtype if declared.dtype is not None else dtype
                if declared.shape is not None and all(isinstance(d, int) for d in declared.shape):
                    elem_shape = declared.shape
            out = np.zeros((0,) + tuple(elem_shape), dtype)
        if axes is not None and axes[k] != 0:
            axis = axes[k] + out.ndim if axes[k] < 0 else axes[k]
            out = np.moveaxis(out, 0, axis)
        stacked.append(out)
    return stacked


@register
class If(_ControlFlow):
    op_type = "If"

    def infer(self, ctx):
        then_g, else_g = ctx.attrs.get("then_branch"), ctx.attrs.get("else_branch")
        if not isinstance(then_g, Graph) or not isinstance(else_g, Graph):
            raise ctx.shape_error("needs graph attributes then_branch and else_branch")
        for name, branch in (("then_branch", then_g), ("else_branch", else_g)):
            _check_count(ctx, f"{name}'s inputs", len(branch.inputs), 0)
            _check_count(ctx, f"{name}'s outputs", len(branch.outputs), ctx.num_outputs)
        for i, (a, b) in enumerate(zip(then_g.outputs, else_g.outputs)):
            _check_same_dtype(ctx, f"output {i} differs between the branches", a.type, b.type)
        return [_join(a.type, b.type) for a, b in zip(then_g.outputs, else_g.outputs)]

    def compute(self, ctx, cond):
        branch = ctx.attrs["then_branch"] if bool(np.asarray(cond).reshape(-1)[0]) else ctx.attrs["else_branch"]
        return tuple(ctx.run_subgraph(branch, []))


@register
class Loop(_ControlFlow):
    """``for i in range(M) while cond``: the body maps (i, cond, carried...) to (cond, carried..., scans...).

    Both M and cond are optional; scan outputs are stacked along a new first axis.
    """

    op_type = "Loop"

    def infer(self, ctx):
        body = ctx.attrs.get("body")
        if not isinstance(body, Graph):
            raise ctx.shape_error("needs a graph attribute 'body'")
        carried = ctx.num_inputs - 2
        if carried < 0:
            raise ctx.shape_error("needs the inputs M and cond (either may be empty)")
        _check_count(ctx, "the body's inputs (iteration, condition, carried values)", len(body.inputs), 2 + carried)
        scans = len(body.outputs) - 1 - carried
        if scans < 0:
            raise ctx.shape_error(f"the body returns {len(body.outputs)} values, fewer than its condition and "
                                  f"{carried} carried value(s)")
        _check_count(ctx, "the node's outputs", ctx.num_outputs, carried + scans)
        for i in range(carried):
            value_in = ctx.node.inputs[2 + i]
            _check_same_dtype(ctx, f"carried value {i} changes dtype in the body",
                              value_in.type if value_in is not None else None, body.outputs[1 + i].type)
        types = [TensorType(_dtype(body.outputs[1 + i].type), None) if _dtype(body.outputs[1 + i].type) else None
                 for i in range(carried)]
        for k in range(scans):
            t = body.outputs[1 + carried + k].type
            shape = None if not isinstance(t, TensorType) or t.shape is None else (None,) + tuple(t.shape)
            types.append(TensorType(_dtype(t), shape) if _dtype(t) is not None else None)
        return types

    def compute(self, ctx, max_trip=None, cond=None, *carried):
        body = ctx.attrs["body"]
        trips = None if max_trip is None else int(np.asarray(max_trip).reshape(()))
        keep_going = True if cond is None else bool(np.asarray(cond).reshape(()))
        carried = list(carried)
        per_iteration = []
        i = 0
        while keep_going and (trips is None or i < trips):
            outputs = ctx.run_subgraph(body, [np.asarray(i, np.int64), np.asarray(keep_going)] + carried)
            keep_going = bool(np.asarray(outputs[0]).reshape(()))
            carried = list(outputs[1:1 + len(carried)])
            per_iteration.append(outputs[1 + len(carried):])
            i += 1
        return tuple(carried + _stack_scan_outputs(ctx, per_iteration, body, 1 + len(carried)))


@register
class Scan(_ControlFlow):
    """Iterate ``body`` over slices of the scan inputs, threading state variables through.

    Opset 8 has a leading batch axis on every input and output, scans axis 1 of the scan inputs and takes an
    optional ``sequence_lens`` first input (shorter entries get zero-padded scan outputs). Opset 9 dropped the
    batch axis and ``sequence_lens`` and added per-input/per-output axes and directions.
    """

    op_type = "Scan"

    def compute(self, ctx, *inputs):
        body = ctx.attrs["body"]
        num_scan = ctx.attr("num_scan_inputs")
        if ctx.opset < 9:
            return self._compute_batched(ctx, body, num_scan, inputs[0], list(inputs[1:]))
        num_states = len(inputs) - num_scan
        states, scans = list(inputs[:num_states]), list(inputs[num_states:])
        in_axes = ctx.attr("scan_input_axes") or [0] * num_scan
        in_dirs = ctx.attr("scan_input_directions") or [0] * num_scan
        num_scan_out = len(body.outputs) - num_states
        out_axes = ctx.attr("scan_output_axes") or [0] * num_scan_out
        out_dirs = ctx.attr("scan_output_directions") or [0] * num_scan_out
        # bring each scan axis to the front, reversed where its direction says so
        scans = [np.moveaxis(x, axis, 0) for x, axis in zip(scans, in_axes)]
        scans = [x[::-1] if d else x for x, d in zip(scans, in_dirs)]
        states, stacked = self._run(ctx, body, states, scans, num_states)
        stacked = _stack_scan_outputs(ctx, stacked, body, num_states, out_axes, out_dirs)
        return tuple(states + stacked)

    def _run(self, ctx, body, states, scans, num_states):
        """Run the body over the first axis of ``scans``; returns the final states and per-step scan outputs."""
        lengths = {x.shape[0] for x in scans}
        if len(lengths) > 1:
            raise ctx.fail(f"scan inputs have different lengths along their scan axes: {sorted(lengths)}")
        per_iteration = []
        for t in range(lengths.pop() if lengths else 0):
            outputs = ctx.run_subgraph(body, states + [x[t] for x in scans])
            states = list(outputs[:num_states])
            per_iteration.append(outputs[num_states:])
        return states, per_iteration

    def _compute_batched(self, ctx, body, num_scan, sequence_lens, inputs):
        num_states = len(inputs) - num_scan
        dirs = ctx.attr("directions") or [0] * num_scan
        batch = inputs[0].shape[0]
        max_len = inputs[num_states].shape[1] if num_scan else 0
        final_states, scan_outputs = [], []
        for b in range(batch):
            length = max_len if sequence_lens is None else int(sequence_lens[b])
            scans = [x[b, :length] for x in inputs[num_states:]]
            scans = [x[::-1] if d else x for x, d in zip(scans, dirs)]
            states, per_iteration = self._run(ctx, body, [x[b] for x in inputs[:num_states]], scans, num_states)
            stacked = _stack_scan_outputs(ctx, per_iteration, body, num_states)
            if length < max_len:  # pad the scan outputs of shorter entries with zeros
                stacked = [np.concatenate([s, np.zeros((max_len - length,) + s.shape[1:], s.dtype)]) for s in stacked]
            final_states.append(states)
            scan_outputs.append(stacked)
        outputs = [np.stack([s[k] for s in final_states]) for k in range(num_states)]
        outputs += [np.stack([s[k] for s in scan_outputs]) for k in range(len(body.outputs) - num_states)]
        return tuple(outputs)
