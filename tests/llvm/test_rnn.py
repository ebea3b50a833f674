"""LSTM as one generated kernel, against the reference: the register-blocked path (4H a multiple of 64), its
scalar tail, both directions, batches, initial states, and all three outputs."""

from __future__ import annotations

import numpy as np
import pytest

import graphc
from tests.helpers import lstm_model

pytest.importorskip("llvmlite")


@pytest.mark.parametrize("hidden, batch, direction", [(32, 1, "forward"), (20, 3, "bidirectional"),
                                                       (16, 2, "reverse")])
def test_lstm_matches_the_reference(hidden, batch, direction):
    model, feeds = lstm_model(hidden, batch, 5, direction, n_in=12, seed=hidden, weight_scale=0.3, state_scale=1.0)
    llvm = graphc.compile(model, target="llvm")
    assert llvm.report()["backend"]["specializations"][0]["emitters"] == {"LSTM": 1}
    got, want = llvm.run(feeds), graphc.compile(model, target="reference").run(feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
