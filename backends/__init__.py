"""Backends: turn a :class:`graphc.plan.Plan` into an executable, behind one small interface.

A backend module exposes ``compile(plan) -> Executable``; an Executable has ``run(inputs: list) -> list``
(arrays in graph-input order in, arrays in graph-output order out) and may be called from several threads.
``available_targets()`` lists the targets this installation can compile for.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import DeviceError

_TARGET_MODULES = {"reference": "graphc.backends.reference", "llvm": "graphc.backends.llvm",
                   "cuda": "graphc.backends.cuda"}
KNOWN_TARGETS = tuple(_TARGET_MODULES)


def get_backend(target: str):
    """The backend module for ``target``; DeviceError when it is unknown or not built in this version."""
    if target not in _TARGET_MODULES:
        raise DeviceError(f"unknown target {target!r}; choose one of {', '.join(KNOWN_TARGETS)}")
    try:
        return import_module(_TARGET_MODULES[target])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(_TARGET_MODULES[target]):
            raise DeviceError(f"target {target!r} is not available in this graphc build; "
                              f"available: {', '.join(available_targets())}") from None
        raise


def available_targets() -> list[str]:
    out = []
    for target, module in _TARGET_MODULES.items():
        try:
            import_module(module)
            out.append(target)
        except ModuleNotFoundError:
            continue
    return out
