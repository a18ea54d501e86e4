"""Sequences rendered and simulated the way the tiny dataset makes them, for model tests that need held-out data
without the dataset on disk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def tiny_test_split_sequences() -> Iterator[tuple[Any, dict[str, Any]]]:
    """(rendered sequence, simulated arrays) at 128² (the tiny preset's size), four APS frames each, made as
    tools/make_dataset.py makes them (homography motion, per-sequence random contrast thresholds and noise, the
    stored blur) from the two bundled photos of its test split, two sequences (seeds 0 and 1) each."""
    from skimage import data as skdata

    from evpipe.tools.make_dataset import BuildConfig, render_image_sequence, synthesize

    config = BuildConfig(size=128, aps_per_sequence=4)
    for name in ("coffee", "immunohistochemistry"):
        photo = (getattr(skdata, name)() / 255.0).astype(np.float32)
        for seed in range(2):
            rng = np.random.default_rng(seed)
            rendered = render_image_sequence(photo, config, rng)
            yield rendered, synthesize(rendered, config, rng)[0]
