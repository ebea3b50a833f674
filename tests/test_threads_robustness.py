"""The llvm backend's threads: results that do not depend on the thread count or on a busy machine, barriers
and the LSTM's step claims that never lose a wake-up, and a pool that does not spin when idle.

Thread counts above the machine's cores (3, 4 on a 2-core machine) are deliberate: they force threads to be
descheduled in the middle of a run, which is when a lost wake-up or a missed claim would hang or corrupt.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from tests.helpers import lstm_model as _lstm_model

pytest.importorskip("llvmlite")




@pytest.mark.parametrize("hidden, batch, seq, direction", [(64, 1, 40, "forward"), (48, 2, 17, "bidirectional"),
                                                            (128, 3, 9, "reverse")])
def test_lstm_steps_are_the_same_on_any_thread_count(hidden, batch, seq, direction):
    """Each (step, block) is computed once, by whichever thread claims it, with the same instructions: the
    outputs are bit for bit those of one thread, and match the reference."""
    model, feeds = _lstm_model(hidden, batch, seq, direction)
    one = graphc.compile(model, target="llvm", threads=1)
    assert one.report()["backend"]["specializations"][0]["emitters"] == {"LSTM": 1}
    want = one.run(feeds)
    ref = graphc.compile(model, target="reference").run(feeds)
    for name in ref:
        np.testing.assert_allclose(want[name], ref[name], rtol=1e-5, atol=1e-5)
    for threads in (2, 3, 4):
        many = graphc.compile(model, target="llvm", threads=threads)
        for _ in range(20):  # repeated: a claim or wake-up race shows up as a wrong or hung run now and then
            got = many.run(feeds)
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name}, {threads} threads")


@pytest.fixture
def busy_core():
    """Another process keeping one core busy for the test (a machine is never empty)."""
    spin = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    time.sleep(0.05)
    yield proc
    proc.kill()
    proc.wait()


def test_two_threads_stay_correct_and_finish_next_to_a_busy_process(busy_core):
    model, feeds = _lstm_model(64, 1, 64, "forward")
    want = graphc.compile(model, target="llvm", threads=1).run(feeds)
    two = graphc.compile(model, target="llvm", threads=2)
    start = time.perf_counter()
    for _ in range(30):
        got = two.run(feeds)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    # 30 runs of ~0.1 ms each; with a barrier per step that spins while its partner is descheduled this took
    # seconds. A generous bound: only a hang or a scheduler-slice stall per step would pass it.
    assert time.perf_counter() - start < 10.0


def _matmul_chain(n: int = 96, layers: int = 6):
    """Many small kernels (a barrier after each), enough FLOPs for every thread to take part."""
    rng = np.random.default_rng(1)
    f = TensorProto.FLOAT
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        prev = f"t{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", f, [n, n])],
                              [helper.make_tensor_value_info(prev, f, [n, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    return model, {"x": rng.standard_normal((n, n)).astype(np.float32)}


def test_barriers_with_more_threads_than_cores_and_callers_from_several_threads():
    """4 threads on a smaller machine, three callers at once (the executable's lock serialises them), runs
    spaced so that the workers fall asleep between them."""
    model, feeds = _matmul_chain()
    want = graphc.compile(model, target="llvm", threads=1).run(feeds)
    many = graphc.compile(model, target="llvm", threads=4)
    errors = []

    def caller(k: int):
        try:
            for i in range(15):
                got = many.run(feeds)
                for name in want:
                    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
                if (i + k) % 5 == 0:
                    time.sleep(0.002)  # long enough for idle workers and barrier waiters to sleep
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a run hung"
    assert not errors, errors[0]


def _thread_cpu_seconds(tid: int) -> float:
    return time.clock_gettime(((~tid) << 3) | 6)  # the CPU clock of thread ``tid`` (Linux's encoding)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads another thread's CPU clock (Linux)")
def test_idle_workers_do_not_spin():
    model, feeds = _matmul_chain()
    before = set(os.listdir("/proc/self/task"))
    two = graphc.compile(model, target="llvm", threads=2)
    workers = [int(t) for t in set(os.listdir("/proc/self/task")) - before]
    assert workers, "no worker thread was started"
    two.run(feeds)
    time.sleep(0.01)  # past the bounded spin
    start = {t: _thread_cpu_seconds(t) for t in workers}
    time.sleep(0.2)
    used = max(_thread_cpu_seconds(t) - start[t] for t in workers)
    assert used < 0.01, f"an idle worker used {used * 1e3:.1f} ms of CPU in 200 ms"
    np.testing.assert_allclose(two.run(feeds)["t5"], graphc.compile(model, target="llvm", threads=1).run(feeds)["t5"],
                               rtol=1e-5, atol=1e-5)


def test_a_run_published_before_the_workers_reach_their_wait_loop_is_not_missed():
    """A pool's first run can be published before its threads have entered native code (an artifact's
    fast load, no lowering in between). A worker that read the generation on entry then missed that run and
    the run waited at its first barrier for ever. Run in a child process: a hang must fail, not block."""
    script = """
import numpy as np
from onnx import TensorProto, helper
import graphc
from graphc.backends.llvm.workers import NativeWorkers
f = TensorProto.FLOAT
g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "m",
                      [helper.make_tensor_value_info("x", f, [64, 1024])],
                      [helper.make_tensor_value_info("y", f, [64, 1024])])
m = graphc.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]), target="llvm", threads=3)
x = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
for _ in range(200):
    pool = NativeWorkers(3)
    m.executable._workers = pool
    assert (m.run({"x": x})["y"] == np.maximum(x, 0)).all()
    pool.close()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_waiters_that_go_to_sleep_at_once_are_always_woken():
    """The futex paths of the barrier and of the LSTM's step counter, exercised on every wait: the back-off
    limits are cut to a few steps before the code is generated, so nearly every wait sleeps and every arrival
    must wake it. A lost wake-up hangs the LSTM (its wait has no timeout) or costs the barrier 1 ms; run in a
    child process so that a hang fails instead of blocking."""
    script = """
import time, numpy as np, graphc
from graphc.backends.llvm import sync
sync.SPINS_BEFORE_YIELD, sync.YIELDS_BEFORE_SLEEP = 2, 2
import tests.test_threads_robustness as t
for model, feeds in (t._lstm_model(64, 2, 30, "bidirectional"), t._matmul_chain()):
    want = graphc.compile(model, target="llvm", threads=1).run(feeds)
    for threads in (2, 3):
        m = graphc.compile(model, target="llvm", threads=threads)
        start = time.perf_counter()
        for _ in range(30):
            got = m.run(feeds)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
        print(threads, round(time.perf_counter() - start, 3))
print("ok")
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=root)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-1000:] + done.stderr[-2000:]
