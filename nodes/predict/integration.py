"""Event integration in numpy: the anchor frame moved by the events' polarity sums,
``exp(log(I + eps) + c·Σp) - eps``, and the grid search that calibrates (c, eps) to a sensor.

It is the predictor's ``event-integration`` base (``ModelConfig.base``, fitted by
``tools/train_predictor.py``), the ``event-integration`` baseline of ``evpipe.tools.evaluate`` and the
calibration of every predictor variant scored beside it (``.evaluation``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evpipe.runtime.events import Events

C_GRID = np.linspace(0.02, 1.2, 60)
EPS_GRID = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def polarity_sum(events: Events, height: int, width: int) -> np.ndarray:
    """float32 (H, W): per-pixel sum of polarities."""
    flat = events.y.astype(np.int64) * width + events.x
    return np.bincount(flat, weights=events.p, minlength=height * width).astype(np.float32).reshape(height, width)


def expand_map(map_hw: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Broadcast per-pixel maps (..., H, W) against images (..., H, W) or (..., H, W, 3) of equal leading shape."""
    return map_hw if map_hw.ndim == like.ndim else map_hw[..., None]


def integrate_events(anchor: np.ndarray, polarity: np.ndarray, c: float, eps: float) -> np.ndarray:
    """exp(log(anchor + eps) + c * polarity) - eps, clipped to [0, 1]; float32 like ``anchor``."""
    out = np.exp(np.log(anchor + eps) + c * expand_map(polarity, anchor)) - eps
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def fit_integration(anchors: np.ndarray, targets: np.ndarray, sums: np.ndarray) -> tuple[float, float, float]:
    """(c, eps, MSE) of :func:`integrate_events` fitted to anchors/targets (N, H, W[, 3]) in [0, 1] with
    polarity sums ``sums`` of the same shape: a grid over c and eps, then a finer grid over c."""
    def mse(c: float, eps: float) -> float:
        return float(np.mean((integrate_events(anchors, sums, c, eps) - targets) ** 2))

    best = min((mse(c, eps), c, eps) for c in C_GRID for eps in EPS_GRID)
    step = C_GRID[1] - C_GRID[0]
    fine = np.linspace(max(best[1] - step, 1e-3), best[1] + step, 21)
    best = min(best, *((mse(c, best[2]), c, best[2]) for c in fine))
    return float(best[1]), float(best[2]), best[0]


def fit_event_integration(cases: list[dict[str, Any]], height: int, width: int) -> tuple[float, float, float]:
    """(c, eps, fit MSE) minimising the MSE of :func:`integrate_events` on prediction cases (dicts with
    ``anchor``, ``target`` and ``events``)."""
    if not cases:
        raise ValueError("event-integration: no fitting samples")
    anchors = np.stack([case["anchor"] for case in cases])
    targets = np.stack([case["target"] for case in cases])
    sums = np.stack([expand_map(polarity_sum(case["events"], height, width), case["anchor"]) for case in cases])
    return fit_integration(anchors, targets, sums)


_FITS: dict[int, tuple[list[dict[str, Any]], tuple[float, float, float]]] = {}


def context_event_integration(context: Any) -> tuple[float, float, float]:
    """:func:`fit_event_integration` on an evaluation context's fitting samples (``context.fit_samples()``,
    ``.height``, ``.width``), fitted once per sample list (the baseline and every model calibrated like it
    share one fit)."""
    cases = context.fit_samples()
    if id(cases) not in _FITS:  # the list is kept with its fit, so its id is not reused
        _FITS[id(cases)] = (cases, fit_event_integration(cases, context.height, context.width))
    return _FITS[id(cases)][1]
