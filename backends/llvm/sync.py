"""The barrier the entry function puts between kernels, written in LLVM IR.

A sense-reversing counter barrier over a per-executable sync block (``count`` at byte 0, ``generation`` at
byte 64, on separate cache lines): the last thread to arrive resets the count and bumps the generation; the
others spin on the generation with ``pause`` (leaving early once the run's abort word is set), and after a
while also yield the core, because this machine
may run more threads than cores (tests in parallel, other processes) and a spinner must not starve the
thread it is waiting for.
"""

from __future__ import annotations

from llvmlite import ir

from .kernel import I8P, I32, I64, VOID

BARRIER = "graphc.barrier"
ABORT_OFFSET = 128  # = program.ERROR_OFFSET: once set, nobody waits (a thread that saw it has left the run)
SPINS_BEFORE_YIELD = 2000


def barrier_function(module: ir.Module) -> ir.Function:
    existing = module.globals.get(BARRIER)
    if existing is not None:
        return existing
    fn = ir.Function(module, ir.FunctionType(VOID, [I8P, I64]), name=BARRIER)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    sync, nthreads = fn.args
    entry = fn.append_basic_block("entry")
    arrive = fn.append_basic_block("arrive")
    last = fn.append_basic_block("last")
    wait = fn.append_basic_block("wait")
    spin = fn.append_basic_block("spin")
    yield_ = fn.append_basic_block("yield")
    done = fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_unsigned("==", nthreads, ir.Constant(I64, 1)), done, arrive)

    b.position_at_end(arrive)
    count = b.bitcast(sync, I32.as_pointer())
    generation = b.bitcast(b.gep(sync, [ir.Constant(I64, 64)]), I32.as_pointer())
    abort_word = b.bitcast(b.gep(sync, [ir.Constant(I64, ABORT_OFFSET)]), I32.as_pointer())
    gen = b.load_atomic(generation, "acquire", 4)
    old = b.atomic_rmw("add", count, ir.Constant(I32, 1), "acq_rel")
    n32 = b.trunc(nthreads, I32)
    b.cbranch(b.icmp_unsigned("==", old, b.sub(n32, ir.Constant(I32, 1))), last, wait)

    b.position_at_end(last)
    b.store_atomic(ir.Constant(I32, 0), count, "monotonic", 4)
    b.atomic_rmw("add", generation, ir.Constant(I32, 1), "release")
    b.branch(done)

    b.position_at_end(wait)
    spins = b.phi(I32)
    spins.add_incoming(ir.Constant(I32, 0), arrive)
    now = b.load_atomic(generation, "acquire", 4)
    abort = b.load_atomic(abort_word, "acquire", 4)
    released = b.or_(b.icmp_unsigned("!=", now, gen), b.icmp_unsigned("!=", abort, ir.Constant(I32, 0)))
    b.cbranch(released, done, spin)

    b.position_at_end(spin)
    if module.triple.startswith(("x86_64", "i686", "i386")):
        pause = ir.Function(module, ir.FunctionType(VOID, []), name="llvm.x86.sse2.pause")
        b.call(pause, [])
    more = b.add(spins, ir.Constant(I32, 1))
    b.cbranch(b.icmp_unsigned(">", more, ir.Constant(I32, SPINS_BEFORE_YIELD)), yield_, wait)
    spins.add_incoming(more, spin)

    b.position_at_end(yield_)
    sched_yield = ir.Function(module, ir.FunctionType(I32, []), name="sched_yield")
    b.call(sched_yield, [])
    b.branch(wait)
    spins.add_incoming(more, yield_)

    b.position_at_end(done)
    b.ret_void()
    return fn
