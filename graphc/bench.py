"""Benchmarking graphc against onnxruntime: shared by ``graphc bench`` and ``bench/run_zoo.py``.

Both engines run in this process, on the same seeded inputs, with the same thread count (graphc
``compile(threads=N)``; onnxruntime ``intra_op_num_threads=N``, ``inter_op_num_threads=1``). After ``warmup``
untimed calls, each engine runs its timed calls in blocks (half the repeats in the order graphc, onnxruntime,
half in the reverse order; see :func:`time_in_blocks` for why not call by call). Times are wall-clock per call of the whole
model, inputs already in memory; we report the median and the 90th percentile.

GFLOP/s uses ``report()["flops"]`` (symbolic dimensions taken as 1, multiplied by ``batch`` when the model's
inputs have a symbolic dimension), so it is an estimate from the op registry's cost rules, the same count for
both engines.

onnxruntime is an optional extra (``pip install graphc[bench]``) and is imported only here, lazily.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import GraphcError, OptionError

DEFAULT_REPEAT = 20
DEFAULT_WARMUP = 3
SETTLE_SECONDS = 0.1  # idle time before each timed block (see time_in_blocks)
WEIGHTS = ("constant", "random")


# --------------------------------------------------------------------------------------------- results


@dataclass
class Timing:
    """The timed calls of one engine, in seconds."""

    engine: str
    samples: list[float]

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples)) * 1e3

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.samples, 90)) * 1e3

    def gflops(self, flops: float) -> float:
        return flops / (self.median_ms * 1e-3) / 1e9 if flops and self.median_ms > 0 else 0.0


@dataclass
class BenchResult:
    """What one benchmark measured; ``ort`` and the error fields are None without ``vs="onnxruntime"``."""

    model: str
    target: str
    threads: int
    batch: int
    repeat: int
    warmup: int
    flops: int
    compile_seconds: float
    graphc: Timing
    ort: Timing | None = None
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    mismatched: list[str] = field(default_factory=list)
    fallback_ops: list[str] = field(default_factory=list)
    compiled: Any = field(default=None, repr=False, compare=False)  # the model that was timed

    @property
    def ratio(self) -> float | None:
        """graphc median / onnxruntime median: below 1 means graphc is faster."""
        if self.ort is None or self.ort.median_ms <= 0:
            return None
        return self.graphc.median_ms / self.ort.median_ms

    @property
    def agree(self) -> bool:
        return not self.mismatched


# --------------------------------------------------------------------------------------------- inputs


def resolve_threads(threads: int | None) -> int:
    """An explicit thread count: ``None`` or 0 means every core this process may use."""
    if threads is None or threads == 0:
        try:
            return len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not on Linux
            return os.cpu_count() or 1
    if not isinstance(threads, int) or threads < 0:
        raise OptionError(f"threads must be a non-negative integer (0 = all cores), got {threads!r}")
    return threads


def random_inputs(compiled, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Seeded random inputs for a compiled model's signature; symbolic or unknown dims become ``batch``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in compiled.plan.graph.inputs:
        t = value.type
        shape = getattr(t, "shape", None)
        if shape is None:
            raise OptionError(f"input {value.name!r} has an unknown rank ({t}); give it with --input "
                              f"{value.name}=FILE.npy")
        dims = tuple(d if isinstance(d, int) else batch for d in shape)
        dtype = np.dtype(getattr(t, "dtype", None) or np.float32)
        feeds[value.name] = _random_array(rng, dims, dtype)
    return feeds


def _random_array(rng: np.random.Generator, shape: tuple, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f" or dtype.kind == "V":  # V: ml_dtypes' bfloat16 and friends
        return rng.standard_normal(shape).astype(np.float32).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, 10, shape).astype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    raise OptionError(f"cannot make random inputs of dtype {dtype}; give the input with --input NAME=FILE.npy")


def has_symbolic_dim(compiled) -> bool:
    return any(not isinstance(d, int) for v in compiled.plan.graph.inputs for d in (getattr(v.type, "shape", None)
                                                                                      or ()))


def load_source(model: Any, weights: str = "constant", seed: int = 0) -> Any:
    """What to hand to ``graphc.compile``: ``weights="random"`` swaps a zoo model for its random-weight copy."""
    if weights not in WEIGHTS:
        raise OptionError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "constant":
        return model
    if not (isinstance(model, str) and model.startswith("zoo:")):
        raise OptionError("weights='random' applies to zoo:NAME models only (other models keep their weights)")
    from . import zoo

    return zoo.load(model[len("zoo:"):], weights="random", seed=seed)


# --------------------------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], Any], repeat: int, warmup: int) -> list[float]:
    """``warmup`` untimed calls, then ``repeat`` timed ones; seconds per call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def time_in_blocks(fns: list[Callable[[], Any]], repeat: int, warmup: int,
                   settle: float | None = None) -> list[list[float]]:
    """Like :func:`time_calls` for several engines: each engine runs its calls in a block of its own.

    Engines are not alternated call by call: both numpy's BLAS and onnxruntime keep their worker threads
    spinning for a while after a call, and that spinning lands in the other engine's timed call (measured here:
    onnxruntime's ResNet-50 looked 2.5x slower alternated with graphc than alone). Instead the repeats are
    split in two halves run in opposite engine orders (A B, then B A), each block after its own warmup, so
    slow drift of the machine's state still falls on both engines alike. Before every block the process idles
    ``settle`` seconds, so that the previous block's spinning threads have parked: onnxruntime's intra-op
    worker spins about 40 ms after its last run (measured on the LSTM LM, 2 threads), graphc's about 50 µs,
    and without the pause the engine timed after onnxruntime paid for that spin in its warmup and first
    calls. The pause is the same for every engine and block (``None``: ``SETTLE_SECONDS``).
    """
    settle = SETTLE_SECONDS if settle is None else settle
    samples: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for half, engines in ((repeat - repeat // 2, order), (repeat // 2, order[::-1])):
        if half == 0:
            continue
        for i in engines:
            if settle > 0:
                time.sleep(settle)
            samples[i].extend(time_calls(fns[i], half, warmup))
    return samples


# --------------------------------------------------------------------------------------------- onnxruntime


def import_onnxruntime():
    """The onnxruntime module, or a GraphcError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise GraphcError("comparing with onnxruntime needs the bench extra: pip install graphc[bench]") from None
    return onnxruntime


def ort_session(model_proto, threads: int, target: str = "llvm"):
    """An onnxruntime session for ``model_proto`` with ``threads`` intra-op threads and one inter-op thread."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if target == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        data = model_proto.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GB limit
        raise GraphcError(f"cannot hand this model to onnxruntime: {exc}") from None
    try:
        return ort.InferenceSession(data, opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for models it rejects
        raise GraphcError(f"onnxruntime cannot load the model: {_one_line(exc)}") from None


def _one_line(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def compare_outputs(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], rtol: float = 1e-3,
                    atol: float = 1e-4) -> tuple[float, float, list[str]]:
    """Max abs error, max error relative to each output's scale (max |expected|), and the outputs that differ.

    An output differs when ``|got - expected| > atol * scale + rtol * |expected|`` anywhere (scale: the
    largest magnitude in that expected output, at least 1), or when shapes differ.
    """
    max_abs, max_rel, bad = 0.0, 0.0, []
    for name, ref in expected.items():
        ref = np.asarray(ref)
        out = np.asarray(got.get(name)) if name in got else None
        if out is None or out.shape != ref.shape:
            bad.append(name)
            continue
        if ref.size == 0:
            continue
        if ref.dtype.kind not in "fc" and out.dtype.kind not in "fc":
            if not np.array_equal(ref, out):
                bad.append(name)
            continue
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        diff = np.abs(out64 - ref64)
        err = float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0
        scale = float(np.max(np.abs(ref64[np.isfinite(ref64)]), initial=0.0))
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / scale if scale > 0 else err)
        if not np.allclose(out64, ref64, rtol=rtol, atol=atol * max(scale, 1.0), equal_nan=True):
            bad.append(name)
    return max_abs, max_rel, bad


# --------------------------------------------------------------------------------------------- the benchmark


def bench(model: Any, *, vs: str | None = None, threads: int | None = None, repeat: int = DEFAULT_REPEAT,
          warmup: int = DEFAULT_WARMUP, batch: int = 1, target: str | None = None, weights: str = "constant",
          seed: int = 0, name: str | None = None, passes: Any = None, precision: str = "fp32") -> BenchResult:
    """Compile ``model``, time it (and onnxruntime with ``vs="onnxruntime"``) on the same inputs.

    With ``precision="mixed"`` graphc's outputs are compared with onnxruntime's (float32) at bf16's tolerance
    (1e-2 of each output's scale) instead of float32's."""
    import graphc

    _check_counts(repeat, warmup, batch)
    if vs not in (None, "onnxruntime"):
        raise OptionError(f"--vs {vs!r}: only 'onnxruntime' is supported")
    if vs:
        import_onnxruntime()  # fail before a long compile
    threads = resolve_threads(threads)
    compiled = graphc.compile(load_source(model, weights, seed), target=target, threads=threads, passes=passes,
                              precision=precision)
    symbolic = has_symbolic_dim(compiled)
    if batch != 1 and not symbolic:
        raise OptionError(f"--batch {batch}: this model's inputs have no symbolic dimension "
                          f"({', '.join(f'{n}: {t}' for n, t in compiled.input_types.items())}), so its batch is fixed")
    feeds = random_inputs(compiled, seed=seed, batch=batch)
    flops = int(compiled.report().get("flops", 0)) * (batch if symbolic else 1)
    result = BenchResult(model=name or compiled.source, target=compiled.target, threads=threads, batch=batch,
                         repeat=repeat, warmup=warmup, flops=flops, compile_seconds=compiled.compile_seconds,
                         graphc=Timing(f"graphc ({compiled.target})", []),
                         fallback_ops=list(compiled.report().get("fallback_ops", [])), compiled=compiled)
    ours = compiled.run(feeds)  # also checks the inputs before any timing
    if not vs:
        result.graphc.samples = time_calls(lambda: compiled.run(feeds), repeat, warmup)
        return result
    session = ort_session(compiled.source_model, threads, compiled.target)
    ort_names = [o.name for o in session.get_outputs()]
    ort_feeds = {i.name: feeds[i.name] for i in session.get_inputs() if i.name in feeds}
    try:
        theirs = dict(zip(ort_names, session.run(None, ort_feeds)))
    except Exception as exc:
        raise GraphcError(f"onnxruntime failed to run the model: {_one_line(exc)}") from None
    tolerance = {"rtol": 1e-2, "atol": 1e-2} if precision != "fp32" else {}
    result.max_abs_err, result.max_rel_err, result.mismatched = compare_outputs(theirs, ours, **tolerance)
    g, o = time_in_blocks([lambda: compiled.run(feeds), lambda: session.run(None, ort_feeds)], repeat, warmup)
    result.graphc.samples = g
    result.ort = Timing("onnxruntime", o)
    return result


def _check_counts(repeat: int, warmup: int, batch: int) -> None:
    if not isinstance(repeat, int) or repeat < 1:
        raise OptionError(f"repeat must be at least 1, got {repeat!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise OptionError(f"warmup must be 0 or more, got {warmup!r}")
    if not isinstance(batch, int) or batch < 1:
        raise OptionError(f"batch must be at least 1, got {batch!r}")


# --------------------------------------------------------------------------------------------- printing


def format_table(result: BenchResult) -> str:
    """A plain-text table: engine, median ms, p90 ms, GFLOP/s, ratio to onnxruntime; then the error line."""
    rows = [("engine", "median ms", "p90 ms", "GFLOP/s", "ratio vs ort")]
    timings = [result.graphc] + ([result.ort] if result.ort else [])
    for t in timings:
        if result.ort is None:
            ratio = "-"
        else:
            ratio = f"{t.median_ms / result.ort.median_ms:.2f}" if result.ort.median_ms > 0 else "-"
        rows.append((t.engine, f"{t.median_ms:.3f}", f"{t.p90_ms:.3f}",
                     f"{t.gflops(result.flops):.2f}" if result.flops else "-", ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = (f"{result.model}: target={result.target} threads={result.threads} batch={result.batch} "
            f"repeat={result.repeat} warmup={result.warmup} GFLOP={result.flops / 1e9:.3f} "
            f"compile={result.compile_seconds:.2f}s")
    out = [head, *lines]
    if result.ort is not None:
        verdict = "outputs agree" if result.agree else f"outputs DIFFER: {', '.join(result.mismatched)}"
        out.append(f"{verdict} (max abs error {result.max_abs_err:.3g}, max rel error {result.max_rel_err:.3g})")
        if result.ratio is not None:
            out.append(f"ratio graphc/onnxruntime (median): {result.ratio:.2f}  (below 1: graphc faster)")
    return "\n".join(out)


def geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))
