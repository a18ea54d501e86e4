"""Visualisation helpers shared by the sinks: frames, events and voxel grids as 8-bit RGB images.

Colours: events and voxel grids are drawn on a white background, positive (ON, brighter) in red and
negative (OFF, darker) in blue, the colour's strength proportional to the net value at the pixel
(clipped at ``scale``). Every function returns a C-contiguous uint8 (H, W, 3) array.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from evpipe.kernels import event_frame
from evpipe.runtime.events import Events


def image_to_rgb(image: np.ndarray) -> np.ndarray:
    """A frame image as uint8 (H, W, 3): uint8 is used as is, floats are taken as [0, 1] (clipped).

    ``image``: (H, W) gray or (H, W, 3) RGB, uint8 or float.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise ValueError(f"image must be (H, W) gray or (H, W, 3) RGB, got shape {image.shape}")


def signed_to_rgb(values: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Signed float (H, W) -> uint8 (H, W, 3): white background, positive red, negative blue.

    ``scale``: the magnitude drawn at full colour; None uses the 99th percentile of the non-zero
    magnitudes (at least 1), so a few hot pixels do not wash out the rest.
    """
    values = np.asarray(values, np.float32)
    if scale is None:
        magnitudes = np.abs(values[values != 0])
        scale = max(float(np.percentile(magnitudes, 99)), 1.0) if magnitudes.size else 1.0
    strength = np.clip(np.abs(values) / scale, 0.0, 1.0)
    fade = np.round(255.0 * (1.0 - strength)).astype(np.uint8)
    rgb = np.full((*values.shape, 3), 255, np.uint8)
    positive, negative = values > 0, values < 0
    rgb[positive, 1] = fade[positive]  # red: keep R, fade G and B
    rgb[positive, 2] = fade[positive]
    rgb[negative, 0] = fade[negative]  # blue: keep B, fade R and G
    rgb[negative, 1] = fade[negative]
    return rgb


def events_to_rgb(events: Events, height: int, width: int, scale: float | None = None) -> np.ndarray:
    """Net event count per pixel (ON minus OFF) drawn red/blue: uint8 (height, width, 3)."""
    counts = event_frame(events.x, events.y, events.p, height, width, device="cpu")
    return signed_to_rgb(counts[1] - counts[0], scale)


def voxel_to_rgb(voxel: np.ndarray, scale: float | None = None) -> np.ndarray:
    """A voxel grid float32 (bins, H, W) summed over its bins, drawn red/blue: uint8 (H, W, 3)."""
    return signed_to_rgb(np.asarray(voxel, np.float32).sum(axis=0), scale)


def label(rgb: np.ndarray, text: str) -> np.ndarray:
    """``rgb`` with ``text`` written in its top-left corner (black on a white box, PIL's default font)."""
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    _, _, right, bottom = draw.textbbox((2, 1), text)
    draw.rectangle((0, 0, right + 2, bottom + 1), fill=(255, 255, 255))
    draw.text((2, 1), text, fill=(0, 0, 0))
    return np.asarray(image)


def resize_to_height(rgb: np.ndarray, height: int) -> np.ndarray:
    """Scale ``rgb`` to ``height`` rows keeping its aspect ratio (nearest neighbour when enlarging by a whole
    factor, so pixels stay crisp; bilinear otherwise)."""
    h, w = rgb.shape[:2]
    if h == height:
        return rgb
    width = max(1, round(w * height / h))
    resample = Image.Resampling.NEAREST if height % h == 0 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize((width, height), resample))


def side_by_side(panels: list[np.ndarray], height: int) -> np.ndarray:
    """Panels (each uint8 (h, w, 3)) scaled to ``height`` and placed left to right, padded with white to
    even width and height (H.264 in yuv420p needs both even)."""
    row = np.concatenate([resize_to_height(p, height) for p in panels], axis=1)
    pad_h, pad_w = row.shape[0] % 2, row.shape[1] % 2
    if pad_h or pad_w:
        row = np.pad(row, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=255)
    return np.ascontiguousarray(row)
