"""ONNX backend node tests that onnx's own runner cannot judge, compared here element by element."""

import warnings

import numpy as np
import pytest

import graphc.onnx_backend


def _case(name):
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    from onnx.backend.test.loader import load_model_tests

    return next(t for t in load_model_tests(kind="node") if t.name == name)


@pytest.mark.parametrize("name", ["test_loop16_seq_none"])
def test_sequence_outputs_match_elementwise(name, monkeypatch):
    monkeypatch.setenv("GRAPHC_TARGET", "reference")
    case = _case(name)
    rep = graphc.onnx_backend.prepare(case.model, "CPU")
    for inputs, expected in case.data_sets:
        outputs = rep.run(inputs)
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            assert isinstance(got, list) and len(got) == len(want)
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and g.shape == w.shape
                np.testing.assert_allclose(g, w, rtol=case.rtol, atol=case.atol)
