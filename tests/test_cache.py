"""The compile cache (graphc/cache.py): hits, misses, what the key covers, broken entries, concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphc
from graphc import cache as gcache
from graphc.cache import CacheWarning, CompileCache
from graphc.errors import OptionError
from graphc.options import CompileOptions
from tests.helpers import mlp_model, mlp_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No test may see the developer's cache settings or write to the real ~/.cache."""
    monkeypatch.delenv(gcache.ENV_DIR, raising=False)
    monkeypatch.delenv(gcache.ENV_MAX_BYTES, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def cdir(tmp_path):
    return tmp_path / "cache"


def _entries(directory) -> list[str]:
    return sorted(e.path for e in CompileCache(str(directory)).entries())


def _compile(model, directory, **kw):
    return graphc.compile(model, target="reference", cache=str(directory), **kw)


def _key(model, **options) -> str:
    opts = CompileOptions.build(target="reference", **options)
    return gcache.key_of(gcache.key_document(model, None, opts))


# -- on, off, where --------------------------------------------------------------------------------------------
def test_off_by_default(tmp_path):
    compiled = graphc.compile(mlp_model(), target="reference")
    assert compiled.report()["cache"] is None
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_env_var_turns_it_on_and_false_turns_it_off(monkeypatch, cdir):
    monkeypatch.setenv(gcache.ENV_DIR, str(cdir))
    first = graphc.compile(mlp_model(), target="reference")
    assert first.report()["cache"]["hit"] is False and len(_entries(cdir)) == 1
    assert graphc.compile(mlp_model(), target="reference").report()["cache"]["hit"] is True
    assert graphc.compile(mlp_model(), target="reference", cache=False).report()["cache"] is None


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG layout")
def test_cache_true_uses_the_user_cache_dir(tmp_path):
    compiled = graphc.compile(mlp_model(), target="reference", cache=True)
    assert compiled.report()["cache"]["dir"] == str(tmp_path / "xdg" / "graphc")
    assert len(_entries(tmp_path / "xdg" / "graphc")) == 1


def test_bad_cache_argument():
    with pytest.raises(OptionError, match="cache must be"):
        graphc.compile(mlp_model(), target="reference", cache=3)


@pytest.mark.parametrize("text, value", [("1000", 1000), ("2K", 2048), ("1.5M", 3 * 2 ** 19), ("2GiB", 2 ** 31),
                                         ("3gb", 3 * 2 ** 30)])
def test_max_bytes_setting(monkeypatch, text, value):
    monkeypatch.setenv(gcache.ENV_MAX_BYTES, text)
    assert gcache.max_bytes() == value


def test_bad_max_bytes_is_an_option_error(monkeypatch, cdir):
    monkeypatch.setenv(gcache.ENV_MAX_BYTES, "lots")
    with pytest.raises(OptionError, match="GRAPHC_CACHE_MAX_BYTES"):
        _compile(mlp_model(), cdir)


# -- hits ---------------------------------------------------------------------------------------------------------
def test_hit_is_identical_to_a_fresh_compile(tmp_path, cdir):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), path)
    fresh = graphc.compile(str(path), target="reference", cache=False)
    miss = _compile(str(path), cdir)
    hit = _compile(str(path), cdir)
    info = hit.report()["cache"]
    assert miss.report()["cache"]["hit"] is False and info["hit"] is True
    assert info["key"] == miss.report()["cache"]["key"] and os.path.isfile(info["path"])
    assert info["path"] == _entries(cdir)[0]
    for compiled in (miss, hit):
        np.testing.assert_array_equal(compiled(X), fresh(X))
    np.testing.assert_allclose(hit(X), mlp_reference(mlp_model(), X), rtol=1e-5, atol=1e-6)
    for key in ("nodes", "kernels", "ops", "flops", "memory", "fusion", "fallback_ops", "params"):
        assert hit.report()[key] == fresh.report()[key], key
    assert hit.source == str(path) and hit.input_names == fresh.input_names
    assert hit.output_names == fresh.output_names and hit.input_types == fresh.input_types
    # a hit saves and loads like any compiled model
    again = graphc.load(hit.save(tmp_path / "again.gcx"))
    np.testing.assert_array_equal(again(X), fresh(X))


def test_hit_runs_no_import_and_no_passes(monkeypatch, cdir):
    _compile(mlp_model(), cdir)

    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not compile")

    monkeypatch.setattr("graphc.pipeline.compile_proto", refuse)
    monkeypatch.setattr("graphc.frontend.onnx_import.import_onnx", refuse)
    assert _compile(mlp_model(), cdir).report()["cache"]["hit"] is True


def test_same_model_from_a_file_a_proto_or_bytes_shares_an_entry(tmp_path, cdir):
    path = tmp_path / "m.onnx"
    onnx.save(mlp_model(), path)
    _compile(str(path), cdir)
    assert _compile(mlp_model(), cdir).report()["cache"]["hit"] is True
    assert _compile(mlp_model().SerializeToString(), cdir).report()["cache"]["hit"] is True
    assert len(_entries(cdir)) == 1


# -- the key ----------------------------------------------------------------------------------------------------------
def test_key_is_stable():
    assert _key(mlp_model()) == _key(mlp_model())


@pytest.mark.parametrize("change", ["weights", "graph", "options", "pass_option", "passes"])
def test_key_covers_model_bytes_and_options(change):
    base = _key(mlp_model())
    if change == "weights":
        other = _key(mlp_model(seed=1))
    elif change == "graph":
        other = _key(mlp_model(hidden=6))
    elif change == "options":
        other = _key(mlp_model(), threads=2)
    elif change == "pass_option":
        other = _key(mlp_model(), fold_limit_bytes=1)
    else:
        other = _key(mlp_model(), passes="-cse")
    assert other != base


def test_key_covers_version_code_and_cpu(monkeypatch):
    base = _key(mlp_model())
    with monkeypatch.context() as m:
        m.setattr(graphc, "__version__", "99.0")
        assert _key(mlp_model()) != base
    with monkeypatch.context() as m:
        m.setattr("graphc.artifact.cpu_features", lambda: ["fpu", "totally_new_feature"])
        assert _key(mlp_model()) != base
    with monkeypatch.context() as m:
        m.setattr("platform.machine", lambda: "riscv64")
        assert _key(mlp_model()) != base
    with monkeypatch.context() as m:
        m.setattr(gcache, "_CODE_FINGERPRINT", "edited checkout")
        assert _key(mlp_model()) != base
    assert _key(mlp_model()) == base


def test_other_cpu_features_miss(monkeypatch, cdir):
    _compile(mlp_model(), cdir)
    monkeypatch.setattr("graphc.artifact.cpu_features", lambda: ["fpu", "totally_new_feature"])
    assert _compile(mlp_model(), cdir).report()["cache"]["hit"] is False
    assert len(_entries(cdir)) == 2


def test_external_data_contents_are_keyed(tmp_path, cdir):
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save(mlp_model(), path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    first = _compile(str(path), cdir)
    assert _compile(str(path), cdir).report()["cache"]["hit"] is True
    # same proto, same file sizes, other weights: must miss and compute with the new weights
    other = mlp_model(seed=7)
    raw = b"".join(numpy_helper.to_array(t).tobytes() for t in other.graph.initializer)
    assert len(raw) == os.path.getsize(folder / "weights.bin")
    (folder / "weights.bin").write_bytes(raw)
    changed = _compile(str(path), cdir)
    assert changed.report()["cache"]["hit"] is False
    np.testing.assert_allclose(changed(X), mlp_reference(other, X), rtol=1e-5, atol=1e-6)
    assert not np.allclose(changed(X), first(X))


def test_torch_module_is_keyed_by_its_export(cdir):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(2, 4)
    first = _compile(module, cdir, example_inputs=(x,))
    second = _compile(module, cdir, example_inputs=(x,))
    assert second.report()["cache"]["hit"] is True
    np.testing.assert_array_equal(second(x.numpy()), first(x.numpy()))
    with torch.no_grad():
        module[0].weight.add_(1.0)
    third = _compile(module, cdir, example_inputs=(x,))
    assert third.report()["cache"]["hit"] is False
    with torch.no_grad():
        np.testing.assert_allclose(third(x.numpy()), module(x).numpy(), rtol=1e-5, atol=1e-5)


def test_plugin_pass_code_is_keyed(tmp_path, monkeypatch):
    from graphc.passes import register_pass, unregister_pass

    source = tmp_path / "my_cache_test_pass.py"
    source.write_text(textwrap.dedent("""
        from graphc.passes import Pass

        class NothingPass(Pass):
            name = "cache_test_nothing"

            def run(self, graph, ctx):
                return False
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_cache_test_pass

    register_pass(my_cache_test_pass.NothingPass)
    try:
        before = _key(mlp_model(), passes="+cache_test_nothing")
        assert before != _key(mlp_model())
        stat = source.stat()
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))  # the pass's code was edited
        assert _key(mlp_model(), passes="+cache_test_nothing") != before
    finally:
        unregister_pass("cache_test_nothing")
        sys.modules.pop("my_cache_test_pass", None)


# -- broken entries, unwritable directories -------------------------------------------------------------------------
def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_a_weight_byte(data: bytes) -> bytes:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("weights.bin")
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    i = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


@pytest.mark.parametrize("damage", [_truncate, lambda d: b"", lambda d: b"not a zip at all" * 10,
                                    _flip_a_weight_byte], ids=["truncated", "empty", "garbage", "bitflip"])
def test_broken_entry_is_a_miss_then_rewritten(cdir, damage):
    expected = _compile(mlp_model(), cdir)(X)
    (entry,) = _entries(cdir)
    with open(entry, "rb") as f:
        data = f.read()
    with open(entry, "wb") as f:
        f.write(damage(data))
    with pytest.warns(CacheWarning, match="cannot be used"):
        recovered = _compile(mlp_model(), cdir)
    assert recovered.report()["cache"]["hit"] is False
    np.testing.assert_array_equal(recovered(X), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = _compile(mlp_model(), cdir)
    assert again.report()["cache"]["hit"] is True
    np.testing.assert_array_equal(again(X), expected)


def test_directory_that_is_a_file_warns_and_compiles(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.warns(CacheWarning, match="cannot store"):
        compiled = _compile(mlp_model(), blocker)
    assert compiled.report()["cache"]["hit"] is False and compiled.report()["cache"]["path"] is None
    np.testing.assert_allclose(compiled(X), mlp_reference(mlp_model(), X), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes read-only dirs")
def test_read_only_directory_warns_and_compiles(cdir):
    cdir.mkdir()
    cdir.chmod(0o500)
    try:
        with pytest.warns(CacheWarning, match="cannot store"):
            compiled = _compile(mlp_model(), cdir)
        np.testing.assert_allclose(compiled(X), mlp_reference(mlp_model(), X), rtol=1e-5, atol=1e-6)
        assert os.listdir(cdir) == []
    finally:
        cdir.chmod(0o700)


def test_options_without_a_stable_json_form_are_not_keyed():
    with pytest.raises(gcache.Uncacheable, match="stable JSON"):
        gcache.key_of({"options": {"fold_limit_bytes": object()}})
    with pytest.raises(gcache.Uncacheable):
        gcache.key_of({"options": {"fold_limit_bytes": float("nan")}})
    assert _key(mlp_model(), fusion_max_inputs=np.int64(8)) == _key(mlp_model(), fusion_max_inputs=8)


def test_key_errors_leave_the_compile_error_to_the_compile(cdir, tmp_path):
    model = mlp_model()
    tensor = model.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.external_data.add(key="location", value="missing.bin")
    with pytest.raises(graphc.ModelLoadError, match="external"):
        _compile(model, cdir)


# -- size cap, housekeeping, CLI ---------------------------------------------------------------------------------
def test_size_cap_evicts_least_recently_used(monkeypatch, cdir):
    models = [mlp_model(seed=s, hidden=64) for s in range(3)]
    _compile(models[0], cdir)
    size = os.path.getsize(_entries(cdir)[0])
    monkeypatch.setenv(gcache.ENV_MAX_BYTES, str(int(size * 2.5)))
    _compile(models[1], cdir)
    past = time.time() - 100
    for i, path in enumerate(_entries(cdir)):
        os.utime(path, (past + i, past + i))
    assert _compile(models[0], cdir).report()["cache"]["hit"] is True  # 0 is now the most recently used
    _compile(models[2], cdir)  # three entries do not fit: 1, the least recently used, goes
    keys = {os.path.basename(p)[:-4] for p in _entries(cdir)}
    assert keys == {_key(models[0]), _key(models[2])}


def test_clear_and_info_touch_only_cache_files(cdir):
    _compile(mlp_model(), cdir)
    (cdir / "mine.gcx").write_text("a user's own file")
    stale = cdir / f".{'0' * 64}.123-{'a' * 12}.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    store = CompileCache(str(cdir))
    info = store.info()
    assert info["entries"] == 1 and info["bytes"] == os.path.getsize(_entries(cdir)[0])
    assert info["temporary_files"] == 1
    assert store.clear()[0] == 1
    assert sorted(os.listdir(cdir)) == ["mine.gcx"]


def test_cli_cache_commands(cdir, capsys, monkeypatch, tmp_path):
    from graphc.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(mlp_model(), path)
    out = tmp_path / "m.gcx"
    monkeypatch.setenv(gcache.ENV_DIR, str(cdir))
    assert main(["compile", str(path), "-o", str(out), "--target", "reference"]) == 0
    assert main(["compile", str(path), "-o", str(out), "--target", "reference"]) == 0
    assert "compile cache hit" in capsys.readouterr().out
    assert main(["compile", str(path), "-o", str(out), "--target", "reference", "--no-cache"]) == 0
    assert "cache hit" not in capsys.readouterr().out
    assert main(["cache", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 1
    assert main(["cache", "list"]) == 0
    assert str(path) in capsys.readouterr().out
    assert main(["cache", "clear", "--dir", str(cdir)]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
    assert _entries(cdir) == []
    monkeypatch.delenv(gcache.ENV_DIR)
    assert main(["run", str(path), "--target", "reference", "--cache"]) == 0
    assert len(_entries(tmp_path / "xdg" / "graphc")) == 1


# -- concurrency ----------------------------------------------------------------------------------------------------
_WORKER = textwrap.dedent("""
    import json, os, sys, time, warnings
    import numpy as np
    import graphc
    from graphc.cache import CacheWarning, CompileCache

    warnings.simplefilter("error", CacheWarning)  # a half-written or unreadable entry fails the worker
    model, directory, go, out, rounds = sys.argv[1:6]
    while not os.path.exists(go):
        time.sleep(0.001)
    x = np.load(os.path.join(os.path.dirname(out), "x.npy"))
    hits, results = [], []
    for _ in range(int(rounds)):
        compiled = graphc.compile(model, target="reference", cache=directory)
        info = compiled.report()["cache"]
        hits.append(info["hit"])
        results.append(compiled(x).tolist())
        CompileCache(directory).store(info["key"], compiled)  # keep rewriting the entry the others read
    json.dump({"hits": hits, "results": results}, open(out, "w"))
""")


def test_processes_compiling_the_same_model_at_once(tmp_path, cdir):
    model = mlp_model(features=256, hidden=512, classes=256)  # ~0.8 MB of weights: writes take a while
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = graphc.compile(str(path), target="reference", cache=False)(x)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(path), str(cdir), str(go),
                               str(tmp_path / f"out{i}.json"), "12"], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    time.sleep(0.2)
    go.write_text("go")
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    hits = []
    for i in range(2):
        result = json.loads((tmp_path / f"out{i}.json").read_text())
        hits += result["hits"]
        for r in result["results"]:
            np.testing.assert_array_equal(np.asarray(r, np.float32), expected)
    assert any(hits)  # the processes did share entries
    assert len(_entries(cdir)) == 1 and CompileCache(str(cdir)).temporaries() == []
    assert _compile(str(path), cdir).report()["cache"]["hit"] is True
