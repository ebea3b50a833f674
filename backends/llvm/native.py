"""Machine code as a shared library: linked at save time by the system toolchain, loaded with ctypes, no LLVM.

An artifact's ``llvm/specN.o`` is position-independent relocatable code (jit.py makes every target machine with
``reloc="pic"``). When a C compiler driver (``cc``) is on the PATH at save time, :func:`link_shared` links it
into a shared object (``llvm/specN.so``), and the worker-thread runtime (workers.py, also LLVM-made) into
``llvm/workers.so``. Their undefined symbols are the C library's (``syscall``, ``usleep``, ``memcpy``...),
which the dynamic linker binds when the library is loaded; the fallback callback, the slot table and the sync
block are arguments of every call, so nothing else has to be bound.

:func:`load_shared` maps such a library into this process without importing llvmlite (importing it alone costs
41 MB of resident memory). Security: a shared library runs code the moment it is loaded (constructors), so the
bytes are first copied into this process, hashed and compared with the SHA-256 the artifact's (checked)
index names, written to a sealed memfd that nobody can change any more, and only then ``dlopen``\\ ed from it;
where memfd is missing, a file in a fresh private (0700) directory, removed once loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

LINK_TIMEOUT_S = 120
_OPEN_CODE_FDS: list[int] = []  # memfds of loaded libraries (see load_shared)


def linker() -> str | None:
    """The C compiler driver that links shared libraries here, or None."""
    return shutil.which("cc")


def link_shared(objects: list[bytes]) -> bytes | None:
    """A shared library made of the relocatable ``objects``, or None when there is no toolchain or it fails
    (the artifact then keeps only the object code and a load uses LLVM, as without this)."""
    cc = linker()
    if cc is None:
        return None
    with tempfile.TemporaryDirectory(prefix="graphc-link-") as tmp:
        paths = []
        for i, data in enumerate(objects):
            paths.append(os.path.join(tmp, f"part{i}.o"))
            with open(paths[-1], "wb") as f:
                f.write(data)
        out = os.path.join(tmp, "lib.so")
        # LLVM's objects carry no .note.GNU-stack: say that the stack is not executable, or glibc refuses the
        # library (or makes every thread's stack executable) when it is loaded
        cmd = [cc, "-shared", "-Wl,-z,noexecstack", "-o", out, *paths]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=LINK_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        if done.returncode or not os.path.isfile(out):
            return None
        with open(out, "rb") as f:
            return f.read()


class NativeCode:
    """A loaded shared library standing in for jit.JitModule (``address``, ``global_address``,
    ``object_code``); it stays loaded for the life of the process (libraries are never unloaded: code of a
    running model must not vanish)."""

    def __init__(self, library: ctypes.CDLL, object_code: bytes | None = None, shared: bytes | None = None):
        self.library = library
        self.object_code = object_code
        self.shared = shared  # the library's bytes, for saving the model again without linking

    def address(self, name: str) -> int:
        from ...errors import ExecutionError

        try:
            return ctypes.cast(getattr(self.library, name), ctypes.c_void_p).value
        except AttributeError:
            raise ExecutionError(f"llvm backend: function {name!r} is missing from the shared library") from None

    def global_address(self, name: str) -> int:
        from ...errors import ExecutionError

        try:
            return ctypes.addressof(ctypes.c_char.in_dll(self.library, name))
        except ValueError:
            raise ExecutionError(f"llvm backend: global {name!r} is missing from the shared library") from None


def load_shared(data, sha256: str) -> ctypes.CDLL:
    """``dlopen`` the library ``data`` (bytes or a uint8 array) after checking that its bytes -- the copy that
    is loaded -- have the SHA-256 ``sha256``. ValueError when they do not; OSError when it cannot be loaded."""
    data = bytes(data)  # our own copy: what is hashed is exactly what is loaded
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError("the shared library does not match its SHA-256")
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        import fcntl

        fd = memfd("graphc-code", os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 2))
        try:
            _write_all(fd, data)
            seals = getattr(fcntl, "F_SEAL_WRITE", 8) | getattr(fcntl, "F_SEAL_GROW", 4) | \
                getattr(fcntl, "F_SEAL_SHRINK", 2) | getattr(fcntl, "F_SEAL_SEAL", 1)
            fcntl.fcntl(fd, getattr(fcntl, "F_ADD_SEALS", 1033), seals)
            library = ctypes.CDLL(f"/proc/self/fd/{fd}", mode=os.RTLD_LOCAL | os.RTLD_NOW)
        except BaseException:
            os.close(fd)
            raise
        # The descriptor stays open, as the library stays loaded: the dynamic loader knows a library by its path,
        # and a later library given a reused descriptor number would be taken for this one.
        _OPEN_CODE_FDS.append(fd)
        return library
    with tempfile.TemporaryDirectory(prefix="graphc-code-") as tmp:  # mkdtemp: 0700, ours alone
        path = os.path.join(tmp, "code.so")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o500)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        return ctypes.CDLL(path, mode=os.RTLD_LOCAL | os.RTLD_NOW)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
