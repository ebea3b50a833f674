"""Models exported from PyTorch's own modules, for benchmarks and tests (needs the torch extra).

Each builder returns ``(module, example_inputs)`` with seeded weights; ``export(name, batch)`` gives the ONNX
ModelProto (through graphc's torch path). The set follows the fusion/llvmlite issue: an MLP with GELU and
LayerNorm, ``nn.TransformerEncoder``, an LSTM language model and a MobileNet-style CNN.
"""

from __future__ import annotations

from typing import Callable


def _torch():
    import torch

    return torch


def mlp(batch: int = 1):
    torch = _torch()
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.LayerNorm(2048),
        torch.nn.Linear(2048, 2048), torch.nn.GELU(), torch.nn.LayerNorm(2048),
        torch.nn.Linear(2048, 10),
    )
    return module.eval(), (torch.randn(batch, 512),)


def transformer(batch: int = 1, seq: int = 128):
    torch = _torch()
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=256, nhead=8, dim_feedforward=1024, dropout=0.0,
                                             batch_first=True, activation="gelu")
    module = torch.nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
    return module.eval(), (torch.randn(batch, seq, 256),)


class _LSTMLanguageModel:
    """Embedding -> 2-layer LSTM -> Linear over the vocabulary (built lazily so torch stays optional)."""

    @staticmethod
    def build(vocab: int = 5000, hidden: int = 256):
        torch = _torch()

        class LSTMLanguageModel(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = torch.nn.Embedding(vocab, hidden)
                self.lstm = torch.nn.LSTM(hidden, hidden, num_layers=2, batch_first=True)
                self.head = torch.nn.Linear(hidden, vocab)

            def forward(self, tokens):
                out, _ = self.lstm(self.embed(tokens))
                return self.head(out)

        return LSTMLanguageModel()


def lstm_lm(batch: int = 1, seq: int = 64):
    torch = _torch()
    torch.manual_seed(0)
    module = _LSTMLanguageModel.build()
    return module.eval(), (torch.randint(0, 5000, (batch, seq)),)


def mobilenet(batch: int = 1):
    """A MobileNet-v2-style CNN: inverted residual blocks with depthwise convolutions and ReLU6."""
    torch = _torch()
    torch.manual_seed(0)
    nn = torch.nn

    def block(cin, cout, stride, expand=4):
        hidden = cin * expand
        layers = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

        class Residual(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = layers

            def forward(self, x):
                y = self.body(x)
                return x + y if stride == 1 and cin == cout else y

        return Residual()

    module = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
        block(32, 32, 1), block(32, 64, 2), block(64, 64, 1), block(64, 128, 2), block(128, 128, 1),
        block(128, 256, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 1000),
    )
    for m in module.modules():  # non-trivial BatchNorm statistics, so folding them is really tested
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return module.eval(), (torch.randn(batch, 3, 224, 224),)


MODELS: dict[str, Callable] = {"mlp": mlp, "transformer": transformer, "lstm_lm": lstm_lm, "mobilenet": mobilenet}


def export(name: str, batch: int = 1):
    """(onnx.ModelProto, {input name: numpy array}, torch outputs as numpy) for model ``name``."""
    from graphc.sources import export_torch

    torch = _torch()
    module, inputs = MODELS[name](batch)
    proto = export_torch(module, inputs)
    with torch.no_grad():
        expected = module(*inputs)
    names = [vi.name for vi in proto.graph.input if vi.name not in {t.name for t in proto.graph.initializer}]
    feeds = {n: x.numpy() for n, x in zip(names, inputs)}
    return proto, feeds, expected.numpy()
