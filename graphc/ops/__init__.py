"""The op registry and every op graphc knows. Importing this package registers all ops.

Each module below holds one family of ops; :mod:`graphc.ops.registry` explains what an op definition holds.
"""

from importlib import import_module

from .registry import (REGISTRY, REQUIRED, ByOpset, Cost, FusionClass, OpContext, OpDef, all_ops, broadcast_shapes,
                       elementwise, elementwise_infer, lookup, register)

_FAMILIES = [
    "elementwise", "quantize", "tensor", "indexing", "nn", "pooling", "normalization", "linalg", "reduce",
    "attention", "rnn", "control", "sequence", "signal", "losses", "misc", "ml", "fused",
    "transfer",
]
for _family in _FAMILIES:
    import_module(f"{__name__}.{_family}")

__all__ = [
    "REGISTRY", "REQUIRED", "ByOpset", "Cost", "FusionClass", "OpContext", "OpDef", "all_ops", "broadcast_shapes",
    "elementwise", "elementwise_infer", "lookup", "register",
]
