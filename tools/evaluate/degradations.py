"""Restore degradations: the spatial part of a degradation name and how a clip is measured (noise, bits)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evpipe.nodes.restore.psf import BOUNDARIES, DEFAULT_BOUNDARY, temporal_psf

SPATIAL_DEGRADATIONS = ("blur", "sr4", "inpaint")


def parse_degradation(name: str) -> tuple[np.ndarray, str | None]:
    """(temporal PSF, spatial kind or None) of a restore degradation such as ``uniform7`` or ``uniform7+sr4``."""
    temporal, plus, spatial = name.partition("+")
    psf = temporal_psf(temporal)
    if plus and spatial not in SPATIAL_DEGRADATIONS:
        raise ValueError(f"--degradation {name!r}: the spatial part must be one of {', '.join(SPATIAL_DEGRADATIONS)}")
    return psf, spatial or None


def degrade_spatially(clip: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """A clip (L, H, W[, 3]) through ``spatial_operator(kind, ..., seed)``; float32, (L, h, w[, 3])."""
    import torch

    from evpipe.nodes.restore.operators import spatial_operator

    tensor = torch.from_numpy(clip[:, None] if clip.ndim == 3 else np.moveaxis(clip, -1, 1).copy())
    out = spatial_operator(kind, tuple(tensor.shape), seed).forward(tensor).numpy()
    return out[:, 0] if clip.ndim == 3 else np.ascontiguousarray(np.moveaxis(out, 1, -1))


@dataclass(frozen=True)
class Measurement:
    """How a restore case's degraded clip is measured: the temporal PSF with ``boundary`` edges
    (:func:`degrade_clip`), ``noise`` std of additive Gaussian noise, then, when ``bits`` is set,
    clipping to [0, 1] and rounding to ``2**bits - 1`` levels."""

    noise: float = 0.0
    bits: int | None = None
    boundary: str = DEFAULT_BOUNDARY

    def __post_init__(self) -> None:
        if not self.noise >= 0:
            raise ValueError(f"Measurement.noise must be >= 0, got {self.noise!r}")
        if self.bits is not None and not 1 <= self.bits <= 16:
            raise ValueError(f"Measurement.bits must be in 1..16, got {self.bits!r}")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"Measurement.boundary must be one of {', '.join(BOUNDARIES)}, got {self.boundary!r}")

    def apply(self, degraded: np.ndarray, seed: int) -> np.ndarray:
        """The measured clip (float32, ``degraded``'s shape); the noise is seeded by ``seed``."""
        out = np.asarray(degraded, dtype=np.float32)
        if self.noise:
            out = out + (self.noise * np.random.default_rng(seed).standard_normal(out.shape)).astype(np.float32)
        if self.bits is not None:
            levels = 2**self.bits - 1
            out = (np.round(np.clip(out, 0.0, 1.0) * levels) / levels).astype(np.float32)
        return out


DEFAULT_MEASUREMENT = Measurement()  # the PSF alone, in float: no noise, no quantisation
