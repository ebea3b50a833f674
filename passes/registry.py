"""Pass registration and plugin discovery.

Built-in passes register themselves with the :func:`register_pass` decorator when their module is
imported. Third-party passes are found through the entry-point group ``graphc.passes``::

    # pyproject.toml of a plugin
    [project.entry-points."graphc.passes"]
    myplugin = "myplugin.passes:MyPass"

The entry-point *name* is the name used in pipelines (``passes=["+myplugin"]``); its object is a
:class:`~graphc.passes.Pass` subclass, a Pass instance, or a factory returning a Pass. Entry points are
listed cheaply and only imported when the pass is requested, so one broken plugin cannot break compiles that
do not use it; when it is requested, the failure is a :class:`~graphc.errors.PassError` naming the plugin and
its distribution. A plugin never shadows a built-in of the same name (a warning says it was ignored).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import PassError
from .base import Pass

ENTRY_POINT_GROUP = "graphc.passes"

#: name -> class or factory of the passes registered in-process (the built-ins and register_pass users)
_REGISTRY: dict[str, Callable[..., Pass]] = {}


@dataclass
class _Plugin:
    name: str
    value: str  # "module:attr"
    distribution: str
    entry_point: Any
    loaded: Callable[..., Pass] | None = None

    def describe(self) -> str:
        return f"plugin {self.name!r} ({self.value}, from distribution {self.distribution!r})"


_PLUGINS: dict[str, _Plugin] | None = None  # None: not scanned yet


def register_pass(obj: Any = None, *, name: str | None = None, replace: bool = False):
    """Register a Pass subclass (or a factory returning a Pass) under ``name`` (default: ``cls.name``).

    Usable bare (``@register_pass``) or with arguments (``@register_pass(name="cse")``).
    """

    def decorate(target: Any) -> Any:
        key = name or getattr(target, "name", "") or ""
        if not key:
            raise ValueError(f"{target!r} has no pass name: set the class attribute `name` or pass name=")
        if isinstance(target, type) and not issubclass(target, Pass):
            raise TypeError(f"{target.__name__} is not a subclass of graphc.passes.Pass")
        if not callable(target):
            raise TypeError(f"{target!r} is neither a Pass subclass nor a factory")
        if key in _REGISTRY and _REGISTRY[key] is not target and not replace:
            raise ValueError(f"pass {key!r} registered twice ({_REGISTRY[key]!r} and {target!r})")
        _REGISTRY[key] = target
        return target

    return decorate(obj) if obj is not None else decorate


def unregister_pass(name: str) -> None:
    """Remove an in-process registration (for tests and interactive use)."""
    _REGISTRY.pop(name, None)


def discover_plugins(refresh: bool = False) -> dict[str, str]:
    """Scan the entry-point group ``graphc.passes`` (without importing anything).

    Returns ``{pass name: "module:attr (distribution)"}``. ``refresh=True`` rescans, e.g. after
    installing a plugin into the running interpreter.
    """
    global _PLUGINS
    if _PLUGINS is None or refresh:
        importlib.invalidate_caches()
        found: dict[str, _Plugin] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            if ep.name in found:
                warnings.warn(f"graphc pass plugin {ep.name!r} is provided twice ({found[ep.name].value} from "
                              f"{found[ep.name].distribution!r} and {ep.value} from {dist!r}); using the first",
                              stacklevel=2)
                continue
            if _PLUGINS and ep.name in _PLUGINS and _PLUGINS[ep.name].value == ep.value:
                found[ep.name] = _PLUGINS[ep.name]  # keep what was already loaded
            else:
                found[ep.name] = _Plugin(ep.name, ep.value, dist, ep)
        _PLUGINS = found
        for shadowed in sorted(set(found) & set(_REGISTRY)):
            warnings.warn(f"graphc pass {found[shadowed].describe()} is ignored: a built-in or registered pass "
                          "has that name", stacklevel=2)
    return {n: f"{p.value} ({p.distribution})" for n, p in _PLUGINS.items()}


def available_passes(refresh: bool = False) -> list[str]:
    """Names of every pass that can go in a pipeline: built-ins, registered passes and plugins."""
    discover_plugins(refresh)
    return sorted(set(_REGISTRY) | set(_PLUGINS or {}))


def get_pass(name: str, **kwargs: Any) -> Pass:
    """A fresh instance of the pass called ``name`` (kwargs go to its class or factory).

    Raises PassError for an unknown name (listing those available) or a plugin that fails to load.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        plugin = _find_plugin(name)
        if plugin is None:
            raise PassError(f"unknown pass {name!r}; available passes: {', '.join(available_passes()) or 'none'}")
        factory = _load_plugin(plugin)
        where = plugin.describe()
    else:
        where = f"pass {name!r}"
    return instantiate(factory, name, where, **kwargs)


def instantiate(factory: Any, name: str, where: str, **kwargs: Any) -> Pass:
    """Turn a Pass subclass, instance or factory into a Pass instance, with errors naming ``where``."""
    if isinstance(factory, Pass):
        if kwargs:
            raise PassError(f"{where} is a ready-made Pass instance and takes no options (got {sorted(kwargs)})")
        instance = factory
    else:
        try:
            instance = factory(**kwargs)
        except Exception as exc:
            raise PassError(f"{where} could not be created: {type(exc).__name__}: {exc}") from exc
    if not isinstance(instance, Pass):
        raise PassError(f"{where} produced {instance!r}, which is not a graphc.passes.Pass")
    if not instance.name:
        instance.name = name  # type: ignore[misc]  (an instance attribute shadows the ClassVar)
    return instance


def _find_plugin(name: str) -> _Plugin | None:
    discover_plugins()
    if name not in _PLUGINS:  # maybe installed since the last scan
        discover_plugins(refresh=True)
    return _PLUGINS.get(name)


def _load_plugin(plugin: _Plugin) -> Callable[..., Pass]:
    if plugin.loaded is not None:
        return plugin.loaded
    try:
        obj = plugin.entry_point.load()
    except Exception as exc:
        raise PassError(f"graphc pass {plugin.describe()} failed to load: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(obj, Pass) or (isinstance(obj, type) and issubclass(obj, Pass))
            or (callable(obj) and not isinstance(obj, type))):
        raise PassError(f"graphc pass {plugin.describe()} points to {obj!r}, which is neither a "
                        "graphc.passes.Pass subclass, a Pass instance, nor a factory returning one")
    plugin.loaded = obj
    return obj


def shadowed_plugins() -> list[str]:
    """Plugins ignored because a built-in or registered pass has the same name."""
    discover_plugins()
    return sorted(set(_PLUGINS) & set(_REGISTRY))


def registered_pass_options() -> dict[str, Any]:
    """Every option that the passes registered in this process declare (``Pass.options``), with its default."""
    out: dict[str, Any] = {}
    for factory in _REGISTRY.values():
        out.update(getattr(factory, "options", {}) or {})
    return out
