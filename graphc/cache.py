"""The compile cache: a compiled model is kept as a ``.gcx`` artifact under a key of everything that shaped it.

``graphc.compile(model, cache=...)`` looks the key up before importing anything: a hit loads the artifact
(no ONNX import, no passes), a miss compiles and stores the result. The cache is used when

* ``cache=True`` (directory: ``$GRAPHC_CACHE_DIR``, else the user cache directory, see :func:`default_dir`),
* ``cache="some/dir"`` (that directory), or
* ``cache=None`` (the default) and ``$GRAPHC_CACHE_DIR`` is set; ``cache=False`` never uses it.

The key is the SHA-256 of a JSON document holding: the canonical model bytes (the resolved ONNX proto
serialized deterministically, plus the bytes of every external-data tensor, so changed weights miss), the
compile options (``CompileOptions.to_json``), the target, the graphc version and a fingerprint of graphc's own
code (so an edited checkout never serves stale plans), the code of every plugin pass in the pipeline, the
host (machine, byte order, CPU features) and the versions of onnx, numpy and Python, and
:data:`CACHE_FORMAT`. A torch module is keyed by its exported ONNX bytes.

Entries are written to a private temporary file in the cache directory and published with ``os.replace``, so
a reader sees either no entry or a whole one, whatever other processes do at the same time (two processes
missing at once both compile; the last one to finish publishes). Nothing here may fail a compile: an entry
that does not load (truncated, corrupted, from another graphc) is a miss -- removed, recompiled, with a
:class:`CacheWarning`; a directory that cannot be written gives a warning and an uncached result.
``$GRAPHC_CACHE_MAX_BYTES`` caps the directory (least recently used entries go first; a hit counts as a use).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import re
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import GraphcError, OptionError

#: bump when what an entry means changes without the graphc version changing
CACHE_FORMAT = 1
ENV_DIR = "GRAPHC_CACHE_DIR"
ENV_MAX_BYTES = "GRAPHC_CACHE_MAX_BYTES"
SUFFIX = ".gcx"
_TMP_MARK = ".tmp"
# only names the cache itself writes are ever listed, evicted or cleared (--dir may point anywhere)
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.gcx")
_TMP_NAME = re.compile(r"\.[0-9a-f]{64}\.[0-9]+-[0-9a-f]{12}\.tmp(\.tmp[0-9]+)?")
_STALE_TMP_SECONDS = 3600  # a temporary file this old belongs to a writer that died
_CHUNK = 1 << 22


class CacheWarning(UserWarning):
    """The compile cache could not be used as asked (the compile itself went on and succeeded)."""


def _warn(message: str) -> None:
    warnings.warn(f"graphc cache: {message}", CacheWarning, stacklevel=5)  # the caller of graphc.compile


# -- where ------------------------------------------------------------------------------------------------------
def default_dir() -> str:
    """The per-user cache directory: ``$XDG_CACHE_HOME/graphc`` or ``~/.cache/graphc`` (the platform's own
    on macOS and Windows)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
        return os.path.join(base, "graphc", "Cache")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/graphc")
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not base or not os.path.isabs(base):  # the XDG spec says to ignore relative paths
        base = os.path.expanduser("~/.cache")
    return os.path.join(base, "graphc")


def configured_dir() -> str:
    """``$GRAPHC_CACHE_DIR`` when set, else :func:`default_dir`."""
    env = os.environ.get(ENV_DIR, "").strip()
    return os.path.abspath(os.path.expanduser(env)) if env else default_dir()


def resolve_dir(cache: Any) -> str | None:
    """The directory ``compile(cache=...)`` means, or None for no cache (see the module docstring)."""
    if cache is None:
        return configured_dir() if os.environ.get(ENV_DIR, "").strip() else None
    if isinstance(cache, bool):
        return configured_dir() if cache else None
    if isinstance(cache, (str, os.PathLike)):
        path = os.fspath(cache)
        if not path:
            raise OptionError("cache='' names no directory; give a directory, True or False")
        return os.path.abspath(os.path.expanduser(path))
    raise OptionError(f"cache must be True, False, None or a directory path, got {type(cache).__name__}")


def max_bytes() -> int | None:
    """``$GRAPHC_CACHE_MAX_BYTES`` (a byte count, suffixes K, M, G, T allowed), None when unset."""
    text = os.environ.get(ENV_MAX_BYTES, "").strip()
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?", text.upper())
    if match is None:
        raise OptionError(f"{ENV_MAX_BYTES}={text!r} is not a size; give bytes, e.g. 2000000000 or 2G")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " "))


# -- the key ----------------------------------------------------------------------------------------------------
class Uncacheable(Exception):
    """This compile cannot be keyed safely (the reason is the message); it runs uncached."""


def _tensors(model) -> Iterator[Any]:
    """Every TensorProto of a model, in a fixed order: graphs and subgraphs, attributes, functions."""
    import onnx

    graphs = [model.graph]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            g = graphs.pop(0)
            yield from g.initializer
            for sparse in g.sparse_initializer:
                yield sparse.values
                yield sparse.indices
            nodes.extend(g.node)
            continue
        node = nodes.pop(0)
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []:
                yield sparse.values
                yield sparse.indices
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            if attr.type == onnx.AttributeProto.GRAPH:
                graphs.append(attr.g)
            graphs.extend(attr.graphs)


def model_digest(proto, base_dir: str | None) -> str:
    """SHA-256 of the model as graphc will see it: its deterministic serialization, then the bytes of each
    external-data tensor (read, like the importer does, only inside the model's directory)."""
    import onnx

    from .frontend.external_data import resolve_location

    digest = hashlib.sha256()
    try:
        digest.update(proto.SerializeToString(deterministic=True))
    except ValueError:  # protobuf refuses messages over 2 GB
        raise Uncacheable("the model proto is over 2 GB in memory (keep its weights as external data to "
                          "cache it)") from None
    for tensor in _tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        fields = {e.key: e.value for e in tensor.external_data}
        path = resolve_location(base_dir, fields.get("location", ""), tensor.name)
        try:
            offset = int(fields.get("offset") or 0)
            length = int(fields["length"]) if fields.get("length") else None
        except ValueError:
            raise Uncacheable(f"tensor {tensor.name!r} has a malformed external data offset/length") from None
        digest.update(f"\0external:{tensor.name}:{offset}:{length}\0".encode())
        with open(path, "rb") as f:
            f.seek(max(offset, 0))
            left = length if length is not None else -1
            while left != 0:
                chunk = f.read(_CHUNK if left < 0 else min(_CHUNK, left))
                if not chunk:
                    break
                digest.update(chunk)
                left = left - len(chunk) if left > 0 else left
    return digest.hexdigest()


_CODE_FINGERPRINT: str | None = None
_CODE_LOCK = threading.Lock()


def code_fingerprint() -> str:
    """A digest of (path, size, mtime) of graphc's own Python files (graphc, graphc.passes, graphc.backends).

    The version string alone would let an edited checkout (or a reinstalled build) serve plans made by other
    code; the stat of ~100 files costs well under a millisecond and is computed once per process.
    """
    global _CODE_FINGERPRINT
    with _CODE_LOCK:
        if _CODE_FINGERPRINT is None:
            import graphc
            import graphc.backends
            import graphc.passes

            roots = [os.path.dirname(os.path.abspath(graphc.__file__)), *graphc.passes.__path__,
                     *graphc.backends.__path__]
            digest = hashlib.sha256()
            for root in sorted(set(map(os.path.abspath, roots))):
                for folder, dirs, files in os.walk(root):
                    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                    for name in sorted(files):
                        if name.endswith((".py", ".so", ".pyd")):
                            path = os.path.join(folder, name)
                            st = os.stat(path)
                            digest.update(f"{os.path.relpath(path, root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            _CODE_FINGERPRINT = digest.hexdigest()
        return _CODE_FINGERPRINT


def _code_of(obj: Any) -> list[Any]:
    """Where a pass's code lives, as (module, file, size, mtime); Uncacheable when it cannot be told."""
    target = obj if (inspect.isclass(obj) or inspect.isfunction(obj)) else type(obj)
    module = getattr(target, "__module__", "") or ""
    try:
        path = inspect.getsourcefile(target)
        st = os.stat(path) if path else None
    except (TypeError, OSError):
        st = path = None
    if st is None:
        raise Uncacheable(f"the code of pass {getattr(target, '__qualname__', target)!r} (module {module!r}) "
                          "has no source file to fingerprint")
    return [module, getattr(target, "__qualname__", ""), os.path.abspath(path), st.st_size, st.st_mtime_ns]


def pipeline_fingerprint(opts) -> list[Any]:
    """The passes that will run, each with its code's fingerprint when it is not part of graphc itself."""
    import importlib.metadata

    from .passes import registry
    from .passes.pipeline import resolve_pipeline

    pipeline = resolve_pipeline(opts.target, {**opts.to_json(), "passes": opts.passes or None})
    out: list[Any] = []
    for name in pipeline:
        factory = registry._REGISTRY.get(name)
        dist = None
        if factory is None:
            plugin = registry._find_plugin(name)
            if plugin is None:
                raise Uncacheable(f"unknown pass {name!r}")  # the compile itself will say so properly
            factory = registry._load_plugin(plugin)
            try:
                dist = [plugin.distribution, importlib.metadata.version(plugin.distribution)]
            except (importlib.metadata.PackageNotFoundError, ValueError):
                dist = [plugin.distribution, None]
        module = getattr(factory if inspect.isclass(factory) or inspect.isfunction(factory) else type(factory),
                         "__module__", "")
        if module.startswith("graphc.") and dist is None:
            out.append(name)  # graphc's own code: covered by code_fingerprint()
        else:
            out.append([name, dist, _code_of(factory)])
    return out


def key_document(proto, base_dir: str | None, opts) -> dict[str, Any]:
    """Everything the cache key covers (its SHA-256, over sorted compact JSON, is the key)."""
    import numpy
    import onnx

    from . import __version__
    from .artifact import cpu_features

    return {
        "cache_format": CACHE_FORMAT,
        "graphc": __version__,
        "code": code_fingerprint(),
        "model": model_digest(proto, base_dir),
        "target": opts.target,
        "options": opts.to_json(),
        "pipeline": pipeline_fingerprint(opts),
        "host": {"machine": platform.machine(), "system": platform.system(), "byteorder": sys.byteorder,
                 "cpu_features": cpu_features()},
        "versions": {"python": platform.python_version(), "onnx": onnx.__version__, "numpy": numpy.__version__},
    }


def _plain(x: Any) -> Any:
    """numpy scalars and arrays as their Python values (an option may be given as one); nothing else."""
    import numpy

    if isinstance(x, (numpy.generic, numpy.ndarray)):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON")


def key_of(document: dict[str, Any]) -> str:
    try:
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_plain)
    except (TypeError, ValueError) as exc:
        # an option value with no stable JSON form (its str() may hold an address): never guess a key for it
        raise Uncacheable(f"an option has no stable JSON form ({exc})") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the store --------------------------------------------------------------------------------------------------
@dataclass
class Entry:
    key: str
    path: str
    size: int
    last_used: float  # mtime: set when written, refreshed on every hit


def _same_file(a: os.stat_result | None, b: os.stat_result | None) -> bool:
    return a is not None and b is not None and (a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_ino, b.st_size,
                                                                                       b.st_mtime_ns)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


class _WithoutSource:
    """A compiled model as :func:`~graphc.artifact.save_artifact` sees it, minus its source model: an entry
    needs no ``model.onnx`` (a hit keeps the proto the caller gave), and serializing and hashing it took most
    of a miss's store time (resnet50 with random weights: 1.1 s with it, 0.17 s without)."""

    source_model = None

    def __init__(self, compiled):
        self._compiled = compiled

    def __getattr__(self, name: str):
        return getattr(self._compiled, name)


class CompileCache:
    """One cache directory: ``<key>.gcx`` entries and, while being written, ``.<key>.<writer>.tmp`` files."""

    def __init__(self, directory: str):
        self.directory = directory

    def path_for(self, key: str) -> str:
        return os.path.join(self.directory, key + SUFFIX)

    # lookup
    def load(self, key: str):
        """The CompiledModel stored under ``key``, or None (absent, or broken: then removed, with a warning)."""
        from .artifact import load_artifact

        path = self.path_for(key)
        for _attempt in range(3):
            before = _stat(path)
            if before is None:
                return None
            try:
                compiled = load_artifact(path)
            except Exception as exc:  # noqa: BLE001 - a cache entry must never fail a compile
                after = _stat(path)
                if after is None or not _same_file(before, after):
                    continue  # replaced or removed by another process while we read it: look again
                _warn(f"entry {path} cannot be used ({type(exc).__name__}: {exc}); removing it and recompiling")
                self._remove(path)
                return None
            try:
                os.utime(path)  # least-recently-used order for eviction
            except OSError:
                pass
            return compiled
        return None

    # store
    def store(self, key: str, compiled) -> str | None:
        """Write ``compiled`` under ``key`` (atomically); the entry's path, or None with a warning."""
        from .artifact import save_artifact
        from .errors import ArtifactError

        path = self.path_for(key)
        tmp = os.path.join(self.directory, f".{key}.{os.getpid()}-{uuid.uuid4().hex[:12]}{_TMP_MARK}")
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            save_artifact(_WithoutSource(compiled), tmp)
            os.replace(tmp, path)
            for stale in self.temporaries(older_than=_STALE_TMP_SECONDS):  # left by writers that died
                self._remove(stale)
        except (OSError, ArtifactError) as exc:
            self._remove(tmp)
            if isinstance(exc, OSError) and os.path.isfile(path):
                return path  # e.g. Windows refusing to replace a file another process reads: that one is whole
            if os.path.exists(self.directory) and not os.path.isdir(self.directory):
                reason = "it is a file, not a directory"
            elif isinstance(exc, OSError) and exc.strerror:
                reason = f"{exc.strerror}: {exc.filename}"
            else:
                reason = str(exc)
            _warn(f"cannot store the compiled model in {self.directory} ({reason}); the compile went on "
                  "uncached")
            return None
        return path

    # housekeeping
    def entries(self) -> list[Entry]:
        out = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        for name in names:
            if _ENTRY_NAME.fullmatch(name):
                st = _stat(os.path.join(self.directory, name))
                if st is not None:
                    out.append(Entry(name[:-len(SUFFIX)], os.path.join(self.directory, name), st.st_size,
                                     st.st_mtime))
        return sorted(out, key=lambda e: e.last_used)

    def temporaries(self, older_than: float | None = None) -> list[str]:
        """Temporary files of writers (``older_than`` seconds: only those whose writer must have died)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        now = time.time()
        out = []
        for name in names:
            if _TMP_NAME.fullmatch(name):
                path = os.path.join(self.directory, name)
                st = _stat(path)
                if st is not None and (older_than is None or now - st.st_mtime > older_than):
                    out.append(path)
        return out

    def evict(self, limit: int, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the entries total at most ``limit`` bytes (``keep``, the
        entry just written, stays even when it alone is larger)."""
        removed = [p for p in self.temporaries(older_than=_STALE_TMP_SECONDS) if self._remove(p)]
        entries = self.entries()
        total = sum(e.size for e in entries)
        for entry in entries:
            if total <= limit:
                break
            if entry.path == keep:
                continue
            if self._remove(entry.path):
                removed.append(entry.path)
            total -= entry.size
        return removed

    def clear(self) -> tuple[int, int]:
        """Remove every entry, and temporary files whose writer died; (entries removed, bytes freed)."""
        count = freed = 0
        for entry in self.entries():
            if self._remove(entry.path):
                count += 1
                freed += entry.size
        for path in self.temporaries(older_than=_STALE_TMP_SECONDS):
            self._remove(path)
        return count, freed

    def info(self) -> dict[str, Any]:
        entries = self.entries()
        return {"dir": self.directory, "exists": os.path.isdir(self.directory), "entries": len(entries),
                "bytes": sum(e.size for e in entries), "max_bytes": max_bytes(),
                "temporary_files": len(self.temporaries())}

    @staticmethod
    def _remove(path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except OSError:
            return False


# -- compile through the cache ----------------------------------------------------------------------------------
def compile_cached(model: Any, opts, cache: Any):
    """``graphc.compile``'s body: through the cache when ``cache`` (see :func:`resolve_dir`) asks for one."""
    from .pipeline import compile_model, compile_proto
    from .sources import resolve_model

    directory = resolve_dir(cache)
    if directory is None:
        return compile_model(model, opts)
    limit = max_bytes()  # a malformed setting is the user's error: say so before any work
    start = time.perf_counter()
    proto, base_dir, source = resolve_model(model, opts.example_inputs)
    try:
        key = key_of(key_document(proto, base_dir, opts))
    except (Uncacheable, GraphcError, OSError) as exc:
        # the compile says what is wrong with the model (or compiles it, uncached)
        compiled = compile_proto(proto, base_dir, source, opts, start)
        compiled.cache_info = {"hit": False, "key": None, "path": None, "dir": directory,
                               "skipped": str(exc) if isinstance(exc, Uncacheable) else f"not keyed: {exc}"}
        return compiled
    store = CompileCache(directory)
    lookup = time.perf_counter()
    compiled = store.load(key)
    if compiled is not None:
        original = compiled.compile_seconds
        # the hit stands for this compile: same source, same proto kept for save(), this call's time
        compiled.source = source
        compiled.options = opts
        compiled._source_model = proto
        compiled.compile_seconds = time.perf_counter() - start
        compiled.cache_info = {"hit": True, "key": key, "path": store.path_for(key), "dir": directory,
                               "load_seconds": round(time.perf_counter() - lookup, 4),
                               "original_compile_seconds": round(original, 4)}
        return compiled
    compiled = compile_proto(proto, base_dir, source, opts, start)
    saving = time.perf_counter()
    path = store.store(key, compiled)
    compiled.cache_info = {"hit": False, "key": key, "path": path, "dir": directory,
                           "store_seconds": round(time.perf_counter() - saving, 4)}
    if path is not None and limit is not None:
        store.evict(limit, keep=path)
    return compiled


# -- command line: graphc cache info|list|clear ------------------------------------------------------------------
def add_cli_command(sub, common) -> None:
    p = sub.add_parser("cache", parents=[common], help="show or clear the compile cache",
                       description="The compile cache keeps compiled models under a key of the model bytes, "
                                   f"options, graphc version and CPU. Directory: --dir, else ${ENV_DIR}, else "
                                   f"{default_dir()}.")
    p.add_argument("action", choices=("info", "list", "clear"),
                   help="info: directory, entries, size; list: one line per entry; clear: remove every entry")
    p.add_argument("--dir", metavar="DIR", default=None, help=f"cache directory (default: ${ENV_DIR} or "
                                                               f"{default_dir()})")
    p.add_argument("--json", action="store_true", help="print info/list as JSON")
    p.set_defaults(func=cmd_cache)


def _manifest_summary(path: str) -> dict[str, Any]:
    import zipfile

    from .artifact import read_manifest

    try:
        with zipfile.ZipFile(path) as zf:
            manifest = read_manifest(zf, path)
        return {"source": manifest.get("source"), "target": manifest.get("target"),
                "created": manifest.get("created")}
    except Exception:  # noqa: BLE001 - listing must show broken entries too
        return {"source": None, "target": None, "created": None, "broken": True}


def cmd_cache(args) -> int:
    from .cli import human_bytes

    directory = os.path.abspath(os.path.expanduser(args.dir)) if args.dir else configured_dir()
    store = CompileCache(directory)
    if args.action == "clear":
        count, freed = store.clear()
        print(f"removed {count} entr{'y' if count == 1 else 'ies'} ({human_bytes(freed)}) from {directory}")
        return 0
    if args.action == "info":
        info = store.info()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            cap = "none" if info["max_bytes"] is None else human_bytes(info["max_bytes"])
            print(f"directory  {directory}{'' if info['exists'] else ' (not created yet)'}\n"
                  f"entries    {info['entries']}\nsize       {human_bytes(info['bytes'])}\n"
                  f"max size   {cap} (${ENV_MAX_BYTES})")
        return 0
    rows = []
    for entry in reversed(store.entries()):  # most recently used first
        rows.append({"key": entry.key, "bytes": entry.size,
                     "last_used": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.last_used)),
                     **_manifest_summary(entry.path)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        what = "(unreadable entry)" if row.get("broken") else f"{row['source']} [{row['target']}]"
        print(f"{row['key'][:16]}  {human_bytes(row['bytes']):>10}  {row['last_used']}  {what}")
    if not rows:
        print(f"no entries in {directory}")
    return 0
