"""The baselines every model is scored beside (see the package docstring), registered under their names."""

from __future__ import annotations

from typing import Any

import numpy as np

from evpipe.kernels import edi_integral
from evpipe.nodes.predict.integration import context_event_integration, expand_map, integrate_events, polarity_sum
from evpipe.runtime.events import Events
from evpipe.tools.evaluate.cases import deblur_args, hwc
from evpipe.tools.evaluate.registry import Case, ModelContext, ModelFn, register_model

EDI_SAMPLES = 32


def _copy_last(context: ModelContext) -> ModelFn:
    return lambda anchor, events, t_anchor, t_target: anchor.copy()


def _event_integration(context: ModelContext) -> ModelFn:
    c, eps, fit_mse = context_event_integration(context)
    context.options["fitted"] = {"c": c, "eps": eps, "fit_mse": fit_mse}

    def predict(anchor: np.ndarray, events: Events, t_anchor: int, t_target: int) -> np.ndarray:
        return integrate_events(anchor, polarity_sum(events, context.height, context.width), c, eps)

    return predict


def edi_deblur(blurry: np.ndarray, events: Events, start: int, end: int, t_ref: int, c: float) -> np.ndarray:
    """EDI sharp frame: blurry / E(t_ref), clipped to [0, 1]."""
    height, width = blurry.shape[:2]
    denominator = edi_integral(events.t, events.x, events.y, events.p, c, start, end, EDI_SAMPLES, height, width,
                               t_ref)
    return np.clip(blurry / expand_map(denominator, blurry), 0.0, 1.0).astype(np.float32)


def fit_edi(cases: list[Case]) -> tuple[float, float]:
    """(c, fit MSE) for :func:`edi_deblur` by a coarse then fine grid search."""
    if not cases:
        raise ValueError("edi: no fitting samples")

    def mse(c: float) -> float:
        return float(np.mean([np.mean((edi_deblur(*deblur_args(case), c) - case["target"]) ** 2) for case in cases]))

    coarse = np.linspace(0.05, 1.0, 20)
    best = min((mse(c), c) for c in coarse)
    step = coarse[1] - coarse[0]
    best = min(best, *((mse(c), c) for c in np.linspace(max(best[1] - step, 0.01), best[1] + step, 11)))
    return float(best[1]), best[0]


def _blurry(context: ModelContext) -> ModelFn:
    return lambda blurry, events, exposure_start, exposure_end, t_ref: blurry.copy()


def _edi(context: ModelContext) -> ModelFn:
    c, fit_mse = fit_edi(context.fit_samples())
    context.options["fitted"] = {"c": c, "fit_mse": fit_mse}
    return lambda blurry, events, exposure_start, exposure_end, t_ref: edi_deblur(
        blurry, events, exposure_start, exposure_end, t_ref, c
    )


def _blend(context: ModelContext) -> ModelFn:
    return lambda frame0, frame1, before, after: (0.5 * (frame0 + frame1)).astype(np.float32)


def _cubic(context: ModelContext) -> ModelFn:
    return lambda frame0, frame1, before, after: np.clip(
        (9.0 * (frame0 + frame1) - before - after) / 16.0, 0.0, 1.0
    ).astype(np.float32)


def _aligned_blend(context: ModelContext) -> ModelFn:
    import torch

    from evpipe.nodes.upsample.alignment import align_to_middle

    def middle(frame0: np.ndarray, frame1: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        pair = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.atleast_3d(f), -1, 0))) for f in (frame0, frame1)]
        aligned0, aligned1 = align_to_middle(*pair)
        return hwc((0.5 * (aligned0 + aligned1)).numpy().astype(np.float32))

    return middle


def _degraded(context: ModelContext) -> ModelFn:
    def measurement(degraded: np.ndarray, psf: np.ndarray, spatial: dict[str, Any] | None, boundary: str
                    ) -> np.ndarray:
        if spatial and spatial["kind"] == "sr4":  # nearest-neighbour back to the clip's size
            return degraded.repeat(4, axis=1).repeat(4, axis=2)
        return degraded.copy()

    return measurement


for _task, _name, _factory, _text in (
    ("predict", "copy-last", _copy_last, "the anchor frame"),
    ("predict", "event-integration", _event_integration, "log I + c * sum(p), (c, eps) fitted"),
    ("deblur", "blurry", _blurry, "the blurry input"),
    ("deblur", "edi", _edi, "EDI double integral, c fitted"),
    ("upsample", "blend", _blend, "mean of the two frames"),
    ("upsample", "cubic", _cubic, "temporal cubic convolution through four frames"),
    ("upsample", "aligned-blend", _aligned_blend, "mean of the two frames moved halfway along motion_shift"),
    ("restore", "degraded", _degraded, "the degraded clip"),
):
    register_model(_task, _name, _factory, _text)
