"""Running a built program on an NVIDIA GPU through cuda-python (``cuda.bindings.driver``).

One :class:`DeviceSession` per executable, made on the first run: the primary context of device 0
(``GRAPHC_CUDA_DEVICE`` picks another), the module loaded from the build's fatbinary (or the cubin/PTX for the
device's compute capability), one device arena of the memory plan's size, the weights blob uploaded once,
and a stream. A run copies the inputs in once, launches the kernels of the launch list in order on the
stream (host steps synchronise, copy their operands out, run the reference kernel and copy the results in),
and copies the outputs out once.

No driver, no GPU, or a model that does not fit in the device's free memory: :class:`~graphc.errors.DeviceError`.
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

from ...errors import DeviceError


def driver_module():
    try:
        from cuda.bindings import driver
        return driver
    except ImportError:
        try:
            from cuda import cuda as driver  # older cuda-python
            return driver
        except ImportError:
            return None


def _check(result, what: str):
    drv = driver_module()
    err = result[0] if isinstance(result, tuple) else result
    if err != drv.CUresult.CUDA_SUCCESS:
        try:
            name = drv.cuGetErrorString(err)[1].decode()
        except Exception:  # noqa: BLE001 - the message is best effort
            name = str(err)
        raise DeviceError(f"CUDA {what} failed: {name}")
    if isinstance(result, tuple):
        return result[1] if len(result) == 2 else result[1:]
    return None


def probe() -> tuple[bool, str]:
    """(True, device description) when a CUDA GPU can be used, else (False, why not)."""
    drv = driver_module()
    if drv is None:
        return False, "cuda-python is not installed (pip install graphc[cuda])"
    try:
        _check(drv.cuInit(0), "cuInit")
        count = _check(drv.cuDeviceGetCount(), "cuDeviceGetCount")
    except DeviceError as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - a missing libcuda.so surfaces as various errors
        return False, f"{type(exc).__name__}: {exc}"
    if not count:
        return False, "the driver reports no CUDA device"
    return True, f"{count} CUDA device(s)"


class DeviceSession:
    def __init__(self, program, build, weights_blob: np.ndarray, graph):
        ok, why = probe()
        if not ok:
            raise DeviceError(f"no CUDA GPU/driver found: {why}")
        drv = self.drv = driver_module()
        ordinal = int(os.environ.get("GRAPHC_CUDA_DEVICE", "0"))
        self.device = _check(drv.cuDeviceGet(ordinal), "cuDeviceGet")
        major = _check(drv.cuDeviceGetAttribute(
            drv.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.device), "attribute")
        minor = _check(drv.cuDeviceGetAttribute(
            drv.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.device), "attribute")
        self.capability = (major, minor)
        self.context = _check(drv.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        _check(drv.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
        self.program, self.graph = program, graph
        io_bytes = sum(_nbytes(v) for v in list(graph.inputs) + list(graph.outputs))
        need = program.arena_bytes + program.weights_bytes + io_bytes
        free, total = _check(drv.cuMemGetInfo(), "cuMemGetInfo")
        if need > free:
            raise DeviceError(f"the model needs {need:,} bytes on the GPU (arena {program.arena_bytes:,}, weights "
                              f"{program.weights_bytes:,}, inputs/outputs {io_bytes:,}); only {free:,} of {total:,} "
                              f"are free")
        image = build.image_for(major, minor)
        self.module = _check(drv.cuModuleLoadData(image), "cuModuleLoadData")
        self.functions = {k.name: _check(drv.cuModuleGetFunction(self.module, k.name.encode()), "cuModuleGetFunction")
                          for k in program.kernels}
        self.stream = _check(drv.cuStreamCreate(0), "cuStreamCreate")
        self.arena = self._alloc(program.arena_bytes)
        self.weights = self._alloc(program.weights_bytes)
        if program.weights_bytes:
            _check(drv.cuMemcpyHtoD(self.weights, weights_blob.ctypes.data, program.weights_bytes), "weights upload")
        self.inputs = [self._alloc(_nbytes(v)) for v in graph.inputs]
        self.outputs = [self._alloc(_nbytes(v)) for v in graph.outputs]
        self.lock = threading.Lock()

    def _alloc(self, nbytes: int):
        return _check(self.drv.cuMemAlloc(max(int(nbytes), 256)), "cuMemAlloc")

    def _address(self, loc: dict) -> int:
        space = loc["space"]
        base = {"arena": self.arena, "weights": self.weights}.get(space)
        if base is None:
            base = (self.inputs if space == "input" else self.outputs)[loc["index"]]
        return int(base) + int(loc.get("offset", 0))

    def run(self, inputs: list, host_steps: dict) -> list:
        drv = self.drv
        with self.lock:
            _check(drv.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
            keep = []
            for dev, x, v in zip(self.inputs, inputs, self.graph.inputs):
                x = np.ascontiguousarray(x, dtype=v.type.dtype)
                keep.append(x)
                _check(drv.cuMemcpyHtoDAsync(dev, x.ctypes.data, x.nbytes, self.stream), "input copy")
            for entry in self.program.launches:
                if "kernel" in entry:
                    self._launch(entry)
                elif "host" in entry:
                    self._host_step(entry, host_steps[entry["host"]])
                else:
                    src = self._address(entry["copy"]) if entry["copy"].get("space") != "host-weight" else None
                    dst = self._address(entry["dst"])
                    v = self.graph.outputs[entry["dst"]["index"]]
                    if v.is_constant:
                        data = np.ascontiguousarray(v.const)
                        keep.append(data)
                        _check(drv.cuMemcpyHtoDAsync(dst, data.ctypes.data, data.nbytes, self.stream), "copy")
                    else:
                        _check(drv.cuMemcpyDtoDAsync(dst, src, entry["nbytes"], self.stream), "copy")
            outs = []
            for dev, v in zip(self.outputs, self.graph.outputs):
                y = np.empty(tuple(v.type.shape), np.dtype(v.type.dtype))
                _check(drv.cuMemcpyDtoHAsync(y.ctypes.data, dev, y.nbytes, self.stream), "output copy")
                outs.append(y)
            _check(drv.cuStreamSynchronize(self.stream), "kernel execution")
            return outs

    def _launch(self, entry: dict) -> None:
        args = [ctypes.c_uint64(self._address(a)) for a in entry["args"]]
        params = (ctypes.c_void_p * max(len(args), 1))(*[ctypes.addressof(a) for a in args])
        gx, gy, gz = entry["grid"]
        bx, by, bz = entry["block"]
        _check(self.drv.cuLaunchKernel(self.functions[entry["kernel"]], gx, gy, gz, bx, by, bz,
                                       0, self.stream,  # shared memory is static in every generated kernel
                                       ctypes.addressof(params), 0), f"launch of {entry['kernel']}")

    def _host_step(self, entry: dict, step) -> None:
        drv = self.drv
        node = self.graph.nodes[entry["host"]]
        _check(drv.cuStreamSynchronize(self.stream), f"kernels before host step {node.name!r}")
        values = {}
        for x, loc in zip(step.reads, entry["reads"]):
            if x.is_constant:
                values[id(x)] = x.const
                continue
            host = np.empty(tuple(x.type.shape), np.dtype(x.type.dtype))
            _check(drv.cuMemcpyDtoH(host.ctypes.data, self._address(loc), host.nbytes), "host step input")
            values[id(x)] = host
        for o, r, loc in zip(node.outputs, step.run(values), entry["outputs"]):
            if o is None:
                continue
            r = np.ascontiguousarray(np.asarray(r, dtype=o.type.dtype).reshape(tuple(o.type.shape)))
            _check(drv.cuMemcpyHtoD(self._address(loc), r.ctypes.data, r.nbytes), "host step output")


def _nbytes(v) -> int:
    return int(np.prod(tuple(v.type.shape), dtype=np.int64)) * np.dtype(v.type.dtype).itemsize
