"""The ONNX backend test suite (node, real, simple, pytorch-converted, pytorch-operator) through graphc.

The target is ``GRAPHC_TARGET`` (see graphc.onnx_backend). Exclusions: tests/conformance_exclusions.txt, exact
names with reasons. The real models are marked ``slow``.
"""

from __future__ import annotations

import os
import re
import warnings

import pytest

warnings.filterwarnings("ignore", category=RuntimeWarning)  # the suite's own generators overflow on purpose

import onnx.backend.test  # noqa: E402

import graphc.onnx_backend  # noqa: E402
from tests.conformance import load_exclusions  # noqa: E402

EXCLUDED = load_exclusions()

backend_test = onnx.backend.test.BackendTest(graphc.onnx_backend, __name__)
for _name in EXCLUDED:
    backend_test.exclude("^" + re.escape(_name) + "_(cpu|cuda)$")

_cases = backend_test.test_cases
globals().update(_cases)
for _case in _cases.values():
    if _case.__name__ == "OnnxBackendRealModelTest":
        _case.pytestmark = [pytest.mark.slow]


def test_exclusions_name_real_tests():
    """Every exclusion names a test that exists (a stale line hides nothing)."""
    from onnx.backend.test.loader import load_model_tests

    names = set()
    for kind in ("node", "real", "simple", "pytorch-converted", "pytorch-operator"):
        names.update(t.name for t in load_model_tests(kind=kind))
    stale = sorted(set(EXCLUDED) - names)
    assert not stale, f"exclusions naming no test: {stale}"
