"""EDI (event-based double integral), Numba on the CPU, Numba-CUDA on the GPU.

For a blurry frame exposed over [start, end) (T = end - start) and a reference time tau,

    E(tau) = (1/T) ∫ exp(c · ∫_tau^t e(s) ds) dt,    sharp(tau) = blurry / E(tau),

with e(s) a pixel's events as signed impulses. The outer integral is the midpoint rule over K
sample times ``s_k = start + (k + 1/2) T / K``. With ``U(s)`` a pixel's sum of polarities of events
at or before ``s``, the inner integral is ``U(s) - U(tau)``, an integer, so

    E = (1/K) Σ_k exp(c · (U(s_k) - U(tau))).

Event i counts in sample k exactly when ``s_k >= t_i``, i.e. ``k >= j_i = ceil((2K d_i - T) / (2T))``
with ``d_i = t_i - start``, computed in integers: no float ties between events and samples.

CPU (events sorted by time): the exposure's events are split into time-ordered chunks (one
boundary at tau); pass 1 sums polarities per pixel and chunk, which gives every chunk's starting
``U - U(tau)``; pass 2 walks each chunk in time order keeping ``exp(c (U - U(tau)))`` per pixel,
adding it once per run of samples between a pixel's events. Memory is O(pixels) per thread,
whatever K. GPU: one thread per event adds its polarity to an integer histogram over (pixel,
first sample at or after it), then one thread per pixel sums K exponentials; events need not be
sorted there.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

from evpipe.kernels._common import check_event_arrays, check_sensor, raise_first_invalid, resolve_device

# Fewer events than this per thread are not worth a parallel region.
_MIN_EVENTS_PER_CHUNK = 1 << 18


@nb.njit(cache=True, inline="always")
def _first_sample_at_or_after(d, n_samples, period):
    """Index of the first sample time >= start + d: ceil((2K d - T) / 2T) in [0, K]."""
    num = 2 * n_samples * d - period
    if num <= 0:
        return 0
    return min((num + 2 * period - 1) // (2 * period), n_samples)


@nb.njit(parallel=True, cache=True)
def _chunk_sums(t, x, y, p, bounds, width, height, sums, bad):
    """Per chunk, per pixel sum of polarities into ``sums`` (chunks, H*W) int32.

    Also checks events (inside the sensor, polarity ±1, sorted): ``bad[c]`` = index or -1.
    """
    for c in nb.prange(len(bounds) - 1):
        chunk = sums[c]
        for i in range(bounds[c], bounds[c + 1]):
            xi = np.int64(x[i])
            yi = np.int64(y[i])
            pi = np.int32(p[i])
            unsorted = i > bounds[0] and t[i] < t[i - 1]
            if xi >= width or yi >= height or (pi != 1 and pi != -1) or unsorted:
                bad[c] = i
                break
            chunk[yi * width + xi] += pi


@nb.njit(parallel=True, cache=True, fastmath=True)
def _edi_walk(t, x, y, p, bounds, first_sample, start_u, start, period, n_samples, c, width, out):
    """E per pixel into ``out`` (H*W float32).

    Chunk ``ch`` owns samples [first_sample[ch], first_sample[ch+1]) and starts with
    U - U(tau) = ``start_u[ch]`` per pixel. Per pixel, the state row holds the next sample not yet
    added, ``exp(c (U - U(tau)))`` (multiplied by exp(±c) at each event instead of recomputed) and
    the running sum, side by side so that an event touches one cache line. Events are sorted, so
    the first sample at or after an event only moves forward: no division per event.
    """
    n_chunks = len(bounds) - 1
    npix = len(out)
    factor_on = np.exp(c)
    factor_off = np.exp(-c)
    partial = np.zeros((n_chunks, npix))
    for ch in nb.prange(n_chunks):
        state = np.empty((npix, 4))
        for pix in range(npix):
            state[pix, 0] = first_sample[ch]
            state[pix, 1] = np.exp(c * start_u[ch, pix])
            state[pix, 2] = 0.0
        sample = first_sample[ch]  # first sample at or after the current event
        for i in range(bounds[ch], bounds[ch + 1]):
            scaled = 2 * n_samples * (t[i] - start)
            while sample < n_samples and (2 * sample + 1) * period < scaled:
                sample += 1
            pix = np.int64(y[i]) * width + np.int64(x[i])
            if sample > state[pix, 0]:
                state[pix, 2] += (sample - state[pix, 0]) * state[pix, 1]
                state[pix, 0] = sample
            state[pix, 1] *= factor_on if p[i] > 0 else factor_off
        end_sample = first_sample[ch + 1]
        for pix in range(npix):
            partial[ch, pix] = state[pix, 2] + (end_sample - state[pix, 0]) * state[pix, 1]
    for pix in nb.prange(npix):
        total = 0.0
        for ch in range(n_chunks):
            total += partial[ch, pix]
        out[pix] = total / n_samples


def _edi_cpu(t, x, y, p, c, start, end, n_samples, height, width, tau2) -> np.ndarray:
    lo, hi = (int(i) for i in np.searchsorted(t, [start, end], side="left"))
    # Events at or before tau end at ``mid``; it is made a chunk boundary so U(tau) is a sum of chunks.
    mid = lo + int(np.searchsorted(t[lo:hi], tau2 // 2, side="right"))
    n = hi - lo
    n_threads = int(max(1, min(nb.get_num_threads(), n // _MIN_EVENTS_PER_CHUNK)))
    bounds = np.unique(np.append(lo + (n * np.arange(n_threads + 1)) // n_threads, mid)).astype(np.int64)
    if len(bounds) == 1:  # no events in the exposure: one empty chunk owns all samples
        bounds = np.array([lo, lo], np.int64)
    npix = height * width
    sums = np.zeros((len(bounds) - 1, npix), np.int32)
    bad = np.full(len(bounds) - 1, -1, np.int64)
    _chunk_sums(t, x, y, p, bounds, width, height, sums, bad)
    if (bad >= 0).any():
        i = int(bad[bad >= 0].min())
        if i > lo and t[i] < t[i - 1] and x[i] < width and y[i] < height and abs(int(p[i])) == 1:
            raise ValueError(f"event {i}: t={int(t[i])} is before the previous event's t={int(t[i - 1])}; unsorted")
        raise_first_invalid(None, x, y, p, i, height, width)
    before = np.concatenate([np.zeros((1, npix), np.int32), np.cumsum(sums, axis=0, dtype=np.int32)])
    u_tau = before[int(np.searchsorted(bounds, mid))]
    start_u = before[:-1] - u_tau
    period = end - start
    inner = [_first_sample_at_or_after(int(t[b]) - start, n_samples, period) for b in bounds[1:-1]]
    first_sample = np.array([0, *inner, n_samples], np.int64)
    out = np.empty(npix, np.float32)
    _edi_walk(t, x, y, p, bounds, first_sample, start_u, start, period, n_samples, c, width, out)
    return out.reshape(height, width)


def edi_integral(
    t: Any,
    x: Any,
    y: Any,
    p: Any,
    c: float,
    exposure_start: int,
    exposure_end: int,
    n_samples: int,
    height: int,
    width: int,
    t_ref: int | None = None,
    device: str | None = None,
) -> Any:
    """EDI denominator E(tau): float32 (height, width); the sharp frame at tau is ``blurry / E``.

    ``t`` int64 µs sorted, ``x``/``y`` uint16, ``p`` int8 ±1 (N,); events outside
    ``[exposure_start, exposure_end)`` are ignored. ``c`` is the contrast threshold (log intensity
    per event), ``n_samples`` the number of midpoint-rule sample times over the exposure, ``t_ref``
    the reference time tau (default: the exposure midpoint, may be fractional), within the
    exposure. ``device``: None follows the inputs (CUDA device arrays in, device array out), or
    "cpu"/"cuda".
    """
    if not np.isfinite(c) or c <= 0:
        raise ValueError(f"c: expected a positive contrast threshold, got {c!r}")
    exposure_start, exposure_end = int(exposure_start), int(exposure_end)
    if exposure_end <= exposure_start:
        raise ValueError(f"exposure: end {exposure_end} must be after start {exposure_start} (µs)")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples: expected an integer >= 1, got {n_samples!r}")
    # tau is handled doubled so that the default midpoint stays exact in integers.
    tau2 = exposure_start + exposure_end if t_ref is None else 2 * int(t_ref)
    if not 2 * exposure_start <= tau2 <= 2 * exposure_end:
        raise ValueError(f"t_ref={t_ref} must lie within the exposure [{exposure_start}, {exposure_end}]")
    height, width = check_sensor(height, width)
    gpu, (t, x, y, p) = resolve_device(device, t, x, y, p)
    check_event_arrays(t=t, x=x, y=y, p=p)
    if gpu is not None:
        return gpu.edi_integral(t, x, y, p, float(c), exposure_start, exposure_end, int(n_samples), height, width, tau2)
    return _edi_cpu(t, x, y, p, float(c), exposure_start, exposure_end, int(n_samples), height, width, tau2)
