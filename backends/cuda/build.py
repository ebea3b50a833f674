"""Building the generated CUDA C: nvcc when present, NVRTC (cuda-python) otherwise; cached by content.

- nvcc: one call makes a fatbinary holding a cubin per architecture (``sm_80`` and ``sm_90`` by default;
  ``GRAPHC_CUDA_ARCHS="80,90"``) and the PTX of the newest one, which the driver JIT-compiles for newer GPUs;
- NVRTC (``cuda.bindings.nvrtc``, from ``pip install graphc[cuda]``): a cubin per architecture and the PTX.

The result (:class:`Build`) keeps the source, the compiler's command line and log, and the binaries; the
artifact stores all of them. A failing build raises :class:`~graphc.errors.DeviceError` with the compiler's
message. Builds are cached under ``$GRAPHC_CACHE_DIR/cuda`` (default ``~/.cache/graphc/cuda``) by the hash
of the source, the architectures and the compiler's version, so recompiling a model costs no nvcc run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

from ...errors import DeviceError

DEFAULT_ARCHS = (80, 90)
NVCC_FLAGS = ["-std=c++17", "-O3", "-lineinfo"]


@dataclass
class Build:
    compiler: str  # "nvcc" or "nvrtc"
    archs: list[int]
    binaries: dict[str, bytes]  # "kernels.fatbin" | "sm_80.cubin" ... | "kernels.ptx"
    log: str
    command: str
    cached: bool = False
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def image_for(self, major: int, minor: int) -> bytes:
        """The binary to load on a device of compute capability major.minor."""
        if "kernels.fatbin" in self.binaries:
            return self.binaries["kernels.fatbin"]
        exact = self.binaries.get(f"sm_{major}{minor}.cubin")
        if exact is not None:
            return exact
        if "kernels.ptx" in self.binaries:
            return self.binaries["kernels.ptx"]
        raise DeviceError(f"no binary for compute capability {major}.{minor} (built for sm_"
                          f"{', sm_'.join(map(str, self.archs))}): recompile with GRAPHC_CUDA_ARCHS={major}{minor}")


def archs_from_env() -> list[int]:
    text = os.environ.get("GRAPHC_CUDA_ARCHS", "")
    if not text.strip():
        return list(DEFAULT_ARCHS)
    try:
        return sorted({int(a.strip().replace("sm_", "")) for a in text.split(",") if a.strip()})
    except ValueError:
        raise DeviceError(f"GRAPHC_CUDA_ARCHS={text!r}: expected numbers such as 80,90") from None


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return None


def nvrtc_module():
    try:
        from cuda.bindings import nvrtc  # cuda-python >= 12.6
        return nvrtc
    except ImportError:
        try:
            from cuda import nvrtc  # older cuda-python
            return nvrtc
        except ImportError:
            return None


def available() -> str | None:
    """Which compiler a build would use (None when neither nvcc nor NVRTC is there)."""
    if find_nvcc():
        return "nvcc"
    return "nvrtc" if nvrtc_module() is not None else None


def _cache_dir() -> str:
    root = os.environ.get("GRAPHC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "graphc")
    return os.path.join(root, "cuda")


def build(source: str, archs: list[int] | None = None) -> Build:
    import time

    archs = sorted(archs or archs_from_env())
    which = available()
    if which is None:
        raise DeviceError("the cuda target needs nvcc (CUDA toolkit) or NVRTC (pip install graphc[cuda]) to build "
                          "its kernels; neither was found")
    version = _nvcc_version() if which == "nvcc" else "nvrtc"
    key = hashlib.sha256(json.dumps([source, archs, which, version, NVCC_FLAGS]).encode()).hexdigest()[:24]
    cached = _cache_load(key)
    if cached is not None:
        return cached
    start = time.perf_counter()
    result = _nvcc(source, archs) if which == "nvcc" else _nvrtc(source, archs)
    result.seconds = time.perf_counter() - start
    _cache_store(key, result)
    return result


def _nvcc_version() -> str:
    try:
        return subprocess.run([find_nvcc(), "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _nvcc(source: str, archs: list[int]) -> Build:
    nvcc = find_nvcc()
    with tempfile.TemporaryDirectory(prefix="graphc-cuda-") as tmp:
        src = os.path.join(tmp, "kernels.cu")
        out = os.path.join(tmp, "kernels.fatbin")
        with open(src, "w") as f:
            f.write(source)
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
        cmd = [nvcc, "-fatbin", *NVCC_FLAGS, *gencode, "--threads", "0", "-Xptxas", "-v", src, "-o", out]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"nvcc did not finish in 30 minutes: {' '.join(cmd)}") from None
        log = (proc.stdout + proc.stderr).replace(tmp + os.sep, "")
        if proc.returncode != 0:
            raise DeviceError(f"nvcc failed to build the generated CUDA code (exit {proc.returncode}):\n"
                              f"{_tail(log)}")
        with open(out, "rb") as f:
            binary = f.read()
    command = " ".join(os.path.basename(c) if c.startswith(tmp) else c for c in cmd)
    return Build("nvcc", archs, {"kernels.fatbin": binary}, log, command)


def _nvrtc(source: str, archs: list[int]) -> Build:
    nvrtc = nvrtc_module()
    binaries, logs = {}, []

    def check(result, what):
        err = result[0]
        if int(err) != 0:
            raise DeviceError(f"NVRTC {what} failed: {err}")
        return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)

    targets = [(f"sm_{a}", "cubin") for a in archs] + [(f"compute_{archs[-1]}", "ptx")]
    for arch, kind in targets:
        prog = check(nvrtc.nvrtcCreateProgram(source.encode(), b"kernels.cu", 0, [], []), "create")
        opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17", b"-lineinfo"]
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        size = check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        logs.append(f"== {arch}\n" + log.decode(errors="replace").rstrip("\x00 "))
        if int(err) != 0:
            raise DeviceError(f"NVRTC failed to build the generated CUDA code for {arch}:\n{_tail(logs[-1])}")
        if kind == "cubin":
            n = check(nvrtc.nvrtcGetCUBINSize(prog), "cubin size")
            data = b" " * n
            nvrtc.nvrtcGetCUBIN(prog, data)
            binaries[f"{arch}.cubin"] = data
        else:
            n = check(nvrtc.nvrtcGetPTXSize(prog), "ptx size")
            data = b" " * n
            nvrtc.nvrtcGetPTX(prog, data)
            binaries["kernels.ptx"] = data
        nvrtc.nvrtcDestroyProgram(prog)
    return Build("nvrtc", archs, binaries, "\n".join(logs), "nvrtc " + " ".join(a for a, _ in targets))


def _tail(log: str, limit: int = 6000) -> str:
    return log if len(log) <= limit else "...\n" + log[-limit:]


def _cache_load(key: str) -> Build | None:
    path = os.path.join(_cache_dir(), key)
    try:
        with open(os.path.join(path, "build.json")) as f:
            meta = json.load(f)
        binaries = {}
        for name in meta["binaries"]:
            with open(os.path.join(path, name), "rb") as f:
                binaries[name] = f.read()
        with open(os.path.join(path, "build.log")) as f:
            log = f.read()
    except (OSError, ValueError, KeyError):
        return None
    return Build(meta["compiler"], meta["archs"], binaries, log, meta["command"], cached=True,
                 seconds=meta.get("seconds", 0.0))


def _cache_store(key: str, result: Build) -> None:
    path = os.path.join(_cache_dir(), key)
    try:
        tmp = tempfile.mkdtemp(dir=os.path.dirname(path) if os.path.isdir(os.path.dirname(path)) else None)
    except OSError:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for name, data in result.binaries.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        with open(os.path.join(tmp, "build.log"), "w") as f:
            f.write(result.log)
        with open(os.path.join(tmp, "build.json"), "w") as f:
            json.dump({"compiler": result.compiler, "archs": result.archs, "binaries": sorted(result.binaries),
                       "command": result.command, "seconds": result.seconds}, f)
        os.replace(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
