"""The PyTorch-exported benchmark models (bench/torch_models.py) compile with no unsupported op and match torch."""

import os
import sys

import numpy as np
import pytest

import graphc

pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import torch_models  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name, batch", [("mlp", 1), ("mlp", 8), ("transformer", 1), ("lstm_lm", 1),
                                         ("mobilenet", 1)])
def test_exported_model_matches_torch(name, batch):
    proto, feeds, expected = torch_models.export(name, batch)
    compiled = graphc.compile(proto, target="reference")
    (got,) = compiled.run(feeds).values()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))
    report = compiled.report()
    assert report["fallback_ops"] == [] and report["kernels"] < report["nodes"]
