"""graphc.bench (the timing and comparison logic) and bench/run_zoo.py (the zoo table)."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

import graphc
from graphc import bench as gb
from graphc.errors import GraphcError, OptionError
from tests.test_cli import tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_run_zoo():
    spec = importlib.util.spec_from_file_location("run_zoo", os.path.join(REPO, "bench", "run_zoo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timing_statistics():
    t = gb.Timing("x", [0.001 * i for i in range(1, 11)])
    assert t.median_ms == pytest.approx(5.5)
    assert t.p90_ms == pytest.approx(9.1)
    assert t.gflops(5.5e9) == pytest.approx(1000.0)
    assert t.gflops(0) == 0.0


def test_time_in_blocks_counts_calls_and_reverses_order():
    calls = []
    samples = gb.time_in_blocks([lambda: calls.append("a"), lambda: calls.append("b")], repeat=3, warmup=1)
    assert [len(s) for s in samples] == [3, 3]
    # first half (2 timed + 1 warmup each) in order a, b; second half (1 timed + 1 warmup) in order b, a
    assert "".join(calls) == "aaa" + "bbb" + "bb" + "aa"


def test_compare_outputs():
    ref = {"y": np.array([1.0, 2.0, 4.0], np.float32), "i": np.array([1, 2])}
    same = gb.compare_outputs(ref, {"y": ref["y"] + 1e-6, "i": np.array([1, 2])})
    assert same[2] == [] and same[0] == pytest.approx(1e-6, rel=0.1) and same[1] == pytest.approx(2.5e-7, rel=0.1)
    off = gb.compare_outputs(ref, {"y": ref["y"] * 1.1, "i": np.array([1, 3])})
    assert off[2] == ["y", "i"]
    assert gb.compare_outputs(ref, {"y": ref["y"][:2], "i": ref["i"]})[2] == ["y"]
    assert gb.compare_outputs(ref, {"i": ref["i"]})[2] == ["y"]


def test_random_inputs_are_seeded_and_batched():
    compiled = graphc.compile(tiny_model(), target="reference")
    a = gb.random_inputs(compiled, seed=3, batch=5)
    b = gb.random_inputs(compiled, seed=3, batch=5)
    assert a["x"].shape == (5, 6) and a["x"].dtype == np.float32
    np.testing.assert_array_equal(a["x"], b["x"])
    assert gb.has_symbolic_dim(compiled)


def test_resolve_threads():
    assert gb.resolve_threads(3) == 3
    assert gb.resolve_threads(0) >= 1 and gb.resolve_threads(None) == gb.resolve_threads(0)
    with pytest.raises(OptionError):
        gb.resolve_threads(-1)


def test_bench_graphc_only():
    result = gb.bench(tiny_model(), repeat=3, warmup=1, target="reference", threads=1)
    assert len(result.graphc.samples) == 3 and result.ort is None and result.ratio is None
    assert "graphc (reference)" in gb.format_table(result)


def test_bench_vs_onnxruntime_same_inputs():
    pytest.importorskip("onnxruntime")
    result = gb.bench(tiny_model(), vs="onnxruntime", repeat=3, warmup=1, target="reference", threads=1, batch=2)
    assert result.agree, result.mismatched
    assert result.max_abs_err < 1e-5 and result.ratio > 0 and len(result.ort.samples) == 3
    text = gb.format_table(result)
    assert "onnxruntime" in text and "ratio graphc/onnxruntime" in text and "outputs agree" in text


def test_missing_onnxruntime_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(GraphcError, match=r"pip install graphc\[bench\]"):
        gb.bench(tiny_model(), vs="onnxruntime", repeat=1, warmup=0, target="reference")


def test_bad_options():
    with pytest.raises(OptionError):
        gb.bench(tiny_model(), repeat=0, target="reference")
    with pytest.raises(OptionError):
        gb.bench(tiny_model(), vs="tvm", target="reference")
    with pytest.raises(OptionError, match="zoo"):
        gb.bench(tiny_model(), weights="random", target="reference")


def test_batch_on_a_fixed_shape_model_is_refused():
    model = tiny_model()
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.dim_value = 1
    with pytest.raises(OptionError, match="batch"):
        gb.bench(model, batch=4, repeat=1, target="reference")


def test_geometric_mean():
    assert gb.geometric_mean([2.0, 0.5]) == pytest.approx(1.0)
    assert gb.geometric_mean([]) is None
    assert gb.geometric_mean([4.0, None, 0.0]) == pytest.approx(4.0)


# ------------------------------------------------------------------------------------------ bench/run_zoo.py


def _fake_result(model: str, g_ms: float, o_ms: float) -> gb.BenchResult:
    return gb.BenchResult(model=model, target="llvm", threads=2, batch=1, repeat=3, warmup=1, flops=2_000_000_000,
                          compile_seconds=0.1, graphc=gb.Timing("graphc (llvm)", [g_ms / 1e3] * 3),
                          ort=gb.Timing("onnxruntime", [o_ms / 1e3] * 3), max_abs_err=0.0, max_rel_err=0.0)


def test_run_zoo_table(monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    run_zoo = load_run_zoo()
    timings = {"squeezenet": (2.0, 1.0), "resnet50": (10.0, 20.0)}

    def fake_bench(model, **kwargs):
        name = kwargs["name"]
        if name == "vgg19":
            raise graphc.UnsupportedOpError([("", "Frob", 9)])
        assert kwargs["vs"] == "onnxruntime" and kwargs["threads"] == 3 and kwargs["weights"] == "random"
        return _fake_result(name, *timings[name])

    monkeypatch.setattr(run_zoo, "bench", fake_bench)
    argv = ["--models", "squeezenet,resnet50,vgg19", "--threads", "3", "--weights", "random",
            "--peak-gflops", "4000"]
    assert run_zoo.main(argv) == 0
    out = capsys.readouterr().out
    assert "| model | graphc ms | onnxruntime ms | ratio |" in out
    assert "| squeezenet | 2.00 | 1.00 | 2.00 | 1000.00 | 25 % | 2000.00 | 0.1 | none | agree |" in out
    assert "| resnet50 | 10.00 | 20.00 | 0.50 |" in out
    assert "| vgg19 | - |" in out and "Frob" in out
    assert "over 2 model(s): **1.00**" in out
    assert "--models squeezenet,resnet50,vgg19 --threads 3 --weights random" in out


def test_run_zoo_rejects_unknown_models(capsys):
    run_zoo = load_run_zoo()
    with pytest.raises(SystemExit) as exc:
        run_zoo.main(["--models", "lenet"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_run_zoo_on_a_real_model(capsys):
    pytest.importorskip("onnxruntime")
    try:
        graphc.compile("zoo:squeezenet")
    except graphc.UnsupportedOpError as exc:
        pytest.skip(f"squeezenet does not compile yet: {exc}")
    run_zoo = load_run_zoo()
    assert run_zoo.main(["--models", "squeezenet", "--repeat", "2", "--warmup", "1", "--weights", "random"]) == 0
    out = capsys.readouterr().out
    assert "| squeezenet | -" not in out, out  # an error row
    assert "| squeezenet |" in out and "agree" in out and "Geometric mean" in out
