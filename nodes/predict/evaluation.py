"""The predictor's models for ``python -m evpipe.tools.evaluate --task predict --model NAME``.

Names: ``dessert-teacher`` (64-step DDIM), ``dessert-4step``/``-2step``/``-1step`` (distilled
students), ``dessert-4step-coarse2``/``-coarse4`` (the 4-step student with its latent path at 1/2 or
1/4 resolution: the real-time deployment variants), and the ablations ``dessert-no-ervae``, ``dessert-no-dlt``,
``dessert-regression`` with their reference ``dessert-short`` (the full model at the ablations'
training budget); ``dessert-4step-latent`` is the 4-step student with the paper's composition
decode(z_anchor + ẑ_res) instead of the default pixel-space residual; ``-t1`` variants sample at
temperature 1 (true samples) instead of the default 0. ``--checkpoint`` selects a
checkpoint directory (default: the shipped ``tiny``). Every variant runs in eager torch with one
intra-op thread: one runtime for all rows, so ms/call compares the models; no per-variant ONNX
export (the 64-step teacher's takes over ten minutes here); and one thread because torch's default
two stall each other on this busy 2-core machine (teacher 21 s per frame instead of 0.5 s). The
students' deployment backend, ONNX Runtime, gives the same frames (max abs difference 7.5e-7 for the
4-step graph, ``tests/test_predict.py``); its latency is in ``benchmarks/latency.md``. Each factory
seeds its sampler with 0. The event-integration base (``ModelConfig.base``) of every variant is
calibrated like the event-integration baseline: (c, eps) fitted on the same fitting samples (the train
split for the synthetic data, the first half of a real recording).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from evpipe.runtime.events import Events


def factory(variant: str, compose: str | None = None, temperature: float = 0.0
            ) -> Callable[[Any], Callable[..., np.ndarray]]:
    """A model factory (see ``evpipe.tools.evaluate``) for one predictor variant."""

    def make(context: Any) -> Callable[..., np.ndarray]:
        from evpipe.nodes.predict.sampler import FramePredictor

        if context.channels != 1:
            raise ValueError(f"dessert-{variant}: the predictor is gray-only; the data has {context.channels} "
                             "channels")
        from evpipe.nodes.predict.integration import context_event_integration

        c, eps, _ = context_event_integration(context)  # calibrated on the baseline's data, as the baseline is
        predictor = FramePredictor(variant, context.checkpoint or "tiny", "torch", compose=compose,
                                   integration=(c, eps), temperature=temperature, threads=1, seed=0)

        def predict(anchor: np.ndarray, events: Events, t_anchor: int, t_target: int) -> np.ndarray:
            return predictor.predict_events(anchor, events, t_anchor, t_target)

        return predict

    return make


MODELS = {
    **{f"dessert-{v}": factory(v) for v in ("teacher", "4step", "2step", "1step", "no-ervae", "no-dlt",
                                             "regression", "short", "4step-coarse2", "4step-coarse4")},
    "dessert-4step-latent": factory("4step", compose="latent"),
    "dessert-teacher-t1": factory("teacher", temperature=1.0),
    "dessert-4step-t1": factory("4step", temperature=1.0),
}
