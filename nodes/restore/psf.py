"""Temporal PSFs, their boundaries and the clip convolution (numpy only, shared by the operator, the node and
the benchmark harness).

A temporal PSF of width w blurs frame t with frames t − w // 2 … t + w // 2; near a clip's ends some of
those lie outside it. ``circular`` wraps around the clip (the boundary of the DDS paper's released
code); ``replicate`` repeats the end frames.
"""

from __future__ import annotations

import numpy as np

BOUNDARIES = ("circular", "replicate")
DEFAULT_BOUNDARY = "circular"  # the paper's; every operator, the harness and the node start from it


def boundary_index(index: np.ndarray, length: int, boundary: str) -> np.ndarray:
    """Frame indices (any ints) mapped into a clip of ``length`` frames by ``boundary``."""
    if boundary == "circular":
        return np.mod(index, length)
    if boundary == "replicate":
        return np.clip(index, 0, length - 1)
    raise ValueError(f"temporal boundary {boundary!r}: expected one of {', '.join(BOUNDARIES)}")


def temporal_psf(kind: str) -> np.ndarray:
    """float32 PSF along time: ``uniform7``, ``uniform13`` or ``gaussian1`` (sigma 1 frame, 7 taps)."""
    if kind in ("uniform7", "uniform13"):
        width = int(kind.removeprefix("uniform"))
        return np.full(width, 1.0 / width, np.float32)
    if kind == "gaussian1":
        taps = np.exp(-0.5 * np.arange(-3, 4) ** 2)
        return (taps / taps.sum()).astype(np.float32)
    raise ValueError(f"--degradation {kind!r}: expected uniform7, uniform13 or gaussian1")


def degrade_clip(clip: np.ndarray, psf: np.ndarray, boundary: str = DEFAULT_BOUNDARY) -> np.ndarray:
    """Temporal PSF convolution of a clip (L, ...): ``out[t] = sum_j psf[j] * clip[t + j - w // 2]``, frames
    beyond the clip given by ``boundary``."""
    length, half = len(clip), len(psf) // 2
    out = np.zeros_like(clip, dtype=np.float32)
    for j, weight in enumerate(psf):
        out += weight * clip[boundary_index(np.arange(length) + j - half, length, boundary)]
    return out
