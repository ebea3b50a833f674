"""Compiling torch modules through the API (torch is an optional extra: these skip without it)."""

import numpy as np
import pytest

import graphc

torch = pytest.importorskip("torch")


def test_sequential_compiles_and_matches_torch():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4),
                                 torch.nn.Softmax(dim=-1))
    x = torch.randn(3, 8)
    compiled = graphc.compile(module, example_inputs=(x,), target="reference")
    got = compiled(x.numpy())
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_conv_module_compiles():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = graphc.compile(module, example_inputs=x, target="reference")
    np.testing.assert_allclose(compiled(x.numpy()), module(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_module_without_example_inputs_is_an_option_error():
    with pytest.raises(graphc.OptionError, match="example_inputs"):
        graphc.compile(torch.nn.ReLU(), target="reference")
