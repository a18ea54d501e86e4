"""Temporal boundaries of a PSF convolution (numpy only, shared by the operator and the benchmark harness).

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
