"""Running one corpus case: in-process under a time limit, or in a child process (``python -m``).

An outcome is one of
  ``error``   — a GraphcError was raised (the wanted result), at ``stage`` "compile" or "run";
  ``success`` — the model compiled and ran (acceptable only for byte-flip kinds);
  ``foreign`` — some other exception escaped graphc (a bug);
  ``timeout`` — the case ran past its time limit (a hang);
  ``crash``   — the child process died (signal, abort, stack overflow) or printed no result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager

import graphc

#: in-process time limit per case (seconds)
CASE_TIME_LIMIT = 20
#: child processes get a little more (interpreter start-up, imports)
CHILD_TIME_LIMIT = 60
#: child processes may not map more than this (hostile dims must fail fast, not exhaust the machine)
CHILD_MEMORY_LIMIT = 4 << 30

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class Outcome:
    case_id: str
    status: str                 # error | success | foreign | timeout | crash
    stage: str = ""             # compile | run
    exc_type: str = ""          # class name of the exception
    exc_mro: tuple = ()         # its class names, most derived first
    message: str = ""
    ops: tuple = ()             # UnsupportedOpError.ops
    detail: str = ""            # traceback for foreign exceptions / child output for crashes
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Outcome":
        data = json.loads(text)
        data["exc_mro"] = tuple(data.get("exc_mro", ()))
        data["ops"] = tuple(tuple(o) for o in data.get("ops", ()))
        return cls(**data)


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so that ``except Exception`` in product code cannot swallow it."""


@contextmanager
def time_limit(seconds: int):
    if not hasattr(signal, "SIGALRM"):  # pragma: no cover - not on Windows
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _from_exception(case_id: str, stage: str, exc: BaseException, start: float) -> Outcome:
    mro = tuple(c.__name__ for c in type(exc).__mro__)
    if isinstance(exc, graphc.GraphcError):
        return Outcome(case_id, "error", stage, type(exc).__name__, mro, str(exc),
                       tuple(tuple(o) for o in getattr(exc, "ops", ()) or ()), seconds=time.perf_counter() - start)
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
    return Outcome(case_id, "foreign", stage, type(exc).__name__, mro, str(exc)[:2000], detail=detail,
                   seconds=time.perf_counter() - start)


def run_case(case, tmpdir: str, limit: int | None = CASE_TIME_LIMIT) -> Outcome:
    """Compile (and run, if it compiled) one case in this process."""
    start = time.perf_counter()
    stage = "compile"
    try:
        with (time_limit(limit) if limit else _null()):
            model = case.materialize(tmpdir)
            compiled = graphc.compile(model, target="reference")
            stage = "run"
            compiled.run(case.feeds if case.feeds is not None or case.kind == "runtime_feed" else {})
    except CaseTimeout as exc:
        return Outcome(case.case_id, "timeout", stage, "CaseTimeout", message=str(exc),
                       seconds=time.perf_counter() - start)
    except RecursionError as exc:
        return _from_exception(case.case_id, stage, exc, start)
    except BaseException as exc:  # noqa: BLE001 - anything else is what we are looking for
        if isinstance(exc, KeyboardInterrupt):
            raise
        return _from_exception(case.case_id, stage, exc, start)
    return Outcome(case.case_id, "success", "run", seconds=time.perf_counter() - start)


@contextmanager
def _null():
    yield


def run_isolated(case_id: str, timeout: int = CHILD_TIME_LIMIT) -> Outcome:
    """Run one case in a fresh interpreter; a crash or hang there is reported, not suffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.robustness.harness", case_id], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return Outcome(case_id, "timeout", message=f"child ran past {timeout} s",
                       detail=(exc.stderr or b"")[-2000:].decode("utf-8", "replace")
                       if isinstance(exc.stderr, bytes) else str(exc.stderr or "")[-2000:],
                       seconds=time.perf_counter() - start)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("OUTCOME "):
            return Outcome.from_json(line[len("OUTCOME "):])
    return Outcome(case_id, "crash", message=f"child exited with status {proc.returncode}",
                   detail=(proc.stdout[-1500:] + "\n" + proc.stderr[-2500:]), seconds=time.perf_counter() - start)


def _child(case_id: str) -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_LIMIT, CHILD_MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):  # pragma: no cover
        pass
    import faulthandler

    faulthandler.enable()
    from tests.robustness.corpus import get_case

    case = get_case(case_id)
    with tempfile.TemporaryDirectory(prefix="graphc-robust-") as tmp:
        outcome = run_case(case, tmp, limit=CHILD_TIME_LIMIT - 10)
    sys.stdout.write("OUTCOME " + outcome.to_json() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _child(sys.argv[1])
