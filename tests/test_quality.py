"""Quality metrics against scikit-image on the same arrays; flicker error and timing helper."""

from __future__ import annotations

import time

import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from evpipe.kernels.quality import Stopwatch, psnr, ssim, temporal_consistency_error


def _skimage_ssim(a: np.ndarray, b: np.ndarray, channel_axis: int | None = None) -> float:
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=channel_axis
    )


@pytest.fixture(scope="module")
def photo_pair() -> tuple[np.ndarray, np.ndarray]:
    """A real photograph and a degraded copy (shifted, noisy, contrast changed), float64 in [0, 1]."""
    image = resize(data.camera() / 255.0, (96, 120), anti_aliasing=True)
    rng = np.random.default_rng(0)
    degraded = np.clip(0.8 * np.roll(image, (1, 2), axis=(0, 1)) + 0.05 + rng.normal(0, 0.03, image.shape), 0, 1)
    return image, degraded


def test_psnr_matches_skimage(photo_pair):
    image, degraded = photo_pair
    assert psnr(image, degraded) == pytest.approx(peak_signal_noise_ratio(image, degraded, data_range=1.0), rel=1e-12)
    assert psnr(image, image) == float("inf")
    assert psnr(image * 255, degraded * 255, data_range=255) == pytest.approx(psnr(image, degraded), rel=1e-12)


def test_ssim_matches_skimage_gray(photo_pair):
    image, degraded = photo_pair
    ours = ssim(image, degraded)
    assert ours == pytest.approx(_skimage_ssim(image, degraded), abs=1e-10)
    assert 0.2 < ours < 0.95  # a real difference, not a trivial 0 or 1
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    # float32 inputs give the same value (computed in float64)
    assert ssim(image.astype(np.float32), degraded.astype(np.float32)) == pytest.approx(
        _skimage_ssim(image.astype(np.float32), degraded.astype(np.float32)), abs=1e-6
    )


@pytest.mark.parametrize("shape", [(11, 11), (13, 40), (64, 17)])
def test_ssim_matches_skimage_small_and_random(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.random(shape)
    b = np.clip(a + rng.normal(0, 0.2, shape), 0, 1)
    assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=1e-10)


def test_ssim_matches_skimage_colour():
    image = resize(data.astronaut() / 255.0, (80, 72), anti_aliasing=True)
    rng = np.random.default_rng(1)
    degraded = np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1)
    expected = _skimage_ssim(image, degraded, channel_axis=-1)
    assert ssim(image, degraded, channel_axis=-1) == pytest.approx(expected, abs=1e-10)
    chw = (np.moveaxis(image, -1, 0), np.moveaxis(degraded, -1, 0))
    assert ssim(*chw, channel_axis=0) == pytest.approx(expected, abs=1e-10)


def test_metrics_reject_bad_input(photo_pair):
    image, degraded = photo_pair
    with pytest.raises(ValueError, match="same shape"):
        psnr(image, degraded[:-1])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(image[:10, :10], degraded[:10, :10])
    with pytest.raises(ValueError, match="3-D"):
        ssim(image, degraded, channel_axis=0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(image, degraded, data_range=0)


def test_temporal_consistency_error():
    rng = np.random.default_rng(2)
    clip = rng.random((5, 16, 16))
    assert temporal_consistency_error(clip, clip) == 0.0
    # a constant offset does not flicker
    assert temporal_consistency_error(clip, clip + 0.1) == pytest.approx(0.0, abs=1e-12)
    # a frozen estimate misses every change: error = mean |R[t] - R[t-1]|
    frozen = np.repeat(clip[:1], 5, axis=0)
    assert temporal_consistency_error(clip, frozen) == pytest.approx(np.abs(np.diff(clip, axis=0)).mean())
    # alternating +-d flicker on a static scene costs 2d per step
    static = np.full((4, 8, 8), 0.5)
    flicker = static + 0.05 * np.array([1, -1, 1, -1])[:, None, None]
    assert temporal_consistency_error(static, flicker) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="T >= 2"):
        temporal_consistency_error(clip[:1], clip[:1])


def test_stopwatch():
    stopwatch = Stopwatch()
    for _ in range(3):
        with stopwatch:
            time.sleep(0.002)
    timing = stopwatch.summary()
    assert timing.n == 3
    assert 1.5 < timing.min_ms <= timing.median_ms <= timing.max_ms
    assert set(timing.as_dict()) >= {"mean_ms", "p90_ms"}
    with pytest.raises(ValueError, match="no measurement"):
        Stopwatch().summary()
