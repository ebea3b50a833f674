"""Worker threads that wait for runs in native code, so that starting a run costs microseconds, not a wake-up.

Each worker is a Python thread that calls ``graphc_worker(control, tid)`` once and stays in that native
function (the GIL released) until the pool closes. A run is published through a control block of int64
words; the caller fills in the run's arguments, bumps the generation (``graphc_publish``: a release store),
runs thread 0 itself and waits for the others in ``graphc_wait``:

    word 0  generation (bumped once per run)         word 1  stop flag
    word 2  entry function address                    word 3  slots table address
    word 4  thread count                              word 5  sync block address
    word 6  fallback callback address                 word 8  threads done with this run
    word 16+tid  the status each worker's entry call returned

A waiting worker spins on the generation with ``pause`` for about 50 µs, then sleeps in steps growing
to 1 ms: back-to-back runs find it spinning (measured: a two-thread run of a one-op model takes 10 µs, against
63 µs with Python threads parked on semaphores, which had to wake up and take the GIL); an idle model costs
about a thousand wake-ups a second per worker, and the first run after a pause waits at most a millisecond.
Spinning longer (a few hundred microseconds) slowed whatever ran next on the other core, as onnxruntime's own
spinning threads (about 40 ms after each run) slow whatever follows them. Sleeping on a futex that the
publisher wakes was tried (docs/benchmarks.md, fourth session): on this VM, after an idle pause, the next 10
to 20 runs of a small model took 1-4 ms instead of 0.2 ms (woken threads are slow to get back on a core of
their own), where the timed naps recover in 2 or 3 runs. x86's ``pause`` is used where the target has it.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from llvmlite import ir

    from .jit import JitModule

# LLVM (llvmlite, jit, kernel, sync) is imported where the runtime is built: a model loaded from an artifact
# gets these functions from the artifact's shared library instead (native.py), without importing LLVM.

WORDS = 64
SPINS = 2_000  # pause instructions before the first nap (~50 µs on Zen 4)
MAX_SLEEP_US = 1000
ENTRY_CTYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                               ctypes.c_void_p)


def _word(b: ir.IRBuilder, ctl: ir.Value, index: int) -> ir.Value:
    from llvmlite import ir

    from .kernel import I64

    return b.gep(ctl, [ir.Constant(I64, index)], inbounds=True)


def _build_runtime() -> JitModule:
    from llvmlite import ir

    from .jit import JitModule, new_module, optimize
    from .kernel import I32, I64, VOID

    module = new_module("graphc_workers")
    i64p = I64.as_pointer()
    x86 = module.triple.startswith(("x86_64", "i686", "i386"))
    pause = ir.Function(module, ir.FunctionType(VOID, []), name="llvm.x86.sse2.pause") if x86 else None
    usleep = ir.Function(module, ir.FunctionType(I32, [I32]), name="usleep")
    entry_type = ir.FunctionType(I32, [ir.IntType(8).as_pointer().as_pointer(), I64, I64, ir.IntType(8).as_pointer(),
                                       ir.IntType(8).as_pointer()])

    # void graphc_publish(i64* ctl): the run's words are written; let the workers see them
    fn = ir.Function(module, ir.FunctionType(VOID, [i64p]), name="graphc_publish")
    b = ir.IRBuilder(fn.append_basic_block())
    b.store_atomic(ir.Constant(I64, 0), _word(b, fn.args[0], 8), "release", 8)
    b.atomic_rmw("add", _word(b, fn.args[0], 0), ir.Constant(I64, 1), "release")
    b.ret_void()

    # void graphc_wait(i64* ctl, i64 count): until `count` workers have finished the run
    fn = ir.Function(module, ir.FunctionType(VOID, [i64p, I64]), name="graphc_wait")
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    b.branch(loop)
    b.position_at_end(loop)
    finished = b.load_atomic(_word(b, fn.args[0], 8), "acquire", 8)
    if pause is not None:
        b.call(pause, [])
    b.cbranch(b.icmp_signed(">=", finished, fn.args[1]), done, loop)
    b.position_at_end(done)
    b.ret_void()

    # void graphc_worker(i64* ctl, i64 tid)
    fn = ir.Function(module, ir.FunctionType(VOID, [i64p, I64]), name="graphc_worker")
    ctl, tid = fn.args
    blocks = {n: fn.append_basic_block(n) for n in ("entry", "wait", "spin", "nap", "go", "run", "out")}
    b = ir.IRBuilder(blocks["entry"])
    # Generation 0 is "no run yet": the control block is zeroed before the thread starts, and a run may be
    # published before this thread gets here (reading the generation here instead missed that run, and its
    # caller waited at the first barrier for ever: a race an artifact's fast load, with no lowering between
    # the pool's start and the first run, made likely)
    first_seen = ir.Constant(I64, 0)
    b.branch(blocks["wait"])

    b.position_at_end(blocks["wait"])  # seen: the generation already served; spins; sleep: current nap
    seen = b.phi(I64, name="seen")
    spins = b.phi(I64, name="spins")
    sleep = b.phi(I32, name="sleep")
    seen.add_incoming(first_seen, blocks["entry"])
    spins.add_incoming(ir.Constant(I64, 0), blocks["entry"])
    sleep.add_incoming(ir.Constant(I32, 1), blocks["entry"])
    gen = b.load_atomic(_word(b, ctl, 0), "acquire", 8)
    b.cbranch(b.icmp_unsigned("!=", gen, seen), blocks["go"], blocks["spin"])

    b.position_at_end(blocks["spin"])
    if pause is not None:
        b.call(pause, [])
    more = b.add(spins, ir.Constant(I64, 1))
    b.cbranch(b.icmp_unsigned("<", more, ir.Constant(I64, SPINS)), blocks["wait"], blocks["nap"])

    b.position_at_end(blocks["nap"])
    b.call(usleep, [sleep])
    doubled = b.shl(sleep, ir.Constant(I32, 1))
    longer = b.select(b.icmp_unsigned(">", doubled, ir.Constant(I32, MAX_SLEEP_US)), ir.Constant(I32, MAX_SLEEP_US),
                      doubled)
    b.branch(blocks["wait"])
    for block, s_val, sp_val, sl_val in ((blocks["spin"], seen, more, sleep), (blocks["nap"], seen, more, longer)):
        seen.add_incoming(s_val, block)
        spins.add_incoming(sp_val, block)
        sleep.add_incoming(sl_val, block)

    b.position_at_end(blocks["go"])
    stop = b.load_atomic(_word(b, ctl, 1), "acquire", 8)
    b.cbranch(b.icmp_unsigned("!=", stop, ir.Constant(I64, 0)), blocks["out"], blocks["run"])

    b.position_at_end(blocks["run"])
    entry_fn = b.inttoptr(b.load(_word(b, ctl, 2)), entry_type.as_pointer())
    slots = b.inttoptr(b.load(_word(b, ctl, 3)), ir.IntType(8).as_pointer().as_pointer())
    n = b.load(_word(b, ctl, 4))
    sync = b.inttoptr(b.load(_word(b, ctl, 5)), ir.IntType(8).as_pointer())
    callback = b.inttoptr(b.load(_word(b, ctl, 6)), ir.IntType(8).as_pointer())
    rc = b.call(entry_fn, [slots, tid, n, sync, callback])
    b.store(b.sext(rc, I64), b.gep(ctl, [b.add(tid, ir.Constant(I64, 16))], inbounds=True))
    b.atomic_rmw("add", _word(b, ctl, 8), ir.Constant(I64, 1), "release")
    seen.add_incoming(gen, blocks["run"])
    spins.add_incoming(ir.Constant(I64, 0), blocks["run"])
    sleep.add_incoming(ir.Constant(I32, 1), blocks["run"])
    b.branch(blocks["wait"])

    b.position_at_end(blocks["out"])
    b.ret_void()
    return JitModule(optimize(module))


@functools.lru_cache(maxsize=None)
def _runtime():
    jit = _build_runtime()
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    return (jit, ctypes.CFUNCTYPE(None, ptr, i64)(jit.address("graphc_worker")),
            ctypes.CFUNCTYPE(None, ptr)(jit.address("graphc_publish")),
            ctypes.CFUNCTYPE(None, ptr, i64)(jit.address("graphc_wait")))


class NativeWorkers:
    """``n - 1`` worker threads waiting in native code; :meth:`run` runs an entry function on all ``n``."""

    def __init__(self, n: int, runtime: tuple | None = None):
        self.n = n
        # runtime: (code kept alive, worker, publish, wait) from an artifact's shared library; else built here
        self._jit, worker, self._publish, self._wait = runtime or _runtime()
        self.control = np.zeros(WORDS, np.int64)
        self._address = self.control.ctypes.data
        self._closed = False
        self._threads = [threading.Thread(target=worker, args=(self._address, t + 1), daemon=True,
                                          name=f"graphc-llvm-{t + 1}") for t in range(n - 1)]
        for t in self._threads:
            t.start()

    def run(self, entry: ENTRY_CTYPE, entry_address: int, table: int, sync: int, callback: int) -> list[int]:
        """Run ``entry`` on every thread (this one is thread 0); the status each thread returned."""
        c = self.control
        c[2], c[3], c[4], c[5], c[6] = entry_address, table, self.n, sync, callback
        c[16:16 + self.n] = 0
        self._publish(self._address)
        try:
            first = entry(table, 0, self.n, sync, callback)
        finally:
            self._wait(self._address, self.n - 1)  # the entry ends with a barrier: they are leaving too
        return [int(first)] + [int(v) for v in c[17:16 + self.n]]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.control[1] = 1
        self._publish(self._address)
        for t in self._threads:
            t.join(timeout=1.0)
