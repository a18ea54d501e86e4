"""DDS restoration of a clip in overlapping windows: which windows, one window, and how they join.

The ``restore`` node streams frames through these functions; ``evpipe batch restore`` restores the
windows of :func:`window_spans` independently (on many workers) and joins them with the same
:class:`WindowStitcher`, so both give the same frames.

Colour windows (:func:`restore_colour_window`): the gray prior restores the luma (:mod:`evpipe.nodes.colour`)
and the chroma is carried by :func:`chroma_method`'s choice, measured on real clips (8-bit, 640 px;
``benchmarks/chroma_choice.md``): the CG-only solve of the same operator (the sampler's data-consistency
steps without the prior) beat the degraded chroma as it is by 1.4-4 dB for uniform7 and uniform13, and
lost to it by 0.2-2 dB for gaussian1, whose mild blur leaves little to undo and whose inverse amplifies
the 8-bit rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from evpipe.nodes.colour import rgb_to_ycbcr, ycbcr_to_rgb
from evpipe.nodes.restore.model import ImagePrior
from evpipe.nodes.restore.operators import make_operator
from evpipe.nodes.restore.psf import temporal_psf
from evpipe.nodes.restore.sampler import DDSConfig, cg_only, dds_restore
from evpipe.runtime.events import Frame
from evpipe.runtime.wire import Message


def window_spans(n_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) of every window the node restores for a clip of ``n_frames``: full windows
    ``window - overlap`` apart, then what is left beyond the last one's overlap (the final window)."""
    spans, start = [], 0
    while start + window <= n_frames:
        spans.append((start, start + window))
        start += window - overlap
    if not spans:
        return [(0, n_frames)] if n_frames else []
    if n_frames - start > overlap:
        spans.append((start, n_frames))
    return spans


def sampler_config(params: Mapping[str, Any]) -> DDSConfig:
    """The sampler settings of a ``restore`` node's parameters."""
    return DDSConfig(nfe=params["nfe"], cg_steps=params["cg_steps"], eta=params["eta"],
                     time_power=params["time_power"], batch_consistent=params["batch_consistent"], seed=params["seed"])


def restore_window(model: ImagePrior, psf: np.ndarray, frames: np.ndarray, config: DDSConfig, *, spatial: str,
                   boundary: str, device: str, progress: bool = False,
                   network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Restore gray frames float32 (L, H, W) in [0, 1] measured through ``psf`` (then ``spatial``: none,
    blur or sr4); reflect-padded to the prior's stride. Returns float32 (L, H', W') (4x larger with sr4).
    ``network``: the prior's engine on ``device`` (see :func:`dds_restore`)."""
    scale = 4 if spatial == "sr4" else 1
    multiple = model.multiple
    height, width = frames.shape[1] * scale, frames.shape[2] * scale
    pad_h, pad_w = -height % (multiple * scale), -width % (multiple * scale)
    padded = np.pad(frames, ((0, 0), (0, pad_h // scale), (0, pad_w // scale)), mode="reflect")
    y = torch.from_numpy(padded[:, None]).to(device)
    shape = (len(frames), 1, (height + pad_h), (width + pad_w))
    op = make_operator(psf, shape, None if spatial == "none" else spatial, boundary=boundary)
    restored = dds_restore(model, op, y, shape, config, progress=progress, network=network)
    return restored[:, 0, :height, :width].cpu().numpy().astype(np.float32)


def cg_window(psf: np.ndarray, frames: np.ndarray, config: DDSConfig, *, spatial: str, boundary: str,
              device: str) -> np.ndarray:
    """The CG-only solve (:func:`~evpipe.nodes.restore.sampler.cg_only`, ``config``'s NFE × CG steps) of
    measured channels float32 (L, C, h, w) through ``psf`` (then ``spatial``) -> float32 (L, C, H, W)."""
    scale = 4 if spatial == "sr4" else 1
    shape = (frames.shape[0], frames.shape[1], frames.shape[2] * scale, frames.shape[3] * scale)
    op = make_operator(psf, shape, None if spatial == "none" else spatial, boundary=boundary)
    return cg_only(op, torch.from_numpy(np.ascontiguousarray(frames)).to(device), shape, config).cpu().numpy()


CHROMA_METHODS = ("cg", "degraded")
_CHROMA_AS_MEASURED = ("gaussian1",)  # temporal PSFs whose degraded chroma beat the CG-only solve


def chroma_method(psf: np.ndarray, spatial: str) -> str:
    """How a colour window's chroma is restored: ``degraded`` (as measured) for the gaussian1 PSF alone,
    else ``cg`` (a spatial degradation changes the size or blurs, so the measured chroma cannot stand)."""
    as_measured = any(np.array_equal(psf, temporal_psf(kind)) for kind in _CHROMA_AS_MEASURED)
    return "degraded" if as_measured and spatial == "none" else "cg"


def restore_colour_window(model: ImagePrior, psf: np.ndarray, frames: np.ndarray, config: DDSConfig, *, spatial: str,
                          boundary: str, device: str, chroma: str = "cg", progress: bool = False,
                          network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Restore colour frames float32 (L, H, W, 3) RGB in [0, 1]: the luma by DDS (:func:`restore_window`),
    the chroma by :func:`cg_window` (``chroma`` ``cg``) or as measured (``degraded``, no spatial
    degradation only). Returns float32 (L, H', W', 3) RGB (4x larger with sr4)."""
    if chroma not in CHROMA_METHODS:
        raise ValueError(f"chroma {chroma!r}: expected one of {', '.join(CHROMA_METHODS)}")
    if chroma == "degraded" and spatial != "none":
        raise ValueError(f"chroma 'degraded' needs no spatial degradation, got spatial {spatial!r}")
    ycbcr = rgb_to_ycbcr(frames)
    luma = restore_window(model, psf, ycbcr[..., 0], config, spatial=spatial, boundary=boundary, device=device,
                          progress=progress, network=network)
    if chroma == "cg":
        measured = np.ascontiguousarray(np.moveaxis(ycbcr[..., 1:], -1, 1))
        restored = np.moveaxis(cg_window(psf, measured, config, spatial=spatial, boundary=boundary, device=device),
                               1, -1)
    else:
        restored = ycbcr[..., 1:]
    return ycbcr_to_rgb(np.concatenate([luma[..., None], restored], axis=-1))


class WindowStitcher:
    """Joins restored windows (L, H, W) gray or (L, H, W, 3) colour in order: the ``overlap`` frames two
    windows share are cross-faded linearly from the earlier window's estimate to the later one's."""

    def __init__(self, overlap: int) -> None:
        self.overlap = overlap
        self.carry: np.ndarray | None = None  # the previous window's estimates of the frames it shares

    @property
    def pending(self) -> int:
        """Frames held back for the next window."""
        return 0 if self.carry is None else len(self.carry)

    def add(self, restored: np.ndarray, final: bool) -> np.ndarray:
        """The frames now final (all of a ``final`` window, else all but its last ``overlap``)."""
        if self.carry is not None:
            n = len(self.carry)
            weight = ((np.arange(n) + 1) / (n + 1)).astype(np.float32).reshape(-1, *[1] * (restored.ndim - 1))
            restored[:n] = (1 - weight) * self.carry + weight * restored[:n]
        keep = 0 if final else self.overlap
        self.carry = restored[len(restored) - keep:] if keep else None
        return restored[: len(restored) - keep]

    def flush(self) -> np.ndarray:
        """The held-back frames as they are (the clip ended exactly at a window's end)."""
        carry, self.carry = self.carry, None
        return carry if carry is not None else np.zeros((0, 0, 0), np.float32)


def clip_image(image: np.ndarray, colour: bool) -> np.ndarray:
    """A clip frame as the restore windows take it: float32 (H, W, 3) RGB in [0, 1] for a colour clip, (H, W)
    for a gray one (decided by the clip's first frame, :func:`evpipe.nodes.colour.is_gray`)."""
    from evpipe.nodes.colour import colour_image, gray_unit, unit_image

    image = unit_image(image)
    return colour_image(image) if colour else gray_unit(image)


def restore_any_window(model: ImagePrior, psf: np.ndarray, frames: np.ndarray, config: DDSConfig, *, spatial: str,
                       boundary: str, device: str, progress: bool = False,
                       network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """:func:`restore_colour_window` for colour frames (L, H, W, 3), :func:`restore_window` for gray (L, H, W):
    what the ``restore`` node and ``evpipe batch restore`` run on each window."""
    common = {"spatial": spatial, "boundary": boundary, "device": device, "progress": progress, "network": network}
    if frames.ndim == 4:
        return restore_colour_window(model, psf, frames, config, chroma=chroma_method(psf, spatial), **common)
    return restore_window(model, psf, frames, config, **common)


def restored_message(image: np.ndarray, t: int, degradation: str) -> Message:
    """The message the node sends for one restored frame."""
    return Message.from_frame(Frame(image, t, 0, {"restored": True, "degradation": degradation}))
