"""The nine light zoo models, with seeded random weights, against onnxruntime (the second oracle).

The zoo's own weights are all 0.02, which makes every output the same; the random copies make a wrong kernel
visible (graphc.zoo.randomize_weights).
"""

import numpy as np
import pytest

import graphc
from graphc import zoo

ort = pytest.importorskip("onnxruntime")


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.MODELS)
def test_zoo_model_matches_onnxruntime(name):
    model = zoo.load(name, weights="random", seed=0)
    feeds = zoo.sample_inputs(model, seed=1)
    compiled = graphc.compile(model, target="reference")
    ours = compiled.run(feeds)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for out_name, expected in theirs.items():
        got = ours[out_name]
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
        assert np.array_equal(got.reshape(got.shape[0], -1).argmax(1), expected.reshape(expected.shape[0], -1).argmax(1))
    report = compiled.report()
    assert report["fallback_ops"] == [] and report["flops"] > 0


def test_random_weights_are_seeded_and_not_constant():
    a = zoo.load("squeezenet", weights="random", seed=0)
    b = zoo.load("squeezenet", weights="random", seed=0)
    c = zoo.load("squeezenet", weights="random", seed=1)
    assert a.SerializeToString() == b.SerializeToString() != c.SerializeToString()
    assert not any(n.op_type == "ConstantOfShape" for n in a.graph.node)
