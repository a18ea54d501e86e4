"""ESIM-style event simulator: intensity frames in, events out.

Per pixel the simulator tracks the log intensity ``L = log(I + log_eps)`` (``I`` linear in [0, 1])
and a reference level. Between two frames ``L`` is interpolated linearly in time; each time it
reaches ``reference + C_on`` (ON, p=+1) or ``reference - C_off`` (OFF, p=-1) an event is emitted at
the interpolated crossing time (rounded to the nearest µs, at least 1 µs after the previous frame so
that consecutive steps never share a timestamp) and the reference moves by exactly one
threshold. The thresholds are drawn once per pixel from ``N(c, sigma_c)`` and clipped to >= 0.01.
A crossing less than ``refractory_us`` after the pixel's previous emitted event still moves the
reference but emits nothing. Optional noise events are uniform over pixels, time and polarity.

Everything is deterministic for a seed: pixels are processed in parallel, but the output layout is
fixed by a counting pass, and the final sort by time is stable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba as nb
import numpy as np

from evpipe.runtime.events import Events

# "No previous event" for the refractory check: far enough in the past to never suppress anything.
_NEVER = np.int64(-(2**62))
_MIN_THRESHOLD = 0.01


@nb.njit(cache=True, inline="always")
def _walk_pixel(l0, l1, ref, c_on, c_off, last, t0, t1, refractory, out_t, out_p, offset, write):
    """Crossings of one pixel while L goes linearly from l0 (at t0) to l1 (at t1).

    Returns (events emitted, new reference, new last-event time). Writes the events at
    ``out_t[offset:]``/``out_p[offset:]`` only when ``write`` is true.
    """
    count = 0
    if l1 == l0:
        return count, ref, last
    slope_t = (t1 - t0) / (l1 - l0)  # µs per unit of log intensity
    if l1 > l0:
        level = ref + c_on
        while level <= l1:
            te = max(np.int64(np.floor(t0 + (level - l0) * slope_t + 0.5)), t0 + 1)
            if te - last >= refractory:
                if write:
                    out_t[offset + count] = te
                    out_p[offset + count] = 1
                count += 1
                last = te
            ref = level
            level = ref + c_on
    else:
        level = ref - c_off
        while level >= l1:
            te = max(np.int64(np.floor(t0 + (level - l0) * slope_t + 0.5)), t0 + 1)
            if te - last >= refractory:
                if write:
                    out_t[offset + count] = te
                    out_p[offset + count] = -1
                count += 1
                last = te
            ref = level
            level = ref - c_off
    return count, ref, last


@nb.njit(parallel=True, cache=True)
def _count_events(l_prev, l_new, ref, c_on, c_off, last, t0, t1, refractory):
    """Events each pixel will emit (pass 1 of 2; state is not modified)."""
    n = l_prev.size
    counts = np.empty(n, np.int64)
    dummy_t = np.empty(0, np.int64)
    dummy_p = np.empty(0, np.int8)
    for i in nb.prange(n):
        counts[i] = _walk_pixel(
            l_prev[i],
            l_new[i],
            ref[i],
            c_on[i],
            c_off[i],
            last[i],
            t0,
            t1,
            refractory,
            dummy_t,
            dummy_p,
            0,
            False,
        )[0]
    return counts


@nb.njit(parallel=True, cache=True)
def _emit_events(l_prev, l_new, ref, c_on, c_off, last, t0, t1, refractory, offsets, out_t, out_p, out_pix):
    """Write every pixel's events at its offset and advance ``ref``/``last`` (pass 2 of 2)."""
    for i in nb.prange(l_prev.size):
        count, ref[i], last[i] = _walk_pixel(
            l_prev[i],
            l_new[i],
            ref[i],
            c_on[i],
            c_off[i],
            last[i],
            t0,
            t1,
            refractory,
            out_t,
            out_p,
            offsets[i],
            True,
        )
        for k in range(offsets[i], offsets[i] + count):
            out_pix[k] = i


class EventSimulator:
    """Stateful ESIM-style simulator for a ``height`` x ``width`` sensor.

    ``c_pos``/``c_neg``: mean ON/OFF contrast thresholds (log intensity); ``sigma_c``: their
    per-pixel standard deviation; ``refractory_us``: minimum µs between two events of a pixel;
    ``noise_rate_hz``: uniform noise events per pixel per second; ``log_eps``: offset inside the log
    so black pixels stay finite; ``seed``: seeds the thresholds and the noise.
    """

    def __init__(
        self,
        height: int,
        width: int,
        c_pos: float = 0.2,
        c_neg: float = 0.2,
        sigma_c: float = 0.03,
        refractory_us: int = 0,
        noise_rate_hz: float = 0.0,
        log_eps: float = 1e-3,
        seed: int = 0,
    ) -> None:
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, (int, np.integer)) or not 0 < value <= 65536:
                raise ValueError(f"EventSimulator {name}: expected an integer in [1, 65536], got {value!r}")
        for name, value in (("c_pos", c_pos), ("c_neg", c_neg)):
            if not np.isfinite(value) or value < _MIN_THRESHOLD:
                raise ValueError(f"EventSimulator {name}: expected a threshold >= {_MIN_THRESHOLD}, got {value!r}")
        checks = (
            ("sigma_c", sigma_c, "a finite value >= 0"),
            ("refractory_us", refractory_us, "a value >= 0"),
            ("noise_rate_hz", noise_rate_hz, "a finite value >= 0"),
        )
        for name, value, expectation in checks:
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"EventSimulator {name}: expected {expectation}, got {value!r}")
        if not np.isfinite(log_eps) or log_eps <= 0:
            raise ValueError(f"EventSimulator log_eps: expected a value > 0, got {log_eps!r}")
        self.height, self.width = int(height), int(width)
        self.refractory_us = int(refractory_us)
        self.noise_rate_hz = float(noise_rate_hz)
        self.log_eps = float(log_eps)
        self._rng = np.random.default_rng(seed)
        n = self.height * self.width
        self.c_on = np.maximum(self._rng.normal(c_pos, sigma_c, n), _MIN_THRESHOLD)
        self.c_off = np.maximum(self._rng.normal(c_neg, sigma_c, n), _MIN_THRESHOLD)
        self._log = np.empty(0)
        self._ref = np.empty(0)
        self._last = np.empty(0, np.int64)
        self._t: int | None = None

    def log_intensity(self, frame: np.ndarray) -> np.ndarray:
        """``log(I + log_eps)`` as float64 (H*W,) for a (H, W) uint8 frame or float frame in [0, 1]."""
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width):
            raise ValueError(
                f"frame: expected shape ({self.height}, {self.width}) (gray), got {frame.shape} {frame.dtype}"
            )
        if frame.dtype == np.uint8:
            intensity = frame.astype(np.float64) / 255.0
        elif np.issubdtype(frame.dtype, np.floating):
            intensity = frame.astype(np.float64)
            if not np.all((intensity >= 0.0) & (intensity <= 1.0)):
                bad = intensity[~((intensity >= 0.0) & (intensity <= 1.0))][0]
                raise ValueError(f"frame: float intensities must lie in [0, 1] (linear), found {bad}")
        else:
            raise ValueError(f"frame: expected uint8 or float in [0, 1], got {frame.dtype}")
        return np.log(intensity.ravel() + self.log_eps)

    def reset(self, frame: np.ndarray, t_us: int) -> None:
        """Start from ``frame`` at ``t_us``: the reference becomes the frame's log intensity."""
        self._log = self.log_intensity(frame)
        self._ref = self._log.copy()
        self._last = np.full(self._log.size, _NEVER, np.int64)
        self._t = int(t_us)

    def step(self, frame: np.ndarray, t_us: int) -> Events:
        """Events in ``(t_prev, t_us]`` as the scene goes linearly to ``frame``; sorted by ``t``."""
        if self._t is None:
            raise ValueError("EventSimulator.step: call reset(frame, t_us) first")
        t_us = int(t_us)
        if t_us <= self._t:
            raise ValueError(f"EventSimulator.step: t_us={t_us} must be after the previous frame time {self._t}")
        l_new = self.log_intensity(frame)
        args = (
            self._log,
            l_new,
            self._ref,
            self.c_on,
            self.c_off,
            self._last,
            self._t,
            t_us,
            self.refractory_us,
        )
        counts = _count_events(*args)
        offsets = np.zeros(len(counts), np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        total = int(offsets[-1] + counts[-1])
        t = np.empty(total, np.int64)
        p = np.empty(total, np.int8)
        pixel = np.empty(total, np.int64)
        _emit_events(*args, offsets, t, p, pixel)
        t, pixel, p = self._add_noise(t, pixel, p, t_us)
        order = np.argsort(t, kind="stable")
        y, x = np.divmod(pixel[order], self.width)
        self._log = l_new
        self._t = t_us
        return Events(t[order], x.astype(np.uint16), y.astype(np.uint16), p[order])

    def _add_noise(
        self, t: np.ndarray, pixel: np.ndarray, p: np.ndarray, t_us: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Append uniform noise events in ``(t_prev, t_us]`` at ``noise_rate_hz`` per pixel."""
        if self.noise_rate_hz == 0.0:
            return t, pixel, p
        assert self._t is not None
        expected = self.noise_rate_hz * self.height * self.width * (t_us - self._t) * 1e-6
        n = int(self._rng.poisson(expected))
        noise_t = self._rng.integers(self._t + 1, t_us + 1, n, dtype=np.int64)
        noise_pixel = self._rng.integers(0, self.height * self.width, n, dtype=np.int64)
        noise_p = np.where(self._rng.random(n) < 0.5, -1, 1).astype(np.int8)
        return (
            np.concatenate([t, noise_t]),
            np.concatenate([pixel, noise_pixel]),
            np.concatenate([p, noise_p]),
        )


def simulate_events(
    frames: Sequence[np.ndarray] | np.ndarray,
    timestamps: Sequence[int] | np.ndarray,
    c_pos: float = 0.2,
    c_neg: float = 0.2,
    sigma_c: float = 0.03,
    refractory_us: int = 0,
    noise_rate_hz: float = 0.0,
    seed: int = 0,
) -> Events:
    """Events for a clip: ``frames`` (N, H, W) uint8 or float in [0, 1], ``timestamps`` (N,) µs increasing.

    Equivalent to ``EventSimulator.reset(frames[0], timestamps[0])`` then ``step`` over the rest.
    """
    if len(frames) != len(timestamps):
        raise ValueError(f"simulate_events: {len(frames)} frames but {len(timestamps)} timestamps")
    if len(frames) == 0:
        raise ValueError("simulate_events: need at least one frame")
    if np.ndim(frames[0]) != 2:
        raise ValueError(f"simulate_events: frames must be gray (H, W) images, got shape {np.shape(frames[0])}")
    height, width = np.shape(frames[0])
    simulator = EventSimulator(height, width, c_pos, c_neg, sigma_c, refractory_us, noise_rate_hz, seed=seed)
    simulator.reset(frames[0], timestamps[0])
    packets = [simulator.step(frame, t) for frame, t in zip(frames[1:], timestamps[1:], strict=True)]
    return Events.concatenate(packets)
