"""Event voxel grid (E2VID definition), Numba on the CPU, Numba-CUDA on the GPU.

For a window of N events with timestamps t_0..t_{N-1} and B bins,
``t*_i = (B-1)(t_i - t_0)/(t_{N-1} - t_0)`` (0 when all events share one timestamp) and event i
adds ``p_i * max(0, 1 - |b - t*_i|)`` to bin b at (y_i, x_i): at most two bins, floor(t*) and
floor(t*)+1, receive a share.

CPU strategy (the loop is bound by scattered read-modify-writes into the grid):
- a large window is split into one contiguous chunk per thread; each thread accumulates into a
  private grid, so there are no races and no atomics; the private grids are summed in a fixed order,
  which makes the result identical on every run (for a given thread count);
- private grids are pixel-major, ``(H*W, B+1)``: an event's two bins are adjacent in memory (one
  cache line instead of two planes H*W apart); the extra slot takes the zero share of events
  that land exactly on the last bin, so the inner loop has no branch. The final reduction
  transposes into ``(B, H, W)``;
- time arithmetic is float32 on the offset ``t_i - t_0`` (an int64 subtraction), multiplied by a
  precomputed ``(B-1)/span``: no per-event division;
- small windows (or many windows) are processed one window per thread, written straight into the
  output, which is also deterministic regardless of the thread count.
Out-of-sensor coordinates, polarities other than ±1 and timestamps outside [t_0, t_{N-1}] are
detected inside the loop (it reads those values anyway) and raise ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
from evpipe.kernels._common import (
    check_event_arrays,
    check_sensor,
    check_windows,
    raise_bad_event,
    use_cuda,
)

# Below this many events per window a private grid per thread costs more (zeroing + reduction)
# than it saves; also used as a minimum share of the grid size.
_PRIVATIZE_MIN_EVENTS = 1 << 16


@nb.njit(cache=True, fastmath=True, inline="always")
def _voxel_event_ok(ti, xi, yi, pi, t0, span, height, width):
    return xi < width and yi < height and (pi == 1 or pi == -1) and ti - t0 >= 0 and ti - t0 <= span


@nb.njit(cache=True, fastmath=True)
def _accumulate_planar(t, x, y, p, start, stop, bins, height, width, grid):
    """Add events [start, stop) to ``grid`` (B, H, W); returns 1 + index of the first bad event, or 0."""
    if stop <= start:
        return 0
    t0 = t[start]
    span = t[stop - 1] - t0
    scale = np.float32((bins - 1) / span) if span > 0 else np.float32(0.0)
    top = np.float32(bins - 1)
    for i in range(start, stop):
        xi = np.int64(x[i])
        yi = np.int64(y[i])
        pi = np.int64(p[i])
        if not _voxel_event_ok(t[i], xi, yi, pi, t0, span, height, width):
            return i + 1
        ts = min(np.float32(t[i] - t0) * scale, top)
        b0 = np.int64(ts)
        frac = ts - np.float32(b0)
        pol = np.float32(pi)
        grid[b0, yi, xi] += pol * (np.float32(1.0) - frac)
        if b0 + 1 < bins:
            grid[b0 + 1, yi, xi] += pol * frac
    return 0


@nb.njit(parallel=True, cache=True, fastmath=True)
def _voxel_per_window(t, x, y, p, windows, bins, height, width, out, bad):
    """One window per thread, each written straight into ``out[w]`` (B, H, W)."""
    for w in nb.prange(windows.shape[0]):
        bad[w] = _accumulate_planar(t, x, y, p, windows[w, 0], windows[w, 1], bins, height, width, out[w])


@nb.njit(parallel=True, cache=True, fastmath=True)
def _voxel_privatized(t, x, y, p, start, stop, bins, height, width, n_chunks, out, bad):
    """One large window: a private pixel-major grid per chunk, then an ordered reduction into ``out``."""
    npix = height * width
    stride = bins + 1
    private = np.zeros((n_chunks, npix * stride), np.float32)
    n = stop - start
    t0 = t[start]
    span = t[stop - 1] - t0
    scale = np.float32((bins - 1) / span) if span > 0 else np.float32(0.0)
    top = np.float32(bins - 1)
    for c in nb.prange(n_chunks):
        lo = start + (n * c) // n_chunks
        hi = start + (n * (c + 1)) // n_chunks
        grid = private[c]
        for i in range(lo, hi):
            xi = np.int64(x[i])
            yi = np.int64(y[i])
            pi = np.int64(p[i])
            if not _voxel_event_ok(t[i], xi, yi, pi, t0, span, height, width):
                bad[c] = i + 1
                break
            ts = min(np.float32(t[i] - t0) * scale, top)
            b0 = np.int64(ts)
            frac = ts - np.float32(b0)
            pol = np.float32(pi)
            base = (yi * width + xi) * stride + b0
            grid[base] += pol * (np.float32(1.0) - frac)
            grid[base + 1] += pol * frac
    flat = out.reshape(bins, npix)
    for pix in nb.prange(npix):
        for b in range(bins):
            acc = np.float32(0.0)
            for c in range(n_chunks):
                acc += private[c, pix * stride + b]
            flat[b, pix] = acc


def _voxel_grid_cpu(t, x, y, p, bins, height, width, windows):
    out = np.zeros((len(windows), bins, height, width), np.float32)
    sizes = windows[:, 1] - windows[:, 0]
    n_threads = nb.get_num_threads()
    privatize = (n_threads > 1) & (sizes >= max(_PRIVATIZE_MIN_EVENTS, height * width * bins // 4))
    if len(windows) >= n_threads:
        # Enough windows to keep every thread busy without splitting any of them.
        privatize[:] = False
    small = np.flatnonzero(~privatize)
    if len(small):
        bad = np.zeros(len(small), np.int64)
        sub = np.zeros((len(small), bins, height, width), np.float32) if len(small) < len(windows) else out
        _voxel_per_window(t, x, y, p, windows[small], bins, height, width, sub, bad)
        if sub is not out:
            out[small] = sub
        _raise_first_bad(bad, t, x, y, p, height, width)
    for w in np.flatnonzero(privatize):
        bad = np.zeros(n_threads, np.int64)
        _voxel_privatized(
            t, x, y, p, windows[w, 0], windows[w, 1], bins, height, width, n_threads, out[w], bad
        )
        _raise_first_bad(bad, t, x, y, p, height, width)
    return out


def _raise_first_bad(bad: np.ndarray, t, x, y, p, height: int, width: int) -> None:
    flagged = bad[bad > 0]
    if len(flagged):
        raise_bad_event(int(flagged.min()) - 1, t, x, y, p, height, width, " [t_first, t_last]")


def voxel_grid(
    t: Any,
    x: Any,
    y: Any,
    p: Any,
    bins: int,
    height: int,
    width: int,
    windows: np.ndarray | None = None,
    device: str | None = None,
) -> Any:
    """Voxel grid(s) of events, E2VID definition (see module docstring).

    ``t`` int64 µs (sorted within each window), ``x``/``y`` uint16 pixel coordinates
    (< ``width``/``height``), ``p`` int8 ±1, all (N,). ``windows`` None: one grid, float32
    (bins, height, width) over all events; int64 (n, 2) ``[start, stop)`` index ranges: float32
    (n, bins, height, width), one grid per window (an empty window gives zeros).
    ``device`` None follows the inputs (CUDA device arrays in, device array out), or "cpu"/"cuda".
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins: expected an integer >= 1, got {bins!r}")
    bins = int(bins)
    height, width = check_sensor(height, width)
    n = check_event_arrays(t=t, x=x, y=y, p=p)
    single = windows is None
    windows = np.array([[0, n]], np.int64) if single else check_windows(windows, n)
    if use_cuda(device, t, x, y, p):
        from evpipe.kernels import _cuda

        out = _cuda.voxel_grid(t, x, y, p, bins, height, width, windows)
    else:
        out = _voxel_grid_cpu(t, x, y, p, bins, height, width, windows)
    return out[0] if single else out
