"""CUDA (numba.cuda) versions of the kernels; imported only when a kernel runs on the GPU.

The public functions in ``voxel``, ``frames`` and ``edi`` validate arguments and call these with
device arrays. Results are returned as numba device arrays; nothing is copied to the host except
one int64 (the index of the first invalid event, or none), which is also the only synchronisation.

Accumulation uses atomics whose result does not depend on their order, so GPU results are
bit-identical run to run: the voxel grid accumulates 32.32 fixed point in int64 (each event's two
shares sum exactly to its polarity), counts are exact float32 integers, time surfaces use an
atomic max, and EDI accumulates integer polarity sums per (pixel, sample).

Works with a GPU (numba-cuda or numba's built-in CUDA target) and under the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set before numba is imported).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda

from evpipe.kernels._common import invalid_event_error

_THREADS = 128
_NO_BAD = np.iinfo(np.int64).max
_NO_EVENT = np.iinfo(np.int64).min
_FIXED_ONE = 2**32  # voxel weights in 32.32 fixed point


def to_device(arr: Any) -> Any:
    """A numba device array for ``arr``: as is if already one, zero-copy for CUDA array interface
    objects (CuPy, torch), a host-to-device copy for host arrays."""
    if cuda.devicearray.is_cuda_ndarray(arr):
        return arr
    if hasattr(arr, "__cuda_array_interface__"):
        return cuda.as_cuda_array(arr)
    return cuda.to_device(np.ascontiguousarray(arr))


def _blocks(n: int) -> int:
    return max(1, (n + _THREADS - 1) // _THREADS)


@cuda.jit
def _fill(arr, value):
    i = cuda.grid(1)
    if i < arr.size:
        arr[i] = value


def _full(n: int, value: int | float, dtype: type) -> Any:
    """A device array filled on the device (no host buffer is copied over)."""
    arr = cuda.device_array(n, dtype)
    _fill[_blocks(n), _THREADS](arr, dtype(value))
    return arr


def _check(bad: Any, t: Any, x: Any, y: Any, p: Any, height: int, width: int) -> None:
    """Raise for the first invalid event a kernel flagged (copies one int64, then one event)."""
    index = int(bad.copy_to_host()[0])
    if index == _NO_BAD:
        return
    one = slice(index, index + 1)
    t_i = None if t is None else int(t[one].copy_to_host()[0])
    values = (int(a[one].copy_to_host()[0]) for a in (x, y, p))
    raise invalid_event_error(index, t_i, *values, height, width)


@cuda.jit(device=True)
def _window_event(windows, w):
    """This thread's event index in window ``w`` (grid x runs over the window's events), or -1 past its end."""
    i = windows[w, 0] + cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    return i if i < windows[w, 1] else -1


@cuda.jit(device=True)
def _accept(i, xi, yi, pi, height, width, out_of_range, bad):
    """True for an event on the sensor with polarity ±1 (and not ``out_of_range``); otherwise False, with
    ``i`` flagged in ``bad`` (an atomic min, so the first invalid event is the one reported)."""
    if xi >= width or yi >= height or (pi != 1 and pi != -1) or out_of_range:
        cuda.atomic.min(bad, 0, i)
        return False
    return True


def _launch_per_window(kernel: Any, events: tuple, windows: np.ndarray, height: int, width: int, *rest: Any) -> None:
    """``kernel(*events, windows, height, width, *rest, bad)`` on a grid (events of the longest window, windows),
    then raise for the first invalid event a thread flagged. ``events`` is (t, x, y, p) or (x, y, p)."""
    bad = _full(1, _NO_BAD, np.int64)
    longest = int((windows[:, 1] - windows[:, 0]).max()) if len(windows) else 0
    if longest:
        kernel[(_blocks(longest), len(windows)), _THREADS](*events, cuda.to_device(windows), height, width, *rest, bad)
    _check(bad, events[0] if len(events) == 4 else None, *events[-3:], height, width)


@cuda.jit
def _voxel_kernel(t, x, y, p, windows, height, width, bins, acc, bad):
    """Grid (events, windows): one thread per event of window ``blockIdx.y``; acc int64 32.32."""
    w = cuda.blockIdx.y
    i = _window_event(windows, w)
    if i < 0:
        return
    t0 = t[windows[w, 0]]
    span = t[windows[w, 1] - 1] - t0
    xi = np.int64(x[i])
    yi = np.int64(y[i])
    pi = np.int64(p[i])
    dt = t[i] - t0
    if not _accept(i, xi, yi, pi, height, width, dt < 0 or dt > span, bad):
        return
    # Same float32 arithmetic as the CPU kernel.
    scale = np.float32((bins - 1) / span) if span > 0 else np.float32(0.0)
    tstar = min(np.float32(dt) * scale, np.float32(bins - 1))
    b0 = min(np.int64(tstar), max(bins - 2, 0))
    frac = tstar - np.float32(b0)
    upper = np.int64(math.floor(np.float64(frac) * _FIXED_ONE + 0.5)) * pi
    lower = pi * _FIXED_ONE - upper
    npix = height * width
    cell = (w * bins + b0) * npix + yi * width + xi
    cuda.atomic.add(acc, cell, lower)
    cuda.atomic.add(acc, cell + npix if bins > 1 else cell, upper)


@cuda.jit
def _fixed_to_float32(acc, out):
    i = cuda.grid(1)
    if i < acc.size:
        out[i] = np.float32(np.float64(acc[i]) / _FIXED_ONE)


def voxel_grid(t, x, y, p, bins: int, height: int, width: int, windows: np.ndarray) -> Any:
    """Device (n, bins, height, width) float32; arguments already validated, windows on the host."""
    n_windows = len(windows)
    cells = n_windows * bins * height * width
    acc = _full(cells, 0, np.int64)
    _launch_per_window(_voxel_kernel, (t, x, y, p), windows, height, width, bins, acc)
    out = cuda.device_array(cells, np.float32)
    _fixed_to_float32[_blocks(cells), _THREADS](acc, out)
    return out.reshape((n_windows, bins, height, width))


@cuda.jit
def _frame_kernel(x, y, p, windows, height, width, counts, bad):
    """Grid (events, windows): add 1 at (window, channel, y, x); exact in float32 below 2**24."""
    w = cuda.blockIdx.y
    i = _window_event(windows, w)
    if i < 0:
        return
    xi = np.int64(x[i])
    yi = np.int64(y[i])
    pi = np.int64(p[i])
    if not _accept(i, xi, yi, pi, height, width, False, bad):
        return
    channel = (pi + 1) // 2
    cuda.atomic.add(counts, ((w * 2 + channel) * height + yi) * width + xi, np.float32(1.0))


def event_frames(x, y, p, height: int, width: int, windows: np.ndarray) -> Any:
    n_windows = len(windows)
    cells = n_windows * 2 * height * width
    counts = _full(cells, 0.0, np.float32)
    _launch_per_window(_frame_kernel, (x, y, p), windows, height, width, counts)
    return counts.reshape((n_windows, 2, height, width))


@cuda.jit
def _latest_kernel(t, x, y, p, windows, height, width, t_refs, latest, bad):
    """Grid (events, windows): atomic max of event time (at or before t_ref) per cell."""
    w = cuda.blockIdx.y
    i = _window_event(windows, w)
    if i < 0:
        return
    xi = np.int64(x[i])
    yi = np.int64(y[i])
    pi = np.int64(p[i])
    if not _accept(i, xi, yi, pi, height, width, False, bad):
        return
    if t[i] <= t_refs[w]:
        channel = (pi + 1) // 2
        cuda.atomic.max(latest, ((w * 2 + channel) * height + yi) * width + xi, t[i])


@cuda.jit
def _decay_kernel(latest, t_refs, cells_per_window, tau_us, out):
    i = cuda.grid(1)
    if i < latest.size:
        if latest[i] == _NO_EVENT:
            out[i] = np.float32(0.0)
        else:
            age = np.float64(t_refs[i // cells_per_window] - latest[i])
            out[i] = np.float32(math.exp(-age / tau_us))


def time_surfaces(t, x, y, p, height: int, width: int, windows: np.ndarray, t_refs: np.ndarray, tau_us: float):
    n_windows = len(windows)
    cells = n_windows * 2 * height * width
    latest = _full(cells, _NO_EVENT, np.int64)
    refs = cuda.to_device(t_refs)
    _launch_per_window(_latest_kernel, (t, x, y, p), windows, height, width, refs, latest)
    out = cuda.device_array(cells, np.float32)
    _decay_kernel[_blocks(cells), _THREADS](latest, refs, 2 * height * width, tau_us, out)
    return out.reshape((n_windows, 2, height, width))


@cuda.jit
def _edi_hist_kernel(t, x, y, p, start, end, n_samples, tau2, height, width, hist, tau_sums, bad):
    """One thread per event: polarity into hist[pixel, first sample at or after it], and into
    tau_sums[pixel] if at or before tau. Events outside [start, end) are skipped."""
    i = cuda.grid(1)
    if i >= t.size:
        return
    ti = t[i]
    if ti < start or ti >= end:
        return
    xi = np.int64(x[i])
    yi = np.int64(y[i])
    pi = np.int32(p[i])
    if not _accept(i, xi, yi, pi, height, width, False, bad):
        return
    pixel = yi * width + xi
    period = end - start
    num = 2 * n_samples * (ti - start) - period
    first = 0 if num <= 0 else min((num + 2 * period - 1) // (2 * period), n_samples)
    if first < n_samples:
        cuda.atomic.add(hist, pixel * n_samples + first, pi)
    if 2 * ti <= tau2:
        cuda.atomic.add(tau_sums, pixel, pi)


@cuda.jit
def _edi_finish_kernel(hist, tau_sums, n_samples, c, out):
    pixel = cuda.grid(1)
    if pixel >= out.size:
        return
    running = -tau_sums[pixel]
    total = 0.0
    for k in range(n_samples):
        running += hist[pixel * n_samples + k]
        total += math.exp(c * running)
    out[pixel] = np.float32(total / n_samples)


def edi_integral(t, x, y, p, c: float, start: int, end: int, n_samples: int, height: int, width: int, tau2: int):
    npix = height * width
    hist = _full(npix * n_samples, 0, np.int32)
    tau_sums = _full(npix, 0, np.int32)
    bad = _full(1, _NO_BAD, np.int64)
    if t.size:
        _edi_hist_kernel[_blocks(t.size), _THREADS](
            t, x, y, p, start, end, n_samples, tau2, height, width, hist, tau_sums, bad
        )
    _check(bad, None, x, y, p, height, width)
    out = cuda.device_array(npix, np.float32)
    _edi_finish_kernel[_blocks(npix), _THREADS](hist, tau_sums, n_samples, c, out)
    return out.reshape((height, width))
