"""Image and video quality metrics, and a timing helper, for evaluation and benchmarks.

- :func:`psnr`: peak signal-to-noise ratio in dB, ``10 log10(data_range**2 / MSE)`` over every
  element (``inf`` for identical inputs), as ``skimage.metrics.peak_signal_noise_ratio``.
- :func:`ssim`: mean structural similarity with an 11x11 Gaussian window (sigma 1.5, truncated
  at 3.5 sigma), population (not sample) covariances, K1 = 0.01, K2 = 0.03, averaged over the
  pixels whose window lies fully inside the image, then over channels. This equals
  ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=...)``: skimage filters with reflect padding and
  then crops the 5-pixel border, so only "valid" windows count, which is what is computed here.
- :func:`temporal_consistency_error`: flicker of a restored/predicted sequence against the
  ground truth, without optical flow (defined below).
- :class:`Stopwatch`: wall-clock timing with summary statistics.

Inputs are numpy arrays of any real dtype; everything is computed in float64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def _pair(a: np.ndarray, b: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{name}: the two images must have the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: empty images")
    return a, b


def psnr(reference: np.ndarray, estimate: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB of ``estimate`` against ``reference`` (same shape, any layout); ``inf`` if identical."""
    reference, estimate = _pair(reference, estimate, "psnr")
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be > 0, got {data_range!r}")
    mse = float(np.mean((reference - estimate) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def _gaussian_window() -> np.ndarray:
    """The normalised 1-D Gaussian taps scipy.ndimage.gaussian_filter uses for sigma 1.5, truncate 3.5."""
    radius = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / _SSIM_SIGMA) ** 2)
    return taps / taps.sum()


def _filter_valid(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable correlation of the last two axes with ``taps``, keeping only full windows."""
    k = len(taps)
    rows = image.shape[-2] - k + 1
    cols = image.shape[-1] - k + 1
    out = np.zeros((*image.shape[:-2], rows, image.shape[-1]))
    for i, w in enumerate(taps):
        out += w * image[..., i : i + rows, :]
    result = np.zeros((*image.shape[:-2], rows, cols))
    for i, w in enumerate(taps):
        result += w * out[..., :, i : i + cols]
    return result


def ssim(
    reference: np.ndarray, estimate: np.ndarray, data_range: float = 1.0, channel_axis: int | None = None
) -> float:
    """Mean SSIM (Gaussian window, see the module docstring) of two images of equal shape.

    ``reference``/``estimate``: (H, W), or with ``channel_axis`` naming the channel axis (e.g.
    (C, H, W) with ``channel_axis=0``, (H, W, C) with ``-1``), in which case the result is the mean
    over channels. H and W must be at least 11 (the window size).
    """
    reference, estimate = _pair(reference, estimate, "ssim")
    if not data_range > 0:
        raise ValueError(f"ssim: data_range must be > 0, got {data_range!r}")
    expected_ndim = 2 if channel_axis is None else 3
    if reference.ndim != expected_ndim:
        raise ValueError(
            f"ssim: expected {expected_ndim}-D images (channel_axis={channel_axis}), got shape {reference.shape}"
        )
    if channel_axis is not None:
        reference = np.moveaxis(reference, channel_axis, 0)
        estimate = np.moveaxis(estimate, channel_axis, 0)
    taps = _gaussian_window()
    if min(reference.shape[-2:]) < len(taps):
        raise ValueError(f"ssim: images must be at least {len(taps)}x{len(taps)}, got {reference.shape}")
    mu_x = _filter_valid(reference, taps)
    mu_y = _filter_valid(estimate, taps)
    var_x = _filter_valid(reference * reference, taps) - mu_x * mu_x
    var_y = _filter_valid(estimate * estimate, taps) - mu_y * mu_y
    cov_xy = _filter_valid(reference * estimate, taps) - mu_x * mu_y
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    ssim_map = numerator / denominator
    if channel_axis is None:
        return float(ssim_map.mean())
    return float(np.mean([channel.mean() for channel in ssim_map]))


def temporal_consistency_error(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Flicker error of a sequence: mean |(E[t] - E[t-1]) - (R[t] - R[t-1])| over t = 1..T-1 and pixels.

    ``reference``/``estimate``: (T, ...) sequences with T >= 2, intensities in the same units as
    the result (e.g. [0, 1]). A difference of temporal differences: 0 when the estimate changes
    from frame to frame exactly as the ground truth does (a constant offset costs nothing), large
    when it flickers or freezes. It needs no optical flow, so it cannot be fooled by a bad flow
    estimate, at the price of also counting per-frame errors that change over time.
    """
    reference, estimate = _pair(reference, estimate, "temporal_consistency_error")
    if reference.ndim < 2 or reference.shape[0] < 2:
        raise ValueError(f"temporal_consistency_error: need (T, ...) with T >= 2, got shape {reference.shape}")
    return float(np.mean(np.abs(np.diff(estimate, axis=0) - np.diff(reference, axis=0))))


@dataclass(frozen=True)
class Timing:
    """Summary of wall-clock durations in milliseconds (``n`` measurements)."""

    n: int
    mean_ms: float
    std_ms: float
    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class Stopwatch:
    """Accumulates durations: ``with stopwatch: work()`` records one measurement (perf_counter)."""

    def __init__(self) -> None:
        self.durations_s: list[float] = []
        self._start: float | None = None

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._start is not None
        self.durations_s.append(time.perf_counter() - self._start)
        self._start = None

    def summary(self) -> Timing:
        """Statistics over the recorded durations; raises if nothing was recorded."""
        if not self.durations_s:
            raise ValueError("Stopwatch.summary: no measurement recorded")
        ms = np.asarray(self.durations_s) * 1e3
        return Timing(
            n=len(ms),
            mean_ms=float(ms.mean()),
            std_ms=float(ms.std()),
            median_ms=float(np.median(ms)),
            p90_ms=float(np.percentile(ms, 90)),
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
        )

