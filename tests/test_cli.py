"""The ``graphc`` command line: in-process through ``main(argv)`` and a few runs of ``python -m graphc``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphc import cli
from graphc.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,6] -> MatMul(W[6,4]) -> Softmax -> probs, and ReduceSum(probs) -> total[1,1]."""
    w = np.random.default_rng(seed).standard_normal((6, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
             helper.make_node("Softmax", ["h"], ["probs"], axis=1, name="softmax"),
             helper.make_node("ReduceSum", ["probs"], ["total"], keepdims=1, name="sum")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def reference(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    w = numpy_helper.to_array(model.graph.initializer[0])
    h = x @ w
    e = np.exp(h - h.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    return {"probs": probs, "total": probs.sum().reshape(1, 1)}


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), str(path))
    return str(path)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphc: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


# ------------------------------------------------------------------------------------------ compile and run


def test_compile_then_run_round_trip(tmp_path, model_path, capsys):
    artifact = tmp_path / "out" / "tiny.gcx"
    artifact.parent.mkdir()
    code, out, err = run_cli(capsys, "compile", model_path, "-o", artifact, "--target", "reference")
    assert code == 0, err
    assert artifact.is_file()
    assert str(artifact) in out and "kernels" in out and "nodes" in out
    assert len(out.strip().splitlines()) == 1

    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    outdir = tmp_path / "results"
    code, out, err = run_cli(capsys, "run", artifact, "--input", f"x={tmp_path / 'x.npy'}", "--output", outdir)
    assert code == 0, err
    assert "probs" in out and "float32[3,4]" in out and "mean=" in out
    expected = reference(tiny_model(), x)
    for name, want in expected.items():
        got = np.load(outdir / f"{name}.npy")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_compile_default_output_name(tmp_path, model_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("here")
    monkeypatch.chdir(tmp_path / "here")
    code, out, err = run_cli(capsys, "compile", model_path, "--target", "reference")
    assert code == 0, err
    assert (tmp_path / "here" / "tiny.gcx").is_file()


def test_run_model_with_random_inputs_says_so(model_path, capsys):
    code, out, err = run_cli(capsys, "run", model_path, "--target", "reference", "--batch", "2")
    assert code == 0, err
    assert "random inputs" in err
    assert "float32[2,4]" in out and "total" in out


def test_run_bare_file_for_single_input(tmp_path, model_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((1, 6), np.float32))
    code, out, err = run_cli(capsys, "run", model_path, "--target", "reference", "--input", tmp_path / "x.npy")
    assert code == 0, err
    assert "float32[1,4]" in out


def test_output_names_become_safe_file_names():
    assert cli.safe_file_name("gpu_0/softmax_1") == "gpu_0_softmax_1"
    assert cli.safe_file_name("../../etc/passwd") == "_.._etc_passwd"
    assert cli.safe_file_name("") == "output"


def test_artifact_detection(tmp_path, model_path):
    assert cli.is_artifact("anything.gcx")
    assert not cli.is_artifact(model_path)
    assert cli.default_artifact_path("zoo:resnet50") == "resnet50.gcx"
    assert cli.default_artifact_path("/a/b/model.onnx") == "model.gcx"


# ------------------------------------------------------------------------------------------ inspect


def test_inspect_prints_tables(model_path, capsys):
    code, out, err = run_cli(capsys, "inspect", model_path, "--target", "reference", "--nodes")
    assert code == 0, err
    for section in ("Model", "Inputs and outputs", "Op types", "Kernels", "Pass decisions", "Memory"):
        assert section in out
    op_section = out.split("Op types", 1)[1]
    for op in ("MatMul", "Softmax", "ReduceSum", "count", "FLOPs", "share"):
        assert op in op_section
    assert "float32[N,6]" in out
    assert "lower_bound_bytes" in out and "weights_bytes" in out


def test_inspect_html_is_self_contained(tmp_path, model_path, capsys):
    page = tmp_path / "report.html"
    code, out, err = run_cli(capsys, "inspect", model_path, "--target", "reference", "--html", page)
    assert code == 0, err
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<svg" in text and "MatMul" in text and "<table>" in text
    assert "<script" not in text and "<link" not in text and "http://" not in text.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")


def test_inspect_json(model_path, capsys):
    code, out, err = run_cli(capsys, "inspect", model_path, "--target", "reference", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["nodes"] == 3 and "kernels" in report and "arena_bytes" in report["memory"]


def test_flops_chart_draws_one_bar_per_op():
    svg = cli.flops_svg({"flops_by_op": {"Conv": 900, "Relu": 100, "Add": 0}})
    assert svg.count("<rect") == 2 and "Conv" in svg and "90.0%" in svg
    assert "no FLOP" in cli.flops_svg({"flops_by_op": {}})


# ------------------------------------------------------------------------------------------ user errors


def test_missing_model_file(tmp_path, capsys):
    code, out, err = run_cli(capsys, "compile", tmp_path / "nope.onnx")
    assert_user_error(code, err, "nope.onnx")


def test_missing_artifact(tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", tmp_path / "nope.gcx")
    assert_user_error(code, err, "nope.gcx")


def test_corrupt_model_file(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf \xff\xff\xff")
    code, out, err = run_cli(capsys, "inspect", bad)
    assert_user_error(code, err)


def test_corrupt_artifact(tmp_path, model_path, capsys):
    artifact = tmp_path / "tiny.gcx"
    assert run_cli(capsys, "compile", model_path, "-o", artifact, "--target", "reference")[0] == 0
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "run", artifact)
    assert_user_error(code, err)


@pytest.mark.parametrize("spec, needle", [("x", "x"), ("y=a.npy", "no input 'y'"), ("=a.npy", "NAME=FILE")])
def test_bad_input_spec(model_path, capsys, spec, needle):
    code, out, err = run_cli(capsys, "run", model_path, "--target", "reference", "--input", spec,
                             "--input", "x=other.npy")
    assert_user_error(code, err, needle)


def test_input_file_missing_or_not_npy(tmp_path, model_path, capsys):
    code, out, err = run_cli(capsys, "run", model_path, "--target", "reference", "--input", "x=missing.npy")
    assert_user_error(code, err, "missing.npy")
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    code, out, err = run_cli(capsys, "run", model_path, "--target", "reference", "--input", f"x={junk}")
    assert_user_error(code, err, "junk.npy")


def test_wrong_input_shape_and_dtype(tmp_path, model_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((2, 5), np.float32))
    code, out, err = run_cli(capsys, "run", model_path, "--target", "reference", "--input", f"x={tmp_path / 'x.npy'}")
    assert_user_error(code, err, "dimension 1 must be 6")
    np.save(tmp_path / "x64.npy", np.ones((2, 6), np.float64))
    code, out, err = run_cli(capsys, "run", model_path, "--target", "reference",
                             "--input", f"x={tmp_path / 'x64.npy'}")
    assert_user_error(code, err, "float64")


def test_target_mismatch_with_artifact(tmp_path, model_path, capsys):
    artifact = tmp_path / "tiny.gcx"
    assert run_cli(capsys, "compile", model_path, "-o", artifact, "--target", "reference")[0] == 0
    code, out, err = run_cli(capsys, "run", artifact, "--target", "cuda")
    assert_user_error(code, err, "reference")


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["bench", "m.onnx", "--repeat", "0"]) == 2
    assert main(["compile", "m.onnx", "--precision", "fp7"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" in err


def test_help_and_version(capsys):
    assert main(["--version"]) == 0
    assert "graphc" in capsys.readouterr().out
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("compile", "run", "inspect", "bench"):
        assert command in text
    for command in ("compile", "run", "inspect", "bench"):
        assert main([command, "--help"]) == 0
        assert "usage: graphc " + command in capsys.readouterr().out


def test_internal_error_exit_1_and_debug_traceback(model_path, capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(cli, "cmd_inspect", boom)
    code, out, err = run_cli(capsys, "inspect", model_path)
    assert code == 1
    assert "internal error" in err and "kaboom" in err and "--debug" in err and "Traceback" not in err
    code, out, err = run_cli(capsys, "--debug", "inspect", model_path)
    assert code == 1 and "Traceback" in err
    code, out, err = run_cli(capsys, "inspect", "--debug", model_path)
    assert code == 1 and "Traceback" in err


def test_debug_shows_traceback_for_user_errors(tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", "--debug", tmp_path / "nope.gcx")
    assert code == 2 and "Traceback" in err and "graphc: error:" in err


# ------------------------------------------------------------------------------------------ bench


def test_bench_vs_onnxruntime_prints_ratio(model_path, capsys):
    pytest.importorskip("onnxruntime")
    code, out, err = run_cli(capsys, "bench", model_path, "--vs", "onnxruntime", "--threads", "1",
                             "--repeat", "3", "--warmup", "1", "--target", "reference")
    assert code == 0, err
    assert "onnxruntime" in out and "median ms" in out and "p90 ms" in out
    assert "ratio graphc/onnxruntime" in out and "outputs agree" in out


def test_bench_alone(model_path, capsys):
    code, out, err = run_cli(capsys, "bench", model_path, "--repeat", "2", "--warmup", "0",
                             "--target", "reference", "--batch", "4")
    assert code == 0, err
    assert "graphc (reference)" in out and "batch=4" in out


# ------------------------------------------------------------------------------------------ as a process


def _python_m(*argv, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_python_m_round_trip(tmp_path, model_path):
    artifact = tmp_path / "tiny.gcx"
    proc = _python_m("compile", model_path, "-o", artifact, "--target", "reference")
    assert proc.returncode == 0, proc.stderr
    proc = _python_m("run", artifact)
    assert proc.returncode == 0, proc.stderr
    assert "probs" in proc.stdout and "random inputs" in proc.stderr


def test_python_m_user_error_has_no_traceback(tmp_path):
    proc = _python_m("run", tmp_path / "missing.onnx")
    assert proc.returncode == 2
    assert proc.stderr.startswith("graphc: error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_compile_and_run_do_not_import_onnxruntime(model_path):
    code = ("import sys; from graphc.cli import main; "
            f"assert main(['run', {model_path!r}, '--target', 'reference']) == 0; "
            "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported'")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_passes_flag_edits_the_pipeline(capsys):
    code, out, err = run_cli(capsys, "inspect", "zoo:squeezenet", "--json", "--passes=-fusion")
    assert code == 0, err
    ran = [record["name"] for record in json.loads(out)["pipeline"]["passes"]]
    assert "fusion" not in ran and "constant_folding" in ran
    code, out, err = run_cli(capsys, "inspect", "zoo:squeezenet", "--passes=+no_such_pass")
    assert code == 2 and "no_such_pass" in err and "Traceback" not in err


def test_bench_honours_passes(capsys, monkeypatch):
    import graphc

    original, seen = graphc.compile, {}

    def spy(model, **options):
        seen.update(options)
        return original(model, **options)

    monkeypatch.setattr(graphc, "compile", spy)
    code, out, err = run_cli(capsys, "bench", "zoo:squeezenet", "--repeat", "1", "--warmup", "0",
                             "--passes=-fusion")
    assert code == 0, err
    assert seen.get("passes") == "-fusion"
