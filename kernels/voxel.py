"""Event voxel grid (E2VID definition), Numba on the CPU, Numba-CUDA on the GPU.

For a window of N events with timestamps t_0..t_{N-1} and B bins,
``t*_i = (B-1)(t_i - t_0)/(t_{N-1} - t_0)`` (0 when all events share one timestamp) and event i
adds ``p_i * max(0, 1 - |b - t*_i|)`` to bin b at (y_i, x_i): bins floor(t*) and floor(t*)+1
receive ``p(1 - frac)`` and ``p * frac``.

CPU strategy — the loop is bound by scattered read-modify-writes into the grid:
- events go through in blocks of ``_BLOCK``: a branch-free pass (SIMD-vectorised by LLVM) checks
  them and computes each event's grid index and two weights into small L1-resident buffers, then a
  tight loop does only the scattered adds. Time is float32 on the offset ``t_i - t_0`` (one int64
  subtraction) times a precomputed ``(B-1)/span``: no per-event division;
- a large window is split into one contiguous chunk per thread, each accumulated into a private
  grid (no races, no atomics), and the private grids are summed in a fixed order: the same result
  on every run for a given thread count;
- private grids hold bin *pairs*, ``(B-1, H*W, 2)``: an event with floor(t*) = b adds its two
  shares to the adjacent cells (pair b, pixel) — one cache line, never split — and, events being
  sorted, a thread works on one pair plane at a time (H*W*8 bytes: 0.7 MB at 346x260, inside its
  L2) instead of the whole grid. The ordered reduction gives bin b = upper shares of pair b-1 +
  lower shares of pair b. Measured at 10M events, 346x260, B=5, 2 threads, busy machine: 1.2-1.6x
  less CPU time than pixel-major private grids (all B bins of a pixel adjacent, 2.9 MB per thread);
- small windows, or as many windows as threads, are processed one window per thread straight into
  the output (planar layout), which is deterministic whatever the thread count; a single small
  window runs without a parallel region at all: on a busy machine (every evpipe node is a process)
  an OpenMP barrier costs far more than the few milliseconds it could save.
Events outside the sensor, polarities other than ±1 and timestamps outside [t_0, t_{N-1}] (the
window is not sorted) raise ``ValueError``; the check rides along in the vectorised pass.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

from evpipe.kernels._common import (
    check_event_arrays,
    check_sensor,
    check_windows,
    raise_first_invalid,
    resolve_device,
)

_BLOCK = 512
# A private grid per thread pays for itself (zeroing + reduction) only when a window has this
# many events, and at least as many as a quarter of the grid's cells.
_PRIVATIZE_MIN_EVENTS = 1 << 19
# Private grids must stay cache-resident to pay off: at 1280x720 (B=5) two 29 MB private grids ran
# 4x slower than a single thread writing one planar grid. Above this total, one thread does it.
_PRIVATE_BUDGET_BYTES = 16 << 20


@nb.njit(cache=True, fastmath=True)
def _accumulate(t, x, y, p, lo, hi, t0, span, bins, width, height, pix_stride, bin_stride, upper, grid):
    """Add events [lo, hi) of a window starting at time t0 (span = t_last - t0) to flat ``grid``.

    An event's lower share goes to ``pixel * pix_stride + b0 * bin_stride``, its upper share ``upper``
    cells further. Returns -1, or the start of the first block holding an invalid event (nothing of
    that block is added).
    """
    scale = np.float32((bins - 1) / span) if span > 0 else np.float32(0.0)
    top = np.float32(bins - 1)
    last_lower_bin = max(bins - 2, 0)
    index = np.empty(_BLOCK, np.uint64)
    w_lower = np.empty(_BLOCK, np.float32)
    w_upper = np.empty(_BLOCK, np.float32)
    for start in range(lo, hi, _BLOCK):
        m = min(_BLOCK, hi - start)
        # Slices give the loop non-negative indices, so LLVM drops wraparound checks and vectorises.
        tb = t[start : start + m]
        xb = x[start : start + m]
        yb = y[start : start + m]
        pb = p[start : start + m]
        invalid = np.int32(0)
        for k in range(m):
            xi = np.int64(xb[k])
            yi = np.int64(yb[k])
            pi = np.int32(pb[k])
            dt = tb[k] - t0
            # (pi + 1) & ~2 is 0 exactly for pi in {-1, +1}; unsigned dt > span catches dt < 0 too.
            invalid |= np.int32(
                (xi >= width) | (yi >= height) | (np.uint64(dt) > np.uint64(span)) | (((pi + 1) & 0xFD) != 0)
            )
            tstar = min(np.float32(dt) * scale, top)
            b0 = min(np.int64(tstar), last_lower_bin)
            frac = tstar - np.float32(b0)
            pol = np.float32(pi)
            index[k] = np.uint64((yi * width + xi) * pix_stride + b0 * bin_stride)
            w_upper[k] = pol * frac
            w_lower[k] = pol - pol * frac
        if invalid:
            return start
        for k in range(m):
            j = index[k]
            grid[j] += w_lower[k]
            grid[j + np.uint64(upper)] += w_upper[k]
    return -1


@nb.njit(parallel=True, cache=True, fastmath=True)
def _voxel_per_window(t, x, y, p, windows, bins, height, width, out, bad):
    """One window per thread, each written straight into ``out[w]`` (B, H, W)."""
    npix = height * width
    for w in nb.prange(windows.shape[0]):
        lo, hi = windows[w, 0], windows[w, 1]
        if hi > lo:
            grid = out[w].reshape(bins * npix)
            upper = _planar_upper(bins, npix)
            t0, span = t[lo], t[hi - 1] - t[lo]
            bad[w] = _accumulate(t, x, y, p, lo, hi, t0, span, bins, width, height, 1, npix, upper, grid)


@nb.njit(parallel=True, cache=True, fastmath=True)
def _voxel_privatized(t, x, y, p, lo, hi, bins, height, width, n_chunks, out, bad):
    """One large window: private bin-pair grids per chunk (one parallel region), then an ordered reduction."""
    npix = height * width
    n_pairs = max(bins - 1, 1)
    # pairs[c, b, pixel] = (share of bin b, share of bin b + 1) of chunk c's events with floor(t*) = b.
    pairs = np.empty((n_chunks, n_pairs * npix * 2), np.float32)
    n = hi - lo
    t0 = t[lo]
    span = t[hi - 1] - t0
    for c in nb.prange(n_chunks):
        pairs[c] = 0.0  # zeroed by the thread that fills it: its cache, its memory node
        c_lo = lo + (n * c) // n_chunks
        c_hi = lo + (n * (c + 1)) // n_chunks
        bad[c] = _accumulate(t, x, y, p, c_lo, c_hi, t0, span, bins, width, height, 2, 2 * npix, 1, pairs[c])
    _reduce_pairs(pairs, bins, npix, out.reshape(bins, npix))


@nb.njit(cache=True, fastmath=True)
def _reduce_pairs(pairs, bins, npix, flat):
    """flat[b] = sum over chunks of the upper shares of pair b-1 and the lower shares of pair b.

    One thread, in a fixed order (the same sums on every run for a given thread count). A second parallel
    region cost more on the busy 2-core machine, where it waits for both threads to be scheduled: at 10M
    events, 346x260, B=5, load ~3, best of 15 was 43 ms with this vs 51 ms with a parallel reduction
    (1M events: 8.7 vs 20 ms). ``pairs`` float32 (chunks, (B-1)*npix*2), ``flat`` float32 (B, npix).
    """
    n_pairs = max(bins - 1, 1)
    for b in range(bins):
        row = flat[b]
        row[:] = 0.0
        for c in range(pairs.shape[0]):
            if b >= 1:
                base = ((b - 1) * npix) * 2 + 1
                for pix in range(npix):
                    row[pix] += pairs[c, base + 2 * pix]
            if b < n_pairs:
                base = (b * npix) * 2
                for pix in range(npix):
                    row[pix] += pairs[c, base + 2 * pix]


@nb.njit(cache=True)
def _planar_upper(bins, npix):
    """Offset from an event's lower cell to its upper one in a planar (bins, H*W) grid; one bin: the same cell."""
    return npix if bins > 1 else 0


def _voxel_grid_cpu(t, x, y, p, bins: int, height: int, width: int, windows: np.ndarray) -> np.ndarray:
    out = np.zeros((len(windows), bins, height, width), np.float32)
    sizes = windows[:, 1] - windows[:, 0]
    # One private grid per thread, as many as fit the cache budget.
    n_threads = nb.get_num_threads()
    n_chunks = min(n_threads, max(1, _PRIVATE_BUDGET_BYTES // (height * width * max(bins - 1, 1) * 8)))
    big_enough = sizes >= max(_PRIVATIZE_MIN_EVENTS, height * width * bins // 4)
    # With at least as many windows as threads, one window per thread already uses every core.
    privatize = big_enough & (n_chunks > 1) & (len(windows) < n_threads)
    direct = np.flatnonzero(~privatize)
    if len(direct) == 1:
        # One window: a plain call, no parallel region (its threads would only wait at the barrier).
        (w,) = direct
        lo, hi = (int(i) for i in windows[w])
        if hi > lo:
            grid = out[w].reshape(-1)
            npix = height * width
            upper = _planar_upper(bins, npix)
            start = _accumulate(t, x, y, p, lo, hi, t[lo], t[hi - 1] - t[lo], bins, width, height, 1, npix, upper, grid)
            if start >= 0:
                _raise_invalid(t, x, y, p, start, windows[w], height, width)
    elif len(direct):
        bad = np.full(len(direct), -1, np.int64)
        target = out if len(direct) == len(windows) else np.zeros((len(direct), bins, height, width), np.float32)
        _voxel_per_window(t, x, y, p, windows[direct], bins, height, width, target, bad)
        if target is not out:
            out[direct] = target
        for w, start in zip(direct, bad, strict=True):
            if start >= 0:
                _raise_invalid(t, x, y, p, start, windows[w], height, width)
    for w in np.flatnonzero(privatize):
        bad = np.full(n_chunks, -1, np.int64)
        lo, hi = windows[w]
        _voxel_privatized(t, x, y, p, lo, hi, bins, height, width, n_chunks, out[w], bad)
        if (bad >= 0).any():
            _raise_invalid(t, x, y, p, int(bad[bad >= 0].min()), windows[w], height, width)
    return out


def warm_up() -> None:
    """Load every CPU code path of `voxel_grid` for the `Events` dtypes (from Numba's on-disk cache, or compile).

    A path's first call otherwise pays this mid-stream: measured on the 2-core machine, about 0.9 s for
    the batched path alone, which stalled a realtime replay feeding a voxelizer for 0.4 s. Also starts
    the threading layer.
    """
    t, x, y = np.zeros(1, np.int64), np.zeros(1, np.uint16), np.zeros(1, np.uint16)
    p = np.ones(1, np.int8)
    _voxel_grid_cpu(t, x, y, p, 1, 1, 1, np.array([[0, 1]], np.int64))  # one window: no parallel region
    _voxel_grid_cpu(t, x, y, p, 1, 1, 1, np.array([[0, 1], [0, 1]], np.int64))  # one window per thread
    _voxel_privatized(t, x, y, p, np.int64(0), np.int64(1), 1, 1, 1, 1, np.zeros((1, 1, 1), np.float32),
                      np.full(1, -1, np.int64))


def _raise_invalid(t, x, y, p, start: int, window: np.ndarray, height: int, width: int) -> None:
    lo, hi = int(window[0]), int(window[1])
    raise_first_invalid(t[:hi], x[:hi], y[:hi], p[:hi], int(start), height, width, int(t[lo]), int(t[hi - 1]))


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
    """Voxel grid(s) of events, E2VID definition (see the module docstring).

    ``t`` int64 µs (sorted within each window), ``x``/``y`` uint16 pixel coordinates
    (< ``width``/``height``), ``p`` int8 ±1, all (N,). ``windows`` None: one grid, float32
    (bins, height, width) over all events; int64 (n, 2) ``[start, stop)`` index ranges: float32
    (n, bins, height, width), one grid per window (an empty window gives zeros).
    ``device`` None follows the inputs (CUDA device arrays in, device array out), or "cpu"/"cuda".
    Raises ValueError for bad shapes/dtypes, events outside the sensor, polarities other than ±1
    and windows whose events are not sorted by time.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins: expected an integer >= 1, got {bins!r}")
    bins = int(bins)
    height, width = check_sensor(height, width)
    gpu, (t, x, y, p) = resolve_device(device, t, x, y, p)
    n = check_event_arrays(t=t, x=x, y=y, p=p)
    single = windows is None
    windows = np.array([[0, n]], np.int64) if single else check_windows(windows, n)
    if gpu is not None:
        out = gpu.voxel_grid(t, x, y, p, bins, height, width, windows)
    else:
        out = _voxel_grid_cpu(t, x, y, p, bins, height, width, windows)
    return out[0] if single else out
