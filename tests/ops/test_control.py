"""Control flow and sequence ops, run with a Python stand-in for the subgraph runner so that the semantics of
the op itself (trip counts, scan axes and directions, empty scan outputs, sequence positions) are what is
tested."""

from functools import partial

import numpy as np
import pytest

from graphc.errors import ExecutionError
from graphc.ir import Graph, SequenceType, TensorType, Value

from tests.ops import util


def body_graph(output_types):
    """A subgraph that only declares its outputs' types (the stand-in runner computes the values)."""
    g = Graph("body")
    g.outputs = [Value(f"o{i}", t) for i, t in enumerate(output_types)]
    return g


run = partial(util.run, opset=17)


def test_loop_with_zero_trips_gives_typed_empty_scan_output():
    body = body_graph([TensorType(np.bool_, ()), TensorType(np.float32, (2,)), TensorType(np.int32, (3, 4))])
    carried, scan = run("Loop", np.array(0, np.int64), np.array(True), np.ones(2, np.float32),
                        attrs={"body": body}, subgraph_runner=lambda g, xs: pytest.fail("body must not run"),
                        num_outputs=2)
    np.testing.assert_array_equal(carried, np.ones(2, np.float32))
    assert scan.shape == (0, 3, 4) and scan.dtype == np.int32


def test_loop_without_trip_count_stops_on_condition_and_stacks_scan_outputs():
    def body(g, xs):
        i, _, total = xs
        return [np.array(i < 2), total + i, np.array([i, i * i])]

    outputs = run("Loop", None, np.array(True), np.array(0, np.int64),
                  attrs={"body": body_graph([None] * 3)}, subgraph_runner=body, num_outputs=2)
    total, scan = outputs
    assert total == 0 + 1 + 2
    np.testing.assert_array_equal(scan, [[0, 0], [1, 1], [2, 4]])


def test_loop_carries_sequences_unchanged_in_kind():
    def body(g, xs):
        i, cond, seq = xs
        return [cond, seq + [np.array(i)]]

    start = [np.zeros(1)]
    seq, = run("Loop", np.array(3, np.int64), None, start, attrs={"body": body_graph([None] * 2)}, subgraph_runner=body)
    assert isinstance(seq, list) and len(seq) == 4 and start == [0]


def test_scan9_axes_and_directions():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)  # scanned along axis 1 (3 steps), reversed

    def body(g, xs):
        state, column = xs
        return [state + column.sum(), column * 10]

    total, ys = run("Scan", np.array(0, np.float32), x,
                    attrs={"body": body_graph([None] * 2), "num_scan_inputs": 1, "scan_input_axes": [1],
                           "scan_input_directions": [1], "scan_output_axes": [1], "scan_output_directions": [1]},
                    opset=16, subgraph_runner=body, num_outputs=2)
    assert total == x.sum()
    # steps saw columns 2, 1, 0; the reversed output puts them back in order, stacked along axis 1
    np.testing.assert_array_equal(ys, x * 10)


def test_scan8_batch_axis_and_sequence_lens():
    x = np.arange(8, dtype=np.float32).reshape(2, 4, 1)

    def body(g, xs):
        state, item = xs
        return [state + item, state + item]

    final, running = run("Scan", np.array([4, 2]), np.zeros((2, 1), np.float32), x,
                         attrs={"body": body_graph([None] * 2), "num_scan_inputs": 1}, opset=8, subgraph_runner=body,
                         num_outputs=2)
    np.testing.assert_array_equal(final[:, 0], [0 + 1 + 2 + 3, 4 + 5])
    np.testing.assert_array_equal(running[1, :, 0], [4, 9, 0, 0])  # padded after length 2


def test_if_passes_sequences_through():
    then, other = body_graph([SequenceType(None)]), body_graph([SequenceType(None)])
    result, = run("If", np.array([False]), attrs={"then_branch": then, "else_branch": other},
                  subgraph_runner=lambda g, xs: [["then"] if g is then else ["else"]])
    assert result == ["else"]


def test_sequence_positions():
    a, b, c = (np.full(1, v) for v in (1, 2, 3))
    seq, = run("SequenceInsert", [a, b], c, np.array(-1))
    assert [int(x[0]) for x in seq] == [1, 3, 2]
    seq, = run("SequenceErase", [a, b, c])
    assert [int(x[0]) for x in seq] == [1, 2]
    assert run("SequenceAt", [a, b, c], np.array(-3)) is a
    with pytest.raises(ExecutionError):
        run("SequenceAt", [a, b], np.array(2))
    assert run("SequenceLength", [a, b]).dtype == np.int64


def test_split_to_sequence_scalar_split_leaves_a_shorter_tail():
    pieces, = run("SplitToSequence", np.arange(7), np.array(3))
    assert [len(p) for p in pieces] == [3, 3, 1]
    stacked = run("ConcatFromSequence", pieces[:2], attrs={"axis": -1, "new_axis": 1})
    assert stacked.shape == (3, 2)
