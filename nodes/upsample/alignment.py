"""Global motion compensation for HiFI: both input frames are moved halfway towards each other before
the network sees them.

Our addition to HiFI (the paper's network sees the raw frames): a small CPU-trained U-Net with a
32-pixel receptive field cannot follow motions of 8-16 pixels between frames, while a single global
translation, found by phase correlation, removes most of it for camera motion — the dataset's photo
clips move the view by a homography. The network then only learns the motion that a translation
leaves (rotation, zoom, parallax, objects). Measured in ``benchmarks/RESULTS.md`` (HiFI).

``global_shift(frame0, frame1)`` is the translation (dy, dx) with frame1(y, x) ≈ frame0(y − dy, x − dx);
``motion_shift`` keeps it only where it explains the pair better than no motion (a still camera with
something moving in view is better left alone); ``align_to_middle`` shifts frame0 by +(dy, dx)/2 and
frame1 by −(dy, dx)/2, so both land where the middle frame's content is. Frames are float tensors
(C, H, W); a translation has no content for the pixels it uncovers, which repeat the border.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import Tensor

ESTIMATE_SIDE = 256  # phase correlation runs on frames area-downsampled to at most this side (memory stays flat)
REFINE = 16  # sub-pixel resolution of the shift: 1/REFINE of an estimation pixel


def _downsampled_pair(frame0: Tensor, frame1: Tensor) -> tuple[Tensor, int]:
    """The channel means of both frames area-downsampled by the smallest integer factor that brings
    them to at most ``ESTIMATE_SIDE`` a side: ((2, h, w) float64, factor)."""
    if frame0.shape != frame1.shape or frame0.ndim != 3:
        raise ValueError(f"phase correlation: frames must be (C, H, W) of the same shape, got {tuple(frame0.shape)} "
                         f"and {tuple(frame1.shape)}")
    factor = max(1, math.ceil(max(frame0.shape[-2:]) / ESTIMATE_SIDE))
    # One frame at a time, downsampled before the float64 copy: no full-size temporaries beyond one channel.
    small = torch.stack([F.avg_pool2d(frame.mean(0)[None, None], factor)[0, 0] for frame in (frame0, frame1)])
    return small.double(), factor


def _phase_correlation_shift(small: Tensor) -> tuple[float, float]:
    """The translation (dy, dx) from ``small[0]`` to ``small[1]`` ((2, h, w)), in their pixels."""
    height, width = small.shape[-2:]
    window = torch.outer(torch.hann_window(height, periodic=False, dtype=torch.float64),
                         torch.hann_window(width, periodic=False, dtype=torch.float64))
    spectra = torch.fft.fft2((small - small.mean(dim=(-2, -1), keepdim=True)) * window)
    cross = spectra[1] * spectra[0].conj()
    # Square-root normalisation: sharper than plain correlation, less noise-driven than phase only.
    cross = cross / cross.abs().clamp(min=1e-12).sqrt()
    peak = int(torch.fft.ifft2(cross).real.argmax())
    coarse = torch.tensor(divmod(peak, width), dtype=torch.float64)
    # The correlation is circular: offsets past half the side are negative shifts.
    coarse -= torch.tensor([height, width]) * (coarse > torch.tensor([height, width]) / 2)
    # Sub-pixel: the correlation evaluated on a 1/REFINE-pixel grid of ±1 pixel around the integer peak
    # by a matrix DFT (exact, unlike a parabola through three samples).
    grid = torch.arange(-REFINE, REFINE + 1, dtype=torch.float64) / REFINE
    rows = torch.exp(2j * math.pi * torch.outer(coarse[0] + grid, torch.fft.fftfreq(height, dtype=torch.float64)))
    cols = torch.exp(2j * math.pi * torch.outer(torch.fft.fftfreq(width, dtype=torch.float64), coarse[1] + grid))
    fine = (rows @ cross @ cols).real
    iy, ix = divmod(int(fine.argmax()), len(grid))
    return float(coarse[0] + grid[iy]), float(coarse[1] + grid[ix])


def global_shift(frame0: Tensor, frame1: Tensor) -> tuple[float, float]:
    """The global translation (dy, dx) in pixels from ``frame0`` to ``frame1`` (each (C, H, W)):
    frame1(y, x) ≈ frame0(y − dy, x − dx). Phase correlation of the channel means, Hann-windowed,
    on copies area-downsampled to at most ``ESTIMATE_SIDE`` pixels a side, peak refined to
    1/``REFINE`` pixel; the result is in full-resolution pixels."""
    small, factor = _downsampled_pair(frame0, frame1)
    dy, dx = _phase_correlation_shift(small)
    return dy * factor, dx * factor


def motion_shift(frame0: Tensor, frame1: Tensor) -> tuple[float, float]:
    """The translation HiFI compensates: :func:`global_shift` when moving ``frame0`` by it brings
    ``frame0`` closer to ``frame1`` (mean squared difference over the pixels the shift keeps, on the
    downsampled copies) than leaving it in place, else (0, 0). The correlation peak of a scene whose
    camera is still follows whatever moves in it (a hand, a snowboarder): shifting the whole frame
    after it misplaces the background, and the test frames showed that costing 2.6 dB against not
    aligning at all (RESULTS.md, HiFI)."""
    small, factor = _downsampled_pair(frame0, frame1)
    dy, dx = _phase_correlation_shift(small)
    margin = math.ceil(max(abs(dy), abs(dx))) + 1
    if 2 * margin >= min(small.shape[-2:]):  # the shift leaves no pixel to compare
        return 0.0, 0.0
    inner = (slice(margin, -margin), slice(margin, -margin))
    moved = translate(small[0], dy, dx)[inner]
    if float(((moved - small[1][inner]) ** 2).mean()) < float(((small[0] - small[1])[inner] ** 2).mean()):
        return dy * factor, dx * factor
    return 0.0, 0.0


def _shift_axis(image: Tensor, offset: float, dim: int) -> Tensor:
    """``image`` moved by ``offset`` pixels along ``dim`` (out[i] = image[i − offset], linear
    interpolation, border repeated). Two gathered copies at most: the cascade's memory stays flat."""
    whole = math.floor(offset)
    fraction = offset - whole
    index = torch.arange(image.shape[dim], device=image.device) - whole
    out = image.index_select(dim, index.clamp(0, image.shape[dim] - 1))
    if fraction:
        out.mul_(1.0 - fraction).add_(image.index_select(dim, (index - 1).clamp(0, image.shape[dim] - 1)),
                                      alpha=fraction)
    return out


def translate(image: Tensor, dy: float, dx: float) -> Tensor:
    """``image`` (..., H, W) moved by (dy, dx) pixels: out(y, x) = image(y − dy, x − dx), bilinear, border
    repeated."""
    return _shift_axis(_shift_axis(image, dy, image.ndim - 2), dx, image.ndim - 1)


def align_to_middle(frame0: Tensor, frame1: Tensor, shift: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """Both frames (C, H, W) moved halfway along their global translation ``shift`` (default:
    :func:`motion_shift` of the two), towards the middle frame."""
    dy, dx = shift if shift is not None else motion_shift(frame0, frame1)
    return translate(frame0, dy / 2, dx / 2), translate(frame1, -dy / 2, -dx / 2)
