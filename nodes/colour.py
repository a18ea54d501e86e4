"""Colour for the gray video models: luma/chroma conversion and the gray-clip test.

The shipped HiFI and DDS networks are gray: they were trained on luma made with :data:`LUMA`
(``tools/dataset.py``'s weights, Rec. 709 luminance). Colour clips run the network on that same
luma, so it sees what it was trained on, and carry the chroma by a simple method (each node says
which, measured in ``benchmarks/RESULTS.md``, "Colour"). The chroma is the full-range YCbCr
difference pair built on the same weights (Cb = (B − Y) / (2 (1 − k_b)) + ½, likewise Cr with
k_r), so the conversion is exact both ways and a neutral pixel has Cb = Cr = ½.
"""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.2125, 0.7154, 0.0721], np.float32)  # k_r, k_g, k_b: the training data's luma
_CB_SCALE = 2.0 * (1.0 - float(LUMA[2]))
_CR_SCALE = 2.0 * (1.0 - float(LUMA[0]))
GRAY_TOLERANCE = 2.0 / 255.0  # an RGB frame whose channels differ by no more than this is gray (codec rounding)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """float (..., 3) RGB in [0, 1] -> float32 (..., 3) Y, Cb, Cr (Y in [0, 1], Cb and Cr centred on ½)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_ycbcr: expected (..., 3) colour, got shape {rgb.shape}")
    y = rgb @ LUMA
    return np.stack([y, (rgb[..., 2] - y) / _CB_SCALE + 0.5, (rgb[..., 0] - y) / _CR_SCALE + 0.5], axis=-1)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rgb_to_ycbcr`: float32 (..., 3) RGB, clipped to [0, 1]."""
    ycbcr = np.asarray(ycbcr, dtype=np.float32)
    if ycbcr.shape[-1] != 3:
        raise ValueError(f"ycbcr_to_rgb: expected (..., 3) Y, Cb, Cr, got shape {ycbcr.shape}")
    y = ycbcr[..., 0]
    red = y + _CR_SCALE * (ycbcr[..., 2] - 0.5)
    blue = y + _CB_SCALE * (ycbcr[..., 1] - 0.5)
    green = (y - LUMA[0] * red - LUMA[2] * blue) / LUMA[1]
    return np.clip(np.stack([red, green, blue], axis=-1), 0.0, 1.0)


def unit_image(image: np.ndarray) -> np.ndarray:
    """A frame image as float32 in [0, 1] (uint8 scaled by 1/255), (H, W) or (H, W, 3) as given."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"frame image must be (H, W) gray or (H, W, 3) colour, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32, copy=False)


def is_gray(image: np.ndarray) -> bool:
    """Whether a frame (H, W) or (H, W, 3) in [0, 1] carries no colour: a gray video decoded as RGB has
    equal channels up to the codec's rounding (:data:`GRAY_TOLERANCE`)."""
    image = np.asarray(image)
    if image.ndim == 2:
        return True
    spread = np.max(image, axis=-1) - np.min(image, axis=-1)
    return float(spread.max()) <= GRAY_TOLERANCE * (255.0 if image.dtype == np.uint8 else 1.0)


def gray_unit(image: np.ndarray) -> np.ndarray:
    """A frame image as float32 (H, W) in [0, 1]: uint8 is scaled by 1/255, colour becomes luma (:data:`LUMA`)."""
    image = unit_image(image)
    return image @ LUMA if image.ndim == 3 else image


def colour_image(image: np.ndarray) -> np.ndarray:
    """A frame as float32 (H, W, 3) RGB in [0, 1]: gray is repeated into the three channels."""
    image = unit_image(image)
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
