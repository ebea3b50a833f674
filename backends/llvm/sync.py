"""The barrier the entry function puts between kernels, written in LLVM IR, and the waiting helpers the LSTM's
step claims use (``wait_at_least`` / ``add_and_wake``).

A sense-reversing counter barrier over a per-executable sync block (``count`` at byte 0, ``sleepers`` at
byte 8, ``generation`` at byte 64, the run's abort word at byte 128: the words every arrival touches apart
from the one waiters poll). The last thread to arrive resets the count and bumps the generation. A waiter
backs off in three stages (:func:`backoff`): ``pause`` for about 50 µs (most waits at a barrier are a few
microseconds of imbalance), then ``sched_yield`` for 10-20 ms (a thread of ours or another process queued on
this core gets it), then it *blocks* in the kernel (Linux ``futex`` wait on the generation word, woken by the
last arrival, which makes the system call only when someone sleeps). Why not block early (tried: after 25 µs,
and after 25 µs + 1-2 ms of yields; docs/benchmarks.md, fourth session): on this VM a thread woken from a
futex can take milliseconds to run again (its virtual CPU halted), the other thread then blocked at the next
barrier in turn, and after an idle pause a 0.2 ms model ran at 1-4 ms for 10-20 runs; next to a spinning
thread of another engine it ran at 2 ms per run. Blocking early did help when another process kept a core
busy (the MLP: 1.05 against 2.2 ms), so the choice is a trade-off, measured, not a free win. Why block at
all (the earlier version yielded for ever): a run that waits long (a slow fallback, a thread descheduled for
long) should not keep a core busy for as long as it waits.

The futex wait has a timeout (``SLEEP_TIMEOUT_NS``) as a safety net: a thread that saw the run's abort word
leaves without arriving (see program.py), and a sleeper notices the abort on its next wake-up. Targets
without a futex (not Linux on x86-64 or AArch64) nap in ``usleep`` instead.
"""

from __future__ import annotations

from llvmlite import ir

from .kernel import I8P, I32, I64, VOID

BARRIER = "graphc.barrier"
COUNT_OFFSET = 0
SLEEPERS_OFFSET = 8  # on the count's cache line: the last arrival has just touched it
GENERATION_OFFSET = 64
ABORT_OFFSET = 128  # = program.ERROR_OFFSET: once set, nobody waits (a thread that saw it has left the run)
SPINS_BEFORE_YIELD = 2000  # pause instructions first (~50 µs: a pause is ~25 ns on this Zen 4)
YIELDS_BEFORE_SLEEP = 20000  # then sched_yield (~10-20 ms on an idle core), then the futex
SLEEP_TIMEOUT_NS = 1_000_000  # a sleeping waiter re-checks the abort word at least every millisecond
NAP_US = 50  # targets without futex: nap length between checks

FUTEX_WAIT_PRIVATE = 128  # FUTEX_WAIT | FUTEX_PRIVATE_FLAG
FUTEX_WAKE_PRIVATE = 129  # FUTEX_WAKE | FUTEX_PRIVATE_FLAG
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
TIMESPEC = ir.LiteralStructType([I64, I64])  # struct timespec on 64-bit Linux


def futex_number(module: ir.Module) -> int | None:
    """The futex system call's number on the module's target, or None where there is no futex to use."""
    triple = module.triple or ""
    if "linux" not in triple:
        return None
    return _SYS_FUTEX.get(triple.split("-", 1)[0])


def has_pause(module: ir.Module) -> bool:
    return (module.triple or "").startswith(("x86_64", "i686", "i386"))


def cpu_relax(module: ir.Module, b: ir.IRBuilder) -> None:
    """A spin-wait hint (x86 ``pause``: frees the core's other hardware thread and saves power); nothing
    elsewhere."""
    if has_pause(module):
        fn = module.globals.get("llvm.x86.sse2.pause") or ir.Function(module, ir.FunctionType(VOID, []),
                                                                       name="llvm.x86.sse2.pause")
        b.call(fn, [])


def _syscall(module: ir.Module) -> ir.Function:
    return module.globals.get("syscall") or ir.Function(module, ir.FunctionType(I64, [I64], var_arg=True),
                                                        name="syscall")


def futex_wait(module: ir.Module, b: ir.IRBuilder, word: ir.Value, expected: ir.Value,
               timeout: ir.Value | None = None) -> None:
    """Sleep while the i32 at ``word`` equals ``expected`` (i32), until woken, a signal, or ``timeout`` (a
    ``TIMESPEC*``, relative; None: no limit). Returns at once when the word already differs."""
    nr = futex_number(module)
    assert nr is not None, "futex_wait on a target without futex"
    null = ir.Constant(TIMESPEC.as_pointer(), None) if timeout is None else timeout
    b.call(_syscall(module), [ir.Constant(I64, nr), word, ir.Constant(I64, FUTEX_WAIT_PRIVATE),
                              b.zext(expected, I64), null, ir.Constant(I32.as_pointer(), None), ir.Constant(I64, 0)])


def futex_wake_all(module: ir.Module, b: ir.IRBuilder, word: ir.Value) -> None:
    """Wake every thread sleeping in :func:`futex_wait` on ``word``."""
    nr = futex_number(module)
    assert nr is not None, "futex_wake on a target without futex"
    b.call(_syscall(module), [ir.Constant(I64, nr), word, ir.Constant(I64, FUTEX_WAKE_PRIVATE),
                              ir.Constant(I64, 2**31 - 1)])


def usleep(module: ir.Module, b: ir.IRBuilder, microseconds: ir.Value) -> None:
    fn = module.globals.get("usleep") or ir.Function(module, ir.FunctionType(I32, [I32]), name="usleep")
    b.call(fn, [microseconds])


def backoff(module: ir.Module, b: ir.IRBuilder, spins: ir.Value) -> tuple[ir.Value, ir.Value]:
    """One step of a waiting loop: ``pause`` for the first ``SPINS_BEFORE_YIELD`` steps, ``sched_yield`` for the
    next ``YIELDS_BEFORE_SLEEP``. Returns (spins + 1, i1 "time to sleep"); the builder ends in a new block."""
    fn = b.function
    pause_bb, yield_bb, cont = (fn.append_basic_block(n) for n in ("backoff.pause", "backoff.yield", "backoff.next"))
    b.cbranch(b.icmp_unsigned("<", spins, ir.Constant(I32, SPINS_BEFORE_YIELD)), pause_bb, yield_bb)
    b.position_at_end(pause_bb)
    cpu_relax(module, b)
    b.branch(cont)
    b.position_at_end(yield_bb)
    sched_yield = module.globals.get("sched_yield") or ir.Function(module, ir.FunctionType(I32, []),
                                                                   name="sched_yield")
    b.call(sched_yield, [])
    b.branch(cont)
    b.position_at_end(cont)
    more = b.add(spins, ir.Constant(I32, 1))
    return more, b.icmp_unsigned(">", more, ir.Constant(I32, SPINS_BEFORE_YIELD + YIELDS_BEFORE_SLEEP))


def _word(b: ir.IRBuilder, base: ir.Value, offset: int) -> ir.Value:
    return b.bitcast(b.gep(base, [ir.Constant(I64, offset)]), I32.as_pointer())


def _sleep_until(module: ir.Module, fn: ir.Function, b: ir.IRBuilder, sleepers: ir.Value, done: ir.Block,
                 released, futex_word: ir.Value, timeout: ir.Value | None = None) -> None:
    """Emit, where ``b`` stands: count this thread in ``*sleepers``, sleep until ``released(builder)`` (seq_cst
    loads; returns ``(flag, value the futex waits on while it holds)``), uncount it and branch to ``done``.

    seq_cst on the sleepers increment and on the check that follows it, as on the waker's side (its update,
    then its read of ``*sleepers``): either this thread sees the update or the waker sees the sleeper, so no
    wake-up is lost. Without a futex (not Linux) it naps in ``usleep`` steps instead."""
    check, nap, unsleep = (fn.append_basic_block(n) for n in ("sleep.check", "sleep.nap", "sleep.unsleep"))
    b.atomic_rmw("add", sleepers, ir.Constant(I32, 1), "seq_cst")
    b.branch(check)
    b.position_at_end(check)
    ok, expected = released(b)
    b.cbranch(ok, unsleep, nap)
    b.position_at_end(nap)
    if futex_number(module) is not None:
        futex_wait(module, b, futex_word, expected, timeout)  # returns at once if the word moved meanwhile
    else:
        usleep(module, b, ir.Constant(I32, NAP_US))
    b.branch(check)
    b.position_at_end(unsleep)
    b.atomic_rmw("sub", sleepers, ir.Constant(I32, 1), "seq_cst")
    b.branch(done)


def barrier_function(module: ir.Module) -> ir.Function:
    existing = module.globals.get(BARRIER)
    if existing is not None:
        return existing
    fn = ir.Function(module, ir.FunctionType(VOID, [I8P, I64]), name=BARRIER)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    sync, nthreads = fn.args
    names = ("entry", "arrive", "last", "wake", "wait", "spin", "sleep", "done")
    blocks = {n: fn.append_basic_block(n) for n in names}
    use_futex = futex_number(module) is not None
    b = ir.IRBuilder(blocks["entry"])
    timeout = None
    if use_futex:
        timeout = b.alloca(TIMESPEC)
        b.store(ir.Constant(TIMESPEC, [ir.Constant(I64, 0), ir.Constant(I64, SLEEP_TIMEOUT_NS)]), timeout)
    b.cbranch(b.icmp_unsigned("==", nthreads, ir.Constant(I64, 1)), blocks["done"], blocks["arrive"])

    b.position_at_end(blocks["arrive"])
    count = _word(b, sync, COUNT_OFFSET)
    sleepers = _word(b, sync, SLEEPERS_OFFSET)
    generation = _word(b, sync, GENERATION_OFFSET)
    abort_word = _word(b, sync, ABORT_OFFSET)
    gen = b.load_atomic(generation, "acquire", 4)
    old = b.atomic_rmw("add", count, ir.Constant(I32, 1), "acq_rel")
    n32 = b.trunc(nthreads, I32)
    b.cbranch(b.icmp_unsigned("==", old, b.sub(n32, ir.Constant(I32, 1))), blocks["last"], blocks["wait"])

    # the last arrival: open the barrier, then wake whoever went to sleep. seq_cst on both sides (the
    # generation bump here, the sleepers increment there, each followed by a load of the other word) so that
    # either the sleeper sees the new generation or this thread sees the sleeper: no lost wake-up.
    b.position_at_end(blocks["last"])
    b.store_atomic(ir.Constant(I32, 0), count, "monotonic", 4)
    b.atomic_rmw("add", generation, ir.Constant(I32, 1), "seq_cst")
    asleep = b.load_atomic(sleepers, "seq_cst", 4)
    b.cbranch(b.icmp_unsigned("!=", asleep, ir.Constant(I32, 0)), blocks["wake"], blocks["done"])
    b.position_at_end(blocks["wake"])
    if use_futex:
        futex_wake_all(module, b, generation)
    b.branch(blocks["done"])

    def released(builder: ir.IRBuilder, ordering: str = "acquire") -> ir.Value:
        now = builder.load_atomic(generation, ordering, 4)
        abort = builder.load_atomic(abort_word, ordering, 4)
        aborted = builder.icmp_unsigned("!=", abort, ir.Constant(I32, 0))
        return builder.or_(builder.icmp_unsigned("!=", now, gen), aborted)

    # spin a bounded time: most waits at a barrier are a few microseconds of imbalance
    b.position_at_end(blocks["wait"])
    spins = b.phi(I32)
    spins.add_incoming(ir.Constant(I32, 0), blocks["arrive"])
    b.cbranch(released(b), blocks["done"], blocks["spin"])
    b.position_at_end(blocks["spin"])
    more, tired = backoff(module, b, spins)
    spins.add_incoming(more, b.block)
    b.cbranch(tired, blocks["sleep"], blocks["wait"])

    # then sleep until the generation moves (or the abort word is set)
    b.position_at_end(blocks["sleep"])
    _sleep_until(module, fn, b, sleepers, blocks["done"], lambda builder: (released(builder, "seq_cst"), gen),
                 generation, timeout)

    b.position_at_end(blocks["done"])
    b.ret_void()
    return fn


WAIT_AT_LEAST = "graphc.wait_at_least"
ADD_AND_WAKE = "graphc.add_and_wake"


def wait_at_least_function(module: ir.Module) -> ir.Function:
    """``void graphc.wait_at_least(i32* counter, i32 target, i32* sleepers)``: until ``*counter >= target``
    (a counter that only grows; compared as a difference, so it may wrap). Backs off (:func:`backoff`),
    then sleeps on the counter's futex (counted in ``*sleepers``, which :func:`add_and_wake_function` reads).
    The last load is an acquire: what the adders wrote before adding is visible after."""
    existing = module.globals.get(WAIT_AT_LEAST)
    if existing is not None:
        return existing
    fn = ir.Function(module, ir.FunctionType(VOID, [I32.as_pointer(), I32, I32.as_pointer()]), name=WAIT_AT_LEAST)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    counter, target, sleepers = fn.args
    names = ("entry", "spin", "relax", "sleep", "done")
    blocks = {n: fn.append_basic_block(n) for n in names}
    b = ir.IRBuilder(blocks["entry"])
    b.branch(blocks["spin"])

    def reached(builder: ir.IRBuilder, ordering: str) -> tuple[ir.Value, ir.Value]:
        now = builder.load_atomic(counter, ordering, 4)
        return now, builder.icmp_signed(">=", builder.sub(now, target), ir.Constant(I32, 0))

    b.position_at_end(blocks["spin"])
    spins = b.phi(I32)
    spins.add_incoming(ir.Constant(I32, 0), blocks["entry"])
    _, ok = reached(b, "acquire")
    b.cbranch(ok, blocks["done"], blocks["relax"])
    b.position_at_end(blocks["relax"])
    more, tired = backoff(module, b, spins)
    spins.add_incoming(more, b.block)
    b.cbranch(tired, blocks["sleep"], blocks["spin"])

    b.position_at_end(blocks["sleep"])

    def counted(builder: ir.IRBuilder) -> tuple[ir.Value, ir.Value]:
        now, ok = reached(builder, "seq_cst")
        return ok, now

    _sleep_until(module, fn, b, sleepers, blocks["done"], counted, counter)
    b.position_at_end(blocks["done"])
    b.ret_void()
    return fn


def add_and_wake_function(module: ir.Module) -> ir.Function:
    """``void graphc.add_and_wake(i32* counter, i32 delta, i32* sleepers)``: ``*counter += delta`` (a release:
    what this thread wrote before is visible to whoever sees the new count), then wake the sleepers of
    :func:`wait_at_least_function` if there are any (seq_cst on both sides: no lost wake-up)."""
    existing = module.globals.get(ADD_AND_WAKE)
    if existing is not None:
        return existing
    fn = ir.Function(module, ir.FunctionType(VOID, [I32.as_pointer(), I32, I32.as_pointer()]), name=ADD_AND_WAKE)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    counter, delta, sleepers = fn.args
    entry, wake, done = (fn.append_basic_block(n) for n in ("entry", "wake", "done"))
    b = ir.IRBuilder(entry)
    b.atomic_rmw("add", counter, delta, "seq_cst")
    asleep = b.load_atomic(sleepers, "seq_cst", 4)
    b.cbranch(b.icmp_unsigned("!=", asleep, ir.Constant(I32, 0)), wake, done)
    b.position_at_end(wake)
    if futex_number(module) is not None:
        futex_wake_all(module, b, counter)
    b.branch(done)
    b.position_at_end(done)
    b.ret_void()
    return fn
