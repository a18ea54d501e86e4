"""Turning stream messages into RGB pictures for the viewer, and pictures into JPEG bytes.

Colours follow the usual event-camera convention on a white background: ON events (p = +1) red,
OFF events (p = -1) blue, both at one pixel dark purple. Voxel grids use the same diverging map
(positive red, negative blue, zero white), one strip per time bin, side by side.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from evpipe.kernels.frames import event_frame
from evpipe.runtime.wire import Message

BIN_GAP_PX = 2  # grey gutter between the voxel bins of a strip
GUTTER_GREY = 160


def polarity_colours(counts: np.ndarray, saturation: float = 2.0) -> np.ndarray:
    """Per-polarity event counts float (2, H, W) (channel 0 OFF, 1 ON) -> RGB uint8 (H, W, 3).

    A pixel reaches full colour at ``saturation`` events of one polarity.
    """
    off = np.minimum(counts[0] / saturation, 1.0)
    on = np.minimum(counts[1] / saturation, 1.0)
    rgb = np.empty((*counts.shape[1:], 3), np.float32)
    rgb[..., 0] = 1.0 - off
    rgb[..., 1] = (1.0 - on) * (1.0 - off)
    rgb[..., 2] = 1.0 - on
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def render_events(packets: Sequence[Message], height: int, width: int) -> np.ndarray:
    """Event packets (kind ``events``) -> RGB uint8 (height, width, 3) of their polarity counts.

    Events outside ``height`` x ``width`` are left out (a display must not fail on one bad packet).
    """
    if not packets:
        return np.full((height, width, 3), 255, np.uint8)
    x = np.concatenate([m.arrays["x"] for m in packets])
    y = np.concatenate([m.arrays["y"] for m in packets])
    p = np.concatenate([m.arrays["p"] for m in packets])
    inside = (x < width) & (y < height) & ((p == 1) | (p == -1))
    if not inside.all():
        x, y, p = x[inside], y[inside], p[inside]
    return polarity_colours(event_frame(x, y, p, height, width))


def render_frame(image: np.ndarray) -> np.ndarray:
    """An intensity or colour image (H, W), (H, W, 1) or (H, W, 3), any numeric dtype -> RGB uint8 (H, W, 3).

    uint8 is shown as it is; floats within [0, 1] are scaled by 255; anything else is stretched from
    its minimum to its maximum (a constant image becomes mid-grey).
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"cannot show an image of shape {img.shape}: expected (H, W), (H, W, 1) or (H, W, 3)")
    if img.dtype != np.uint8:
        img = img.astype(np.float32)
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
        if lo >= 0.0 and hi <= 1.0 and np.issubdtype(image.dtype, np.floating):
            img = img * 255.0
        elif hi > lo:
            img = (img - lo) * (255.0 / (hi - lo))
        else:
            img = np.full_like(img, 128.0)
        img = np.nan_to_num(img, nan=0.0).clip(0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img


def render_voxel(voxel: np.ndarray) -> np.ndarray:
    """A voxel grid float (bins, H, W) -> RGB uint8 (H, bins * W + (bins - 1) * BIN_GAP_PX, 3), bins left to right.

    All bins share one symmetric scale, so bins can be compared: the 99th percentile of the nonzero
    magnitudes (a few hot pixels would otherwise leave everything else white); larger values saturate.
    """
    if voxel.ndim != 3:
        raise ValueError(f"cannot show a voxel grid of shape {voxel.shape}: expected (bins, H, W)")
    bins, height, width = voxel.shape
    v = np.nan_to_num(voxel.astype(np.float32, copy=False))
    magnitudes = np.abs(v[v != 0])
    scale = float(np.percentile(magnitudes, 99)) if magnitudes.size else 1.0
    pos = np.clip(v / scale, 0.0, 1.0)
    neg = np.clip(-v / scale, 0.0, 1.0)
    strip = np.full((height, bins * width + (bins - 1) * BIN_GAP_PX, 3), GUTTER_GREY, np.uint8)
    for b in range(bins):
        x0 = b * (width + BIN_GAP_PX)
        strip[:, x0:x0 + width, 0] = ((1.0 - neg[b]) * 255.0 + 0.5).astype(np.uint8)
        strip[:, x0:x0 + width, 1] = ((1.0 - pos[b]) * (1.0 - neg[b]) * 255.0 + 0.5).astype(np.uint8)
        strip[:, x0:x0 + width, 2] = ((1.0 - pos[b]) * 255.0 + 0.5).astype(np.uint8)
    return strip


def encode_jpeg(rgb: np.ndarray, max_width: int, quality: int) -> bytes:
    """RGB uint8 (H, W, 3) -> JPEG bytes, scaled down (aspect kept) when wider than ``max_width`` pixels."""
    picture = Image.fromarray(rgb, "RGB")
    if picture.width > max_width:
        height = max(1, round(picture.height * max_width / picture.width))
        picture = picture.resize((max_width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality)
    return out.getvalue()


def warm_up() -> None:
    """Load the compiled event-count kernel now (about a second), not when the first browser asks for a picture."""
    one = np.zeros(1, np.uint16)
    event_frame(one, one, np.ones(1, np.int8), 1, 1)
