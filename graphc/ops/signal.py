"""Ops: signal processing (DFT, STFT, the Hann/Hamming/Blackman windows and MelWeightMatrix).

Complex tensors follow ONNX's convention: a trailing axis of size 2 holds (real, imaginary), and real inputs
have a trailing axis of size 1. The transforms run through ``np.fft`` in the input's precision (double for
float64, single otherwise) and are cast back to the input's dtype.

DFT changed form at opset 20: ``axis`` moved from an attribute (default 1) to an optional third input
(default -2); negative axes count on the full rank, including the complex axis, in both forms.
"""

from __future__ import annotations

import numpy as np

from ..ir.types import TensorType, dtype_from_onnx
from .registry import Cost, FusionClass, OpContext, OpDef, register


def _to_complex(x: np.ndarray) -> np.ndarray:
    """ONNX real ([..., 1]) or complex ([..., 2]) layout -> a real or complex array without the trailing axis.

    Single precision stays single (complex64): np.fft keeps it, and the rounding then matches that of other
    runtimes (values that should be 0 come out as float32 noise, which conformance data records).
    """
    double = x.dtype == np.float64
    if x.shape[-1] == 1:
        return x[..., 0].astype(np.float64 if double else np.float32)
    z = np.empty(x.shape[:-1], np.complex128 if double else np.complex64)
    z.real, z.imag = x[..., 0], x[..., 1]
    return z


def _from_complex(z: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1).astype(dtype)


def _scalar(x: np.ndarray | None, default=None):
    return default if x is None else np.asarray(x).reshape(-1)[0].item()


class _SignalOp(OpDef):
    fusion = FusionClass.OPAQUE


@register
class DFT(_SignalOp):
    """Forward or inverse DFT along one signal axis. ``onesided`` with a forward transform is an RFFT (real
    input, first ``n//2 + 1`` bins); with ``inverse`` it is an IRFFT (one-sided complex input, real output of
    ``dft_length`` samples, by default ``2 * (bins - 1)``)."""

    op_type = "DFT"
    attrs = {"inverse": 0, "onesided": 0}

    def _axis(self, ctx: OpContext, rank: int, axis_input) -> int:
        axis = ctx.attr("axis", 1) if ctx.opset < 20 else _scalar(axis_input, -2)
        if not (-rank <= axis <= -2 or 0 <= axis <= rank - 2):
            raise ctx.fail(f"axis {axis} is out of range for a rank-{rank} input")
        return axis + rank if axis < 0 else axis

    def compute(self, ctx, x, dft_length=None, axis=None):
        axis = self._axis(ctx, x.ndim, axis)
        inverse, onesided = ctx.attr("inverse", 0), ctx.attr("onesided", 0)
        z = _to_complex(x)
        n = _scalar(dft_length)
        if inverse and onesided:
            n = 2 * (z.shape[axis] - 1) if n is None else n
            return np.fft.irfft(z, n=n, axis=axis)[..., None].astype(x.dtype)
        n = z.shape[axis] if n is None else n
        result = np.fft.ifft(z, n=n, axis=axis) if inverse else np.fft.fft(z, n=n, axis=axis)
        if onesided:
            result = np.take(result, np.arange(n // 2 + 1), axis=axis)
        return _from_complex(result, x.dtype)

    def cost(self, ctx: OpContext) -> Cost:
        base = super().cost(ctx)
        out = ctx.node.outputs[0].type if ctx.node.outputs[0] is not None else None
        n = out.numel() if isinstance(out, TensorType) else None
        return Cost(int(5 * n * np.log2(max(n, 2))) if n else 0, base.bytes_read, base.bytes_written)


@register
class STFT(_SignalOp):
    """Short-time Fourier transform of ``signal[batch, length, 1|2]``: frames of ``frame_length`` samples every
    ``frame_step``, each multiplied by ``window`` (rectangular when absent) and transformed."""

    op_type = "STFT"
    attrs = {"onesided": 1}

    def compute(self, ctx, signal, frame_step, window=None, frame_length=None):
        step = _scalar(frame_step)
        length = _scalar(frame_length, window.shape[0] if window is not None else signal.shape[1])
        if window is not None and window.shape[0] != length:
            raise ctx.fail(f"window length {window.shape[0]} differs from frame_length {length}")
        if step <= 0 or not 0 < length <= signal.shape[1]:
            raise ctx.fail(f"invalid frame_step {step} or frame_length {length} for {signal.shape[1]} samples")
        z = _to_complex(signal)
        frames = (z.shape[1] - length) // step + 1
        starts = np.arange(frames) * step
        framed = z[:, starts[:, None] + np.arange(length)]  # [batch, frames, length]
        if window is not None:
            framed = framed * window.astype(framed.real.dtype)
        spectrum = np.fft.fft(framed, axis=-1)
        if ctx.attr("onesided", 1):
            spectrum = spectrum[..., :length // 2 + 1]
        return _from_complex(spectrum, signal.dtype)


class _Window(_SignalOp):
    """A window of ``size`` samples; ``periodic`` windows use period ``size`` (for spectral analysis), symmetric
    ones ``size - 1``. ``coefficients`` are the cosine series weights a0 - a1 cos(x) + a2 cos(2x) ..."""

    attrs = {"periodic": 1, "output_datatype": 1}
    coefficients: tuple = ()

    def compute(self, ctx, size):
        n = int(_scalar(size))
        period = n if ctx.attr("periodic", 1) else n - 1
        phase = 2 * np.pi * np.arange(n) / max(period, 1)
        window = sum(((-1) ** k) * a * np.cos(k * phase) for k, a in enumerate(self.coefficients))
        return np.asarray(window, dtype=dtype_from_onnx(ctx.attr("output_datatype", 1)))

    def infer(self, ctx):
        size = ctx.const(0)
        shape = (int(_scalar(size)),) if size is not None else (None,)
        return [TensorType(dtype_from_onnx(ctx.attr("output_datatype", 1)), shape)]


@register
class HannWindow(_Window):
    op_type = "HannWindow"
    coefficients = (0.5, 0.5)


@register
class HammingWindow(_Window):
    op_type = "HammingWindow"
    coefficients = (25 / 46, 1 - 25 / 46)


@register
class BlackmanWindow(_Window):
    op_type = "BlackmanWindow"
    coefficients = (0.42, 0.5, 0.08)


@register
class MelWeightMatrix(_SignalOp):
    """``[dft_length//2 + 1, num_mel_bins]`` triangular filters, evenly spaced on the mel scale between the
    edge frequencies; each filter rises linearly from its lower edge bin to 1 at its center bin and falls back
    to 0 at its upper edge bin (ONNX's integer bin rounding: ``(dft_length + 1) * hz // sample_rate``)."""

    op_type = "MelWeightMatrix"
    attrs = {"output_datatype": 1}

    def compute(self, ctx, num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz):
        mel_bins, n_fft, rate = int(_scalar(num_mel_bins)), int(_scalar(dft_length)), _scalar(sample_rate)
        low, high = (2595 * np.log10(1 + _scalar(f) / 700) for f in (lower_edge_hertz, upper_edge_hertz))
        # the step divides by the number of edges (mel_bins + 2), not the gaps between them, as ONNX's
        # conformance data and onnxruntime do, so the top edge stays below upper_edge_hertz
        mels = low + np.arange(mel_bins + 2) * (high - low) / (mel_bins + 2)
        hertz = 700 * (10 ** (mels / 2595) - 1)
        edges = ((n_fft + 1) * hertz // rate).astype(np.int64)
        lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
        j = np.arange(n_fft // 2 + 1)[:, None]
        rising = (j - lower) / np.maximum(center - lower, 1)
        falling = (upper - j) / np.maximum(upper - center, 1)
        weights = np.where((j >= lower) & (j <= center), np.where(center == lower, 1.0, rising), 0.0)
        weights = np.where((j >= center) & (j < upper), falling, weights)
        return weights.astype(dtype_from_onnx(ctx.attr("output_datatype", 1)))
