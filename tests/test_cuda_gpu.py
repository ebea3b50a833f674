"""On a GPU (skipped without one): the nine zoo models through the CUDA runtime against the reference, and the
ONNX conformance suite with GRAPHC_TARGET=cuda."""

import os
import subprocess
import sys

import numpy as np
import pytest

import graphc
from graphc import zoo

pytestmark = pytest.mark.gpu


def _gpu() -> bool:
    try:
        from graphc.backends.cuda.runtime import probe
    except ImportError:
        return False
    return probe()[0]


needs_gpu = pytest.mark.skipif(not _gpu(), reason="no CUDA GPU/driver (or cuda-python) here")


@needs_gpu
@pytest.mark.parametrize("name", zoo.MODELS)
def test_zoo_model_on_gpu_matches_the_reference(name):
    model = zoo.load(name, weights="random", seed=0)
    feeds = zoo.sample_inputs(model, seed=1)
    got = graphc.compile(model, target="cuda").run(feeds)
    want = graphc.compile(model, target="reference").run(feeds)
    for k, expected in want.items():
        np.testing.assert_allclose(got[k], expected, rtol=1e-3, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


@needs_gpu
@pytest.mark.slow
def test_onnx_conformance_suite_on_cuda():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, GRAPHC_TARGET="cuda")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", os.path.join(root, "tests",
                                                                                    "test_onnx_conformance.py")],
                          env=env, cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
