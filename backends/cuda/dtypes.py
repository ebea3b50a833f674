"""numpy dtypes as CUDA C types, and C literals of numbers.

The CUDA backend generates code for the dtypes below; a kernel that touches any other dtype (float16 storage
is left to the precision pass, strings, complex numbers) is not generated and its node runs on the host.
"""

from __future__ import annotations

import math

import numpy as np

C_TYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int64): "long long",
    np.dtype(np.int32): "int",
    np.dtype(np.int16): "short",
    np.dtype(np.int8): "signed char",
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.uint64): "unsigned long long",
    np.dtype(np.bool_): "bool",
}


class Unsupported(Exception):
    """The CUDA code generator has no device code for this node: it runs on the host (a fallback)."""


def c_type(dtype) -> str:
    dtype = np.dtype(dtype)
    try:
        return C_TYPES[dtype]
    except KeyError:
        raise Unsupported(f"dtype {dtype.name} has no CUDA code path") from None


def is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f"


def math_fn(name: str, dtype) -> str:
    """``expf`` for float, ``exp`` for double (the single-precision CUDA intrinsics are the fast ones)."""
    return name + "f" if np.dtype(dtype) == np.float32 else name


def literal(value, dtype) -> str:
    """A C literal of ``value`` in ``dtype`` (infinities and NaN through CUDA's macros)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return "true" if bool(value) else "false"
    if dtype.kind in "iu":
        v = int(value)
        suffix = "LL" if dtype.itemsize == 8 and dtype.kind == "i" else ("ULL" if dtype.itemsize == 8 else "")
        if dtype == np.int64 and v == -(1 << 63):
            return "(-9223372036854775807LL - 1)"
        return f"(({c_type(dtype)}){v}{suffix})"
    v = float(value)
    if math.isnan(v):
        return f"(({c_type(dtype)})NAN)"
    if math.isinf(v):
        return f"(({c_type(dtype)})INFINITY)" if v > 0 else f"(-({c_type(dtype)})INFINITY)"
    text = repr(float(np.float32(v))) if dtype == np.float32 else repr(v)
    if "e" not in text and "." not in text and "inf" not in text:
        text += ".0"
    return f"{text}f" if dtype == np.float32 else text
