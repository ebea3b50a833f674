"""Shared helpers of the pass tests: small hand-built graphs and whether the op registry knows their ops."""

from __future__ import annotations

import numpy as np
import pytest

from graphc.ir import Graph, TensorType


def _ops_registered(*ops: str) -> bool:
    try:
        from graphc.ops import registry
    except Exception:
        return False
    return all(registry.lookup("", op) is not None for op in ops)


#: verify(check_ops=...) only once the op registry holds the ops these tests use
CHECK_OPS = _ops_registered("Relu", "Add", "Mul", "If", "Neg")

F32 = TensorType(np.float32, (2, 3))


@pytest.fixture
def check_ops() -> bool:
    return CHECK_OPS


@pytest.fixture
def chain() -> Graph:
    """x -> Relu -> Add(x) -> output, plus a dead branch Mul(x, x) -> Neg."""
    g = Graph("chain")
    x = g.add_input("x", F32)
    r = g.add_node("Relu", [x], name="relu").outputs[0]
    a = g.add_node("Add", [r, x], name="add").outputs[0]
    m = g.add_node("Mul", [x, x], name="dead_mul").outputs[0]
    g.add_node("Neg", [m], name="dead_neg")
    g.outputs = [a]
    return g
