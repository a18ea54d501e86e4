"""Event count frames and time surfaces, Numba on the CPU, Numba-CUDA on the GPU.

Both are per-polarity images, channel 0 = OFF (p=-1), channel 1 = ON (p=+1), float32 (2, H, W):
- ``event_frame``: number of events per pixel and polarity;
- ``time_surface``: ``exp(-(t_ref - t_last) / tau_us)`` with ``t_last`` the latest event at or
  before ``t_ref`` at that pixel and polarity, 0 where there is none (later events are ignored).

Both results are order-independent (integer counts, maxima), so they are bit-identical on every
run whatever the thread count. Large single windows are split over the threads into private
images combined at the end; batches of windows run one window per thread.
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
_PRIVATIZE_MIN_EVENTS = 1 << 19
# Private grids must stay cache-resident to pay off: at 1280x720 (B=5) two 29 MB private grids ran
# 4x slower than a single thread writing one planar grid. Above this total, one thread does it.
_PRIVATE_BUDGET_BYTES = 16 << 20
_NO_EVENT = np.iinfo(np.int64).min


@nb.njit(cache=True, fastmath=True)
def _block_cells(xb, yb, pb, width, height, cells):
    """Cell index ``channel * H * W + y * W + x`` of each event of a block into ``cells``.

    Branch-free so that LLVM vectorises it; returns nonzero if any event is invalid.
    """
    invalid = np.int32(0)
    npix = height * width
    for k in range(len(xb)):
        xi = np.int64(xb[k])
        yi = np.int64(yb[k])
        pi = np.int32(pb[k])
        # (pi + 1) & ~2 is 0 exactly for pi in {-1, +1}.
        invalid |= np.int32((xi >= width) | (yi >= height) | (((pi + 1) & 0xFD) != 0))
        cells[k] = np.uint64(((pi + 1) >> 1) * npix + yi * width + xi)
    return invalid


@nb.njit(cache=True, fastmath=True)
def _count(x, y, p, lo, hi, width, height, counts):
    """Add events [lo, hi) to flat ``counts`` (2*H*W); -1 or the start of a block with an invalid event."""
    cells = np.empty(_BLOCK, np.uint64)
    for start in range(lo, hi, _BLOCK):
        stop = min(start + _BLOCK, hi)
        m = stop - start
        if _block_cells(x[start:stop], y[start:stop], p[start:stop], width, height, cells[:m]):
            return start
        for k in range(m):
            counts[cells[k]] += np.float32(1.0)
    return -1


@nb.njit(cache=True, fastmath=True)
def _latest(t, x, y, p, lo, hi, t_ref, width, height, latest):
    """Latest event time at or before ``t_ref`` per cell into flat ``latest`` (2*H*W, int64)."""
    cells = np.empty(_BLOCK, np.uint64)
    for start in range(lo, hi, _BLOCK):
        stop = min(start + _BLOCK, hi)
        m = stop - start
        if _block_cells(x[start:stop], y[start:stop], p[start:stop], width, height, cells[:m]):
            return start
        tb = t[start:stop]
        for k in range(m):
            ti = tb[k]
            c = cells[k]
            if ti <= t_ref and ti > latest[c]:
                latest[c] = ti
    return -1


@nb.njit(cache=True, fastmath=True)
def _decay(latest, t_ref, tau_us, out):
    for c in range(latest.size):
        out[c] = np.exp(-(t_ref - latest[c]) / tau_us) if latest[c] != _NO_EVENT else 0.0


@nb.njit(parallel=True, cache=True)
def _frames_per_window(t, x, y, p, windows, t_refs, tau_us, height, width, surface, out, bad):
    """One window per thread into ``out[w]`` (2, H, W): counts, or time surfaces if ``surface``."""
    cells = 2 * height * width
    for w in nb.prange(windows.shape[0]):
        lo, hi = windows[w, 0], windows[w, 1]
        flat = out[w].reshape(cells)
        if surface:
            latest = np.full(cells, _NO_EVENT, np.int64)
            bad[w] = _latest(t, x, y, p, lo, hi, t_refs[w], width, height, latest)
            _decay(latest, t_refs[w], tau_us, flat)
        else:
            bad[w] = _count(x, y, p, lo, hi, width, height, flat)


@nb.njit(parallel=True, cache=True)
def _frames_privatized(t, x, y, p, lo, hi, t_ref, tau_us, height, width, surface, n_chunks, out, bad):
    """One large window split into ``n_chunks`` contiguous chunks with private images."""
    cells = 2 * height * width
    n = hi - lo
    if surface:
        private_latest = np.full((n_chunks, cells), _NO_EVENT, np.int64)
        for c in nb.prange(n_chunks):
            c_lo = lo + (n * c) // n_chunks
            c_hi = lo + (n * (c + 1)) // n_chunks
            bad[c] = _latest(t, x, y, p, c_lo, c_hi, t_ref, width, height, private_latest[c])
        latest = private_latest[0].copy()
        for j in nb.prange(cells):
            for c in range(1, n_chunks):
                latest[j] = max(latest[j], private_latest[c, j])
        _decay(latest, t_ref, tau_us, out.reshape(cells))
    else:
        private_counts = np.zeros((n_chunks, cells), np.float32)
        for c in nb.prange(n_chunks):
            c_lo = lo + (n * c) // n_chunks
            c_hi = lo + (n * (c + 1)) // n_chunks
            bad[c] = _count(x, y, p, c_lo, c_hi, width, height, private_counts[c])
        flat = out.reshape(cells)
        for j in nb.prange(cells):
            total = np.float32(0.0)
            for c in range(n_chunks):
                total += private_counts[c, j]
            flat[j] = total


def _frames_cpu(t, x, y, p, height, width, windows, t_refs, tau_us, surface: bool) -> np.ndarray:
    out = np.zeros((len(windows), 2, height, width), np.float32)
    sizes = windows[:, 1] - windows[:, 0]
    # One private grid per thread, as many as fit the cache budget.
    n_threads = nb.get_num_threads()
    n_chunks = min(n_threads, max(1, _PRIVATE_BUDGET_BYTES // (height * width * 2 * (8 if surface else 4))))
    big_enough = sizes >= max(_PRIVATIZE_MIN_EVENTS, height * width // 2)
    privatize = big_enough & (n_chunks > 1) & (len(windows) < n_threads)
    direct = np.flatnonzero(~privatize)
    if len(direct) == 1:
        # One window: a plain call, no parallel region (its threads would only wait at the barrier).
        (w,) = direct
        lo, hi = (int(i) for i in windows[w])
        flat = out[w].reshape(-1)
        if surface:
            latest = np.full(flat.size, _NO_EVENT, np.int64)
            start = _latest(t, x, y, p, lo, hi, t_refs[w], width, height, latest)
            _decay(latest, t_refs[w], tau_us, flat)
        else:
            start = _count(x, y, p, lo, hi, width, height, flat)
        if start >= 0:
            raise_first_invalid(None, x, y, p, int(start), height, width)
    elif len(direct):
        bad = np.full(len(direct), -1, np.int64)
        target = out if len(direct) == len(windows) else np.zeros((len(direct), 2, height, width), np.float32)
        _frames_per_window(t, x, y, p, windows[direct], t_refs[direct], tau_us, height, width, surface, target, bad)
        if target is not out:
            out[direct] = target
        for start in bad[bad >= 0]:
            raise_first_invalid(None, x, y, p, int(start), height, width)
    for w in np.flatnonzero(privatize):
        bad = np.full(n_chunks, -1, np.int64)
        lo, hi = windows[w]
        _frames_privatized(t, x, y, p, lo, hi, t_refs[w], tau_us, height, width, surface, n_chunks, out[w], bad)
        if (bad >= 0).any():
            raise_first_invalid(None, x, y, p, int(bad[bad >= 0].min()), height, width)
    return out


def _prepare(height: int, width: int, windows: np.ndarray | None, n: int) -> tuple[int, int, np.ndarray, bool]:
    height, width = check_sensor(height, width)
    single = windows is None
    windows = np.array([[0, n]], np.int64) if single else check_windows(windows, n)
    return height, width, windows, single


def event_frame(
    x: Any,
    y: Any,
    p: Any,
    height: int,
    width: int,
    windows: np.ndarray | None = None,
    device: str | None = None,
) -> Any:
    """Per-polarity event counts: float32 (2, height, width), channel 0 OFF (p=-1), 1 ON (p=+1).

    ``x``/``y`` uint16 (< ``width``/``height``), ``p`` int8 ±1, all (N,). ``windows`` int64 (n, 2)
    ``[start, stop)`` index ranges give (n, 2, height, width). ``device``: None follows the inputs
    (CUDA device arrays in, device array out), or "cpu"/"cuda".
    """
    gpu, (x, y, p) = resolve_device(device, x, y, p)
    n = check_event_arrays(x=x, y=y, p=p)
    height, width, windows, single = _prepare(height, width, windows, n)
    if gpu is not None:
        out = gpu.event_frames(x, y, p, height, width, windows)
    else:
        # Counting reads no times: an empty array stands in for them.
        no_times = np.empty(0, np.int64)
        out = _frames_cpu(no_times, x, y, p, height, width, windows, np.zeros(len(windows), np.int64), 1.0, False)
    return out[0] if single else out


def time_surface(
    t: Any,
    x: Any,
    y: Any,
    p: Any,
    height: int,
    width: int,
    t_ref: int | np.ndarray,
    tau_us: float,
    windows: np.ndarray | None = None,
    device: str | None = None,
) -> Any:
    """Exponentially decayed time surface per polarity: float32 (2, height, width), values in (0, 1].

    ``exp(-(t_ref - t_last) / tau_us)`` with ``t_last`` the latest event (int64 µs) at or before
    ``t_ref`` at that pixel and polarity; 0 where there is none. Channel 0 OFF, 1 ON. ``windows``
    int64 (n, 2) gives (n, 2, height, width); ``t_ref`` is then one time for all windows or an
    int64 array (n,), one per window. ``device`` as for :func:`event_frame`.
    """
    if not np.isfinite(tau_us) or tau_us <= 0:
        raise ValueError(f"tau_us: expected a positive decay time in µs, got {tau_us!r}")
    gpu, (t, x, y, p) = resolve_device(device, t, x, y, p)
    n = check_event_arrays(t=t, x=x, y=y, p=p)
    height, width, windows, single = _prepare(height, width, windows, n)
    t_refs = np.asarray(t_ref)
    if t_refs.ndim == 0:
        t_refs = np.full(len(windows), t_refs, np.int64)
    if t_refs.shape != (len(windows),) or not np.issubdtype(t_refs.dtype, np.integer):
        raise ValueError(
            f"t_ref: expected an integer time in µs or an int array of one per window ({len(windows)}), "
            f"got {t_refs.dtype} shape {t_refs.shape}"
        )
    t_refs = t_refs.astype(np.int64)
    if gpu is not None:
        out = gpu.time_surfaces(t, x, y, p, height, width, windows, t_refs, float(tau_us))
    else:
        out = _frames_cpu(t, x, y, p, height, width, windows, t_refs, float(tau_us), True)
    return out[0] if single else out
