"""EDI (event-based double integral), Numba on the CPU, Numba-CUDA on the GPU.

For a blurry frame exposed over [start, end) (T = end - start) and a reference time tau,

    E(tau) = (1/T) ∫ exp(c · ∫_tau^t e(s) ds) dt,    sharp(tau) = blurry / E(tau),

with e(s) a pixel's events as signed impulses. The outer integral is the midpoint rule over K
sample times ``s_k = start + (k + 1/2) T / K``. With ``U(s)`` a pixel's sum of polarities of events
at or before ``s``, the inner integral is ``U(s) - U(tau)``, an integer, so

    E = (1/K) Σ_k exp(c · (U(s_k) - U(tau))).

Event i counts in sample k exactly when ``s_k >= t_i``, i.e. ``k >= j_i = ceil((2K d_i - T) / (2T))``
with ``d_i = t_i - start``, computed in integers: no float ties between events and samples.

CPU (events sorted by time): E is exactly 1 at a pixel without events in the exposure, so the
kernel works on the touched pixels only. One pass checks the events and numbers the pixels they
touch (when events outnumber pixels, every pixel is numbered instead): a DAVIS346 frame's 0.5 ms
exposure touches a few of its 90k pixels, and per-pixel state over the whole sensor cost 4 ms per
frame there against 0.05 ms now (a million events: 10 ms then, 12 ms now). The exposure's events are
split into time-ordered chunks (one boundary at tau); pass 1 sums polarities per pixel and chunk,
which gives every chunk's starting ``U - U(tau)``; pass 2 walks each chunk in time order keeping
``exp(c (U - U(tau)))`` per pixel, adding it once per run of samples between a pixel's events.
Memory is O(touched pixels) per thread, whatever K.

GPU: one thread per event adds its polarity to an integer histogram over (pixel, first sample at or
after it), then one thread per pixel sums K exponentials; events need not be sorted there.
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


@nb.njit(cache=True)
def _touched_pixels(t, x, y, p, lo, hi, width, height, slot):
    """Number the pixels that events lo..hi-1 touch.

    Returns (index of the first invalid event or -1, each event's pixel number (hi - lo,) int64, the
    numbered pixels' flat indices). Invalid: outside the sensor, polarity not ±1, or before the
    previous event. ``slot`` (H*W,) int64 all -1 on entry numbers pixels in order of first touch; an
    empty ``slot`` numbers every pixel of the sensor (cheaper when events outnumber pixels).
    """
    compact = np.empty(hi - lo, np.int64)
    whole_sensor = len(slot) == 0
    touched = np.arange(width * height) if whole_sensor else np.empty(hi - lo, np.int64)
    count = 0
    for i in range(lo, hi):
        xi = np.int64(x[i])
        yi = np.int64(y[i])
        pi = np.int64(p[i])
        if xi >= width or yi >= height or (pi != 1 and pi != -1) or (i > lo and t[i] < t[i - 1]):
            return i, compact, touched[:0]
        pix = yi * width + xi
        if whole_sensor:
            compact[i - lo] = pix
            continue
        if slot[pix] < 0:
            slot[pix] = count
            touched[count] = pix
            count += 1
        compact[i - lo] = slot[pix]
    return -1, compact, touched if whole_sensor else touched[:count]


@nb.njit(parallel=True, cache=True)
def _chunk_sums(pix, p, bounds, sums):
    """Per chunk, per (touched) pixel sum of polarities into ``sums`` (chunks, pixels) int32."""
    for c in nb.prange(len(bounds) - 1):
        chunk = sums[c]
        for i in range(bounds[c], bounds[c + 1]):
            chunk[pix[i]] += np.int32(p[i])


@nb.njit(parallel=True, cache=True, fastmath=True)
def _edi_walk(t, pix_of, p, bounds, first_sample, start_u, start, period, n_samples, c, out):
    """E per (touched) pixel into ``out`` (pixels,) float32; ``pix_of`` is each event's pixel.

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
            pix = pix_of[i]
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
    npix = height * width
    slot = np.full(npix if hi - lo < npix else 0, -1, np.int64)
    bad, pix, touched = _touched_pixels(t, x, y, p, lo, hi, width, height, slot)
    if bad >= 0:
        if bad > lo and t[bad] < t[bad - 1] and x[bad] < width and y[bad] < height and abs(int(p[bad])) == 1:
            raise ValueError(f"event {bad}: t={int(t[bad])} is before the previous event's t={int(t[bad - 1])}; "
                             "unsorted")
        raise_first_invalid(None, x, y, p, bad, height, width)
    out = np.ones(npix, np.float32)
    if hi == lo:
        return out.reshape(height, width)
    t, p = t[lo:hi], p[lo:hi]
    n = hi - lo
    # Events at or before tau end at ``mid``; it is made a chunk boundary so U(tau) is a sum of chunks.
    mid = int(np.searchsorted(t, tau2 // 2, side="right"))
    n_threads = int(max(1, min(nb.get_num_threads(), n // _MIN_EVENTS_PER_CHUNK)))
    bounds = np.unique(np.append((n * np.arange(n_threads + 1)) // n_threads, mid)).astype(np.int64)
    sums = np.zeros((len(bounds) - 1, len(touched)), np.int32)
    _chunk_sums(pix, p, bounds, sums)
    before = np.concatenate([np.zeros((1, len(touched)), np.int32), np.cumsum(sums, axis=0, dtype=np.int32)])
    u_tau = before[int(np.searchsorted(bounds, mid))]
    start_u = before[:-1] - u_tau
    period = end - start
    inner = [_first_sample_at_or_after(int(t[b]) - start, n_samples, period) for b in bounds[1:-1]]
    first_sample = np.array([0, *inner, n_samples], np.int64)
    values = np.empty(len(touched), np.float32)
    _edi_walk(t, pix, p, bounds, first_sample, start_u, start, period, n_samples, c, values)
    out[touched] = values
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


def warm_up() -> None:
    """Load every CPU code path of `edi_integral` for the `Events` dtypes (from Numba's on-disk cache, or compile).

    A path's first call otherwise pays this mid-stream: measured on the 2-core machine, about 0.2 s at the
    first frame a live deblur graph deblurred, enough to hold back the five frames behind it.
    """
    t, x, y, p = np.zeros(1, np.int64), np.zeros(1, np.uint16), np.zeros(1, np.uint16), np.ones(1, np.int8)
    _edi_cpu(t, x, y, p, 0.2, 0, 2, 2, 1, 1, 2)  # events outnumber pixels: every pixel numbered
    _edi_cpu(t, x, y, p, 0.2, 0, 2, 2, 1, 2, 2)  # the touched pixels numbered
