"""Types of IR values: tensors (dtype + shape with symbolic dims), sequences and optionals.

A dimension is an ``int`` (static), a ``str`` (symbolic, e.g. ``"N"``: equal names mean equal sizes) or
``None`` (unknown). A shape is a tuple of dimensions, or ``None`` when even the rank is unknown.
Element types are numpy dtypes; the low-precision floats come from ``ml_dtypes`` (bfloat16, float8...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import onnx
from onnx import helper

Dim = Union[int, str, None]
Shape = Union[tuple, None]


def dtype_from_onnx(elem_type: int) -> np.dtype:
    """numpy dtype of an ONNX ``TensorProto.DataType`` code."""
    if elem_type == onnx.TensorProto.STRING:
        return np.dtype(object)
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def dtype_to_onnx(dtype: np.dtype) -> int:
    """ONNX ``TensorProto.DataType`` code of a numpy dtype."""
    dtype = np.dtype(dtype)
    if dtype == np.dtype(object) or dtype.kind in "US":
        return onnx.TensorProto.STRING
    return helper.np_dtype_to_tensor_dtype(dtype)


def dtype_name(dtype: np.dtype | None) -> str:
    return "?" if dtype is None else np.dtype(dtype).name


def dim_str(d: Dim) -> str:
    return "?" if d is None else str(d)


class Type:
    """Base class of value types."""

    def is_tensor(self) -> bool:
        return False


@dataclass(frozen=True)
class TensorType(Type):
    dtype: np.dtype | None
    shape: Shape = None

    def __post_init__(self):
        if self.dtype is not None:
            object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))

    def is_tensor(self) -> bool:
        return True

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int | None:
        """Element count when the shape is static, else None."""
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    def nbytes(self) -> int | None:
        n = self.numel()
        if n is None or self.dtype is None:
            return None
        return n * self.dtype.itemsize

    @classmethod
    def of(cls, array: np.ndarray) -> "TensorType":
        return cls(array.dtype, tuple(int(d) for d in array.shape))

    def __str__(self) -> str:
        shape = "[...]" if self.shape is None else "[" + ",".join(dim_str(d) for d in self.shape) + "]"
        return f"{dtype_name(self.dtype)}{shape}"


@dataclass(frozen=True)
class SequenceType(Type):
    elem: Type | None

    def __str__(self) -> str:
        return f"seq<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True)
class OptionalType(Type):
    elem: Type | None

    def __str__(self) -> str:
        return f"opt<{self.elem if self.elem is not None else '?'}>"


UNKNOWN = TensorType(None, None)


def type_of_runtime_value(v) -> Type:
    """The IR type describing a runtime value (array, list of arrays, or None for an empty optional)."""
    if isinstance(v, np.ndarray):
        return TensorType.of(v)
    if isinstance(v, list):
        return SequenceType(TensorType.of(v[0]) if v else None)
    if v is None:
        return OptionalType(None)
    return TensorType.of(np.asarray(v))


def dims_compatible(expected: Dim, given: int) -> bool:
    """Whether a concrete size matches a declared dimension (symbolic and unknown dims match anything)."""
    return not isinstance(expected, int) or expected == given
