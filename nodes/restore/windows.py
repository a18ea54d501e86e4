"""DDS restoration of a clip in overlapping windows: which windows, one window, and how they join.

The ``restore`` node streams frames through these functions; ``evpipe batch restore`` restores the
windows of :func:`window_spans` independently (on many workers) and joins them with the same
:class:`WindowStitcher`, so both give the same frames.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from evpipe.nodes.restore.model import ImagePrior
from evpipe.nodes.restore.operators import make_operator
from evpipe.nodes.restore.sampler import DDSConfig, dds_restore
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


class WindowStitcher:
    """Joins restored windows in order: the ``overlap`` frames two windows share are cross-faded
    linearly from the earlier window's estimate to the later one's."""

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
            weight = ((np.arange(n) + 1) / (n + 1)).astype(np.float32)[:, None, None]
            restored[:n] = (1 - weight) * self.carry + weight * restored[:n]
        keep = 0 if final else self.overlap
        self.carry = restored[len(restored) - keep:] if keep else None
        return restored[: len(restored) - keep]

    def flush(self) -> np.ndarray:
        """The held-back frames as they are (the clip ended exactly at a window's end)."""
        carry, self.carry = self.carry, None
        return carry if carry is not None else np.zeros((0, 0, 0), np.float32)


def restored_message(image: np.ndarray, t: int, degradation: str) -> Message:
    """The message the node sends for one restored frame."""
    return Message.from_frame(Frame(image, t, 0, {"restored": True, "degradation": degradation}))
