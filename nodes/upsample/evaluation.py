"""HiFI models for ``python -m evpipe.tools.evaluate --task upsample --model NAME``.

``hifi-base``: the network on the whole frame at full resolution, no cascade and no patches (HiFI's
"base" row); ``hifi-cascade2`` / ``hifi-cascade3``: the patch-based self-cascade with 2 or 3
pyramid levels (patches of the training size, MultiDiffusion merging). All use the paper's sampler
defaults (8 DDIM steps, mean of 4 samples, seeds 0..3); ``hifi`` is the shipped setting of ``evpipe upsample``
and the node (3 levels, 1 step, 1 sample). ``--checkpoint`` selects a checkpoint file
(default: the shipped default, ``DEFAULT_CHECKPOINT``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from evpipe.nodes.upsample import DEFAULT_CHECKPOINT


def factory(levels: int, patched: bool, steps: int = 8, samples: int = 4) -> Callable[[Any], Callable[..., np.ndarray]]:
    """A model factory (see ``evpipe.tools.evaluate``) for one cascade configuration."""

    def make(context: Any) -> Callable[..., np.ndarray]:
        from evpipe.nodes.upsample.cascade import CascadeSettings, Upsampler
        from evpipe.nodes.upsample.model import load_checkpoint

        checkpoint = context.checkpoint or DEFAULT_CHECKPOINT
        patch = load_checkpoint(checkpoint).config.patch if patched else None
        settings = CascadeSettings(levels=levels, steps=steps, samples=samples, patch=patch)
        upsampler = Upsampler(checkpoint, settings, context.device)

        def middle(frame0: np.ndarray, frame1: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
            return upsampler.middle(frame0, frame1)

        return middle

    return make


MODELS = {
    "hifi-base": factory(1, patched=False),
    "hifi-cascade2": factory(2, patched=True),
    "hifi-cascade3": factory(3, patched=True),
    "hifi": factory(3, patched=True, steps=1, samples=1),
}
