"""The public Python surface: :func:`compile` and :func:`load`."""

from __future__ import annotations

import os
from typing import Any

from .compiled import CompiledModel
from .errors import OptionError
from .options import CompileOptions


def compile(model: Any, *, target: str | None = None, devices: Any = None, precision: str = "fp32",
            cache: Any = None, **options: Any) -> CompiledModel:
    """Compile a model for a target.

    ``model`` is a path to an .onnx file, an ``onnx.ModelProto``, ONNX bytes, ``"zoo:NAME"`` (a light model
    bundled with the onnx package, see :mod:`graphc.zoo`), or a ``torch.nn.Module`` with ``example_inputs=``.
    ``target`` is ``"llvm"``, ``"cuda"`` or ``"reference"``; None picks the best one this build has.
    ``cache``: True, False or a directory (see :mod:`graphc.cache`); None uses ``$GRAPHC_CACHE_DIR`` when set.
    With several ``devices``, ``partition_calibration="measure"`` first times the model's kernels on one of
    them (:mod:`graphc.calibration`) so that the partitioner balances measured, not nominal, kernel times.
    """
    from .cache import compile_cached

    if options.get("partition_calibration") == "measure" and devices is not None:
        from .calibration import measure_calibration

        # the kernels are timed as llvm code on this host's cores (whatever the target: a reference plan of
        # CPU devices is balanced on what the compiled kernels would take; CUDA devices are left nominal)
        options["partition_calibration"] = measure_calibration(model, devices, precision=precision, **options)
    opts = CompileOptions.build(target=target, devices=devices, precision=precision, **options)
    return compile_cached(model, opts, cache)


def load(path: str | os.PathLike) -> CompiledModel:
    """Load an artifact written by :meth:`CompiledModel.save` or ``graphc compile -o``."""
    from .artifact import load_artifact

    if not isinstance(path, (str, os.PathLike)):
        raise OptionError(f"graphc.load takes a path, got {type(path).__name__}")
    return load_artifact(path)
