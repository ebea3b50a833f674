"""The Ray runner (graphc/runtime/ray_runner.py, ``runtime="ray"``): a zoo model across Ray actors gives the
same outputs as one device; replicas and micro-batches; a killed or hung actor is a GraphcError within 10 s;
actors go away on close and at exit; the option is validated and a missing Ray says how to install it.

One local Ray instance, started by the module's fixture as a user would (``ray.init`` before graphc), serves
the module: graphc must use it and leave it running. The slow subprocess test covers the other path: graphc
starts Ray itself, and nothing of it is left once the process exits."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc import zoo
from graphc.errors import DeviceError, ExecutionError, GraphcError, OptionError
from tests.helpers import mlp_model, stopped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    from graphc.runtime import ray_runner

    ours = not ray.is_initialized()
    if ours:
        # 4 logical CPUs: the replica test places 2 replicas x 2 stages (a count for Ray's scheduler, not threads)
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    assert not ray_runner.started_ray()
    ray_runner.shutdown()  # kills graphc's actors, but this Ray is not graphc's to stop
    assert ray.is_initialized()
    if ours:
        ray.shutdown()


def _mlp():
    return mlp_model(batch="N", features=64, hidden=128, classes=10)


def _x(seed, n=6):
    return np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def mlp_single():
    return graphc.compile(_mlp(), target="reference")


@pytest.fixture(scope="module")
def mlp_on_ray(ray):
    compiled = graphc.compile(_mlp(), target="reference", devices="cpu:0,cpu:1", runtime="ray",
                              partition_stages=2, partition_replicas=1)
    yield compiled
    compiled.executable.close()


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow  # a Ray instance and actor processes: about 30 s for the module on 2 cores
def test_zoo_model_on_two_ray_actors_matches_one_device(ray):
    from graphc.runtime.ray_runner import RayExecutable

    model = zoo.load("squeezenet", weights="random", seed=0)
    feeds = zoo.sample_inputs(model, seed=1)
    # the reference target, like tests/test_multidevice.py: the runner is the same for every backend, and
    # the oracle keeps this test about the runner (no per-actor JIT time either)
    one = graphc.compile(model, target="reference")
    two = graphc.compile(model, target="reference", devices="cpu:0,cpu:1", runtime="ray", partition_stages=2,
                         partition_replicas=1)
    try:
        assert isinstance(two.executable, RayExecutable)
        assert two.report()["partition"]["stages"] == 2 and two.report()["backend"]["runtime"] == "ray"
        want, got = one.run(feeds), two.run(feeds)
        actors = two.executable.actors
        assert len(actors) == 2 and len({a.pid for a in actors}) == 2 and os.getpid() not in {a.pid for a in actors}
        for out in want:
            # the same tolerance and reason as tests/test_multidevice.py: a stage runs with one thread, the
            # single-device model with all cores, so reductions may be summed in another order
            np.testing.assert_allclose(got[out], want[out], rtol=1e-5, atol=1e-7)
        # a stream of distinct batches, several in flight, each result in its place
        name = two.input_names[0]
        xs = [zoo.sample_inputs(model, seed=s)[name] for s in range(2, 6)]
        for x, (y,) in zip(xs, two.executable.run_stream([[x] for x in xs])):
            np.testing.assert_allclose(y, one(x), rtol=1e-5, atol=1e-7)
    finally:
        two.executable.close()


@pytest.mark.slow
def test_replicas_and_micro_batches(ray, mlp_single):
    compiled = graphc.compile(_mlp(), target="reference", devices="cpu:0-3", runtime="ray", partition_batch=8,
                              partition_micro_batch=2, partition_replicas=2)
    try:
        part = compiled.report()["partition"]
        assert part["replicas"] == 2 and part["micro_batch"] == 2 and part["stages"] == 2
        x = _x(7, n=8)
        got = compiled.run({"x": x})[compiled.output_names[0]]
        assert got.shape == (8, 10) and got.flags.writeable
        # micro-batches of 2 change the GEMM shapes, hence the rounding: close, not bit-identical
        np.testing.assert_allclose(got, mlp_single(x), rtol=1e-5, atol=1e-6)
        assert len({a.pid for a in compiled.executable.actors}) == 4
    finally:
        compiled.executable.close()


@pytest.mark.slow
def test_killed_actor_is_a_graphc_error_within_10s(ray, mlp_single, mlp_on_ray):
    exe = mlp_on_ray.executable
    mlp_on_ray.run({"x": _x(0)})  # actors up
    victim = next(a for a in exe.actors if a.stage == 1)
    os.kill(victim.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(DeviceError, match=r"stage 1 \(replica 0\) on cpu:1.*died"):
        exe.run_stream([[_x(s)] for s in range(4)])
    assert time.monotonic() - start < 10
    # every actor was killed; the next run starts fresh ones and is right again
    assert exe.actors == []
    got = mlp_on_ray.run({"x": _x(1)})[mlp_on_ray.output_names[0]]
    np.testing.assert_array_equal(got, mlp_single(_x(1)))
    assert victim.pid not in {a.pid for a in exe.actors}


@pytest.mark.slow
def test_hung_actor_is_a_graphc_error_within_10s(ray, mlp_on_ray):
    exe = mlp_on_ray.executable
    mlp_on_ray.run({"x": _x(0)})
    victim = next(a for a in exe.actors if a.stage == 0)
    with stopped(victim.pid):
        start = time.monotonic()
        with pytest.raises(DeviceError, match=r"stage 0 \(replica 0\) on cpu:0.*stopped responding"):
            exe.run([_x(2)])
        assert time.monotonic() - start < 10
    assert _gone(victim.pid), "the hung actor was not killed"


def _embedding_model():
    """idx[N] -> Gather(table) -> MatMul -> Relu -> MatMul: an out-of-range index fails inside a stage."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("table", (10, 16)), ("w", (16, 16)), ("w2", (16, 4)))]
    nodes = [helper.make_node("Gather", ["table", "idx"], ["e"], axis=0), helper.make_node("MatMul", ["e", "w"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.slow
def test_kernel_error_in_an_actor_names_its_stage(ray):
    compiled = graphc.compile(_embedding_model(), target="reference", devices="cpu:0,cpu:1", runtime="ray",
                              partition_stages=2, partition_replicas=1)
    try:
        ok = compiled.run({"idx": np.array([1, 2], np.int64)})["y"]
        assert ok.shape == (2, 4)
        with pytest.raises(ExecutionError, match=r"stage 0 \(replica 0\) on cpu:0.*index 20 is out of range"):
            compiled.run({"idx": np.array([1, 20], np.int64)})
    finally:
        compiled.executable.close()


@pytest.mark.slow
def test_close_leaves_no_actor_process(ray):
    compiled = graphc.compile(_mlp(), target="reference", devices="cpu:0,cpu:1", runtime="ray",
                              partition_stages=2, partition_replicas=1)
    compiled.run({"x": _x(0)})
    pids = [a.pid for a in compiled.executable.actors]
    compiled.executable.close()
    assert all(_gone(pid) for pid in pids)
    assert ray.is_initialized()  # the instance stays up for the next plan


@pytest.mark.slow
def test_cli_compile_with_ray_runtime_keeps_it_in_the_artifact(ray, tmp_path, mlp_single):
    from graphc.cli import main
    from graphc.runtime.ray_runner import RayExecutable

    model = tmp_path / "mlp.onnx"
    model.write_bytes(_mlp().SerializeToString())
    out = tmp_path / "mlp.gcx"
    assert main(["compile", str(model), "-o", str(out), "--target", "reference", "--devices", "cpu:0,cpu:1",
                 "--runtime", "ray"]) == 0
    loaded = graphc.load(out)
    try:
        assert isinstance(loaded.executable, RayExecutable)
        np.testing.assert_array_equal(loaded.run({"x": _x(3)})["probs"], mlp_single(_x(3)))
    finally:
        loaded.executable.close()


# ------------------------------------------------------------------------------ options (no Ray needed)
def test_unknown_runtime_is_an_option_error():
    with pytest.raises(OptionError, match=r"unknown runtime 'spark'.*local, ray"):
        graphc.compile(_mlp(), target="reference", devices="cpu:0,cpu:1", runtime="spark")
    with pytest.raises(OptionError, match="two or more"):
        graphc.compile(_mlp(), target="reference", runtime="ray")


def test_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(GraphcError, match=r"pip install 'graphc\[ray\]'"):
        graphc.compile(_mlp(), target="reference", devices="cpu:0,cpu:1", runtime="ray")
    # the CLI says the same, as an error message and exit status 2
    from graphc.cli import main

    assert main(["compile", "zoo:squeezenet", "--devices", "cpu:0,cpu:1", "--runtime", "ray",
                 "-o", os.devnull]) == 2


@pytest.mark.slow
def test_graphc_starts_ray_when_none_runs_and_leaves_nothing_at_exit(tmp_path):
    """No Ray initialised, no RAY_ADDRESS: graphc starts a local instance; a script that exits without closing
    anything leaves no actor and no Ray process behind."""
    pytest.importorskip("ray")
    script = tmp_path / "user.py"
    script.write_text(
        "import json, numpy as np, ray, graphc\n"
        "from graphc.runtime import ray_runner\n"
        "from tests.helpers import mlp_model, stopped\n"
        "m = mlp_model(batch='N', features=8, hidden=8, classes=3)\n"
        "one = graphc.compile(m, target='reference')\n"
        "two = graphc.compile(m, target='reference', devices='cpu:0,cpu:1', runtime='ray', partition_stages=2)\n"
        "x = np.ones((2, 8), np.float32)\n"
        "assert np.array_equal(two(x), one(x))\n"
        "assert ray_runner.started_ray()\n"
        "pids = [a.pid for a in two.executable.actors]\n"
        "node = getattr(ray._private.worker, '_global_node', None)  # Ray's own processes (private API)\n"
        "if node is not None:\n"
        "    pids += [p.process.pid for ps in node.all_processes.values() for p in ps]\n"
        "print(json.dumps(pids))\n")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pids = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(pids) >= 2
    left = [pid for pid in pids if not _gone(pid, within=15)]
    assert not left, f"processes left running after the script exited: {left}"
