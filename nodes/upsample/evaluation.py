"""HiFI models for ``python -m evpipe.tools.evaluate --task upsample --model NAME``.

``hifi-base``: the network on the whole frame at full resolution, no cascade and no patches (HiFI's
"base" row); ``hifi-cascade2`` / ``hifi-cascade3``: the patch-based self-cascade with 2 or 3
pyramid levels (patches of the training size, MultiDiffusion merging). All use the paper's sampler
defaults (8 DDIM steps, mean of 4 samples, seeds 0..3). ``--checkpoint`` selects a checkpoint file
(default: the shipped ``tiny``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def factory(levels: int, patched: bool) -> Callable[[Any], Callable[..., np.ndarray]]:
    """A model factory (see ``evpipe.tools.evaluate``) for one cascade configuration."""

    def make(context: Any) -> Callable[..., np.ndarray]:
        from evpipe.nodes.upsample.cascade import CascadeSettings, Upsampler
        from evpipe.nodes.upsample.model import load_checkpoint

        checkpoint = context.checkpoint or "tiny"
        patch = load_checkpoint(checkpoint).config.patch if patched else None
        upsampler = Upsampler(checkpoint, CascadeSettings(levels=levels, patch=patch), context.device)

        def middle(frame0: np.ndarray, frame1: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
            return upsampler.middle(frame0, frame1)

        return middle

    return make


MODELS = {
    "hifi-base": factory(1, patched=False),
    "hifi-cascade2": factory(2, patched=True),
    "hifi-cascade3": factory(3, patched=True),
}
