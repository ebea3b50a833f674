"""Checking run-time inputs against the compiled signature, before any kernel runs.

Mistakes are reported by input name with the expected and the given type, e.g.::

    input 'data': expected float32[N,3,224,224], got float64[1,3,224,224] (dtype differs: cast with .astype)
"""

from __future__ import annotations

from collections.abc import Mapping  # (typing.Mapping's isinstance is several times slower: per run)
from typing import Any

import numpy as np

from ..errors import InputError
from ..ir.types import OptionalType, SequenceType, TensorType, Type


def _describe(array: np.ndarray) -> str:
    return f"{array.dtype.name}[{','.join(str(d) for d in array.shape)}]"


def check_inputs(names: list[str], types: list[Type], feeds: Mapping[str, Any]) -> list:
    """Validate ``feeds`` against the signature; return the values in signature order."""
    if not isinstance(feeds, Mapping):
        raise InputError(f"inputs must be a dict of name -> array, got {type(feeds).__name__}")
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {missing}")
        if extra:
            parts.append(f"unknown input(s) {extra}")
        signature = ", ".join(f"{n}: {t}" for n, t in zip(names, types))
        raise InputError("; ".join(parts) + f"; the model takes ({signature})")
    symbols: dict[str, tuple[int, str]] = {}
    values = []
    for name, expected in zip(names, types):
        value = feeds[name]
        if isinstance(expected, OptionalType):
            if value is None:  # an empty optional
                values.append(None)
                continue
            expected = expected.elem
        if isinstance(expected, SequenceType):
            if not isinstance(value, (list, tuple)):
                raise InputError(f"input {name!r}: expected a sequence (list of arrays), got {type(value).__name__}")
            values.append([np.asarray(v) for v in value])
            continue
        if not isinstance(value, np.ndarray):
            if hasattr(value, "__array__") or isinstance(value, (list, tuple, int, float, bool)):
                try:
                    value = np.asarray(value)
                except (ValueError, TypeError) as exc:
                    raise InputError(f"input {name!r}: cannot be made into an array ({exc})") from None
            else:
                raise InputError(f"input {name!r}: expected a numpy array, got {type(value).__name__}")
        if isinstance(expected, TensorType):
            _check_tensor(name, expected, value, symbols)
        values.append(value)
    return values


def _check_tensor(name: str, expected: TensorType, value: np.ndarray, symbols: dict) -> None:
    if expected.dtype is not None and value.dtype != expected.dtype:
        raise InputError(f"input {name!r}: expected {expected}, got {_describe(value)} "
                         f"(dtype differs: convert with .astype(np.{expected.dtype.name}))")
    if expected.shape is None:
        return
    if value.ndim != len(expected.shape):
        raise InputError(f"input {name!r}: expected {expected} (rank {len(expected.shape)}), got "
                         f"{_describe(value)} (rank {value.ndim})")
    for axis, (want, got) in enumerate(zip(expected.shape, value.shape)):
        if isinstance(want, int) and want != got:
            raise InputError(f"input {name!r}: expected {expected}, got {_describe(value)} "
                             f"(dimension {axis} must be {want})")
        if isinstance(want, str):
            seen = symbols.get(want)
            if seen is not None and seen[0] != got:
                raise InputError(f"input {name!r}: dimension {axis} ({want}) is {got}, but input {seen[1]!r} "
                                 f"set {want}={seen[0]}")
            symbols.setdefault(want, (got, name))
