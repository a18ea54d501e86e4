"""DDS restoration models for ``python -m evpipe.tools.evaluate --task restore --model NAME``.

Names: ``dds`` (the sampler with batch-consistent noise, :data:`~evpipe.nodes.restore.sampler.PAPER_TEMPORAL`
settings unless the NFE is overridden), ``dds-no-batch-consistent`` (the paper's ablation: independent
noise per frame), ``cg`` (CG alone: the same M × NFE CG iterations, restarted every M like the sampler's,
without the diffusion updates) and ``admm-tv`` (ADMM on ½‖y − Ax‖² + λ‖∇_t x‖₁, 30 × 20 iterations,
λ chosen on training clips, on a strided pixel subset: ``ADMM_FIT_PIXELS``). CG-only and ADMM-TV start
from the normalised back-projection ``Aᵀy / Aᵀ(A 1)``, a stronger start than zeros.

Every model is called ``fn(degraded, psf, spatial, boundary)`` (see ``evpipe.tools.evaluate``): ``spatial``
is None or, for the spatio-temporal cases (``--degradation uniform7+blur`` etc.), ``{"kind", "seed"}``;
``boundary`` is the temporal PSF's (``--boundary``). The operator is
:func:`evpipe.nodes.restore.operators.make_operator`; with a spatial degradation the DDS settings are the
paper's spatio-temporal ones (η 0.8, 100 NFE). ``--checkpoint`` selects the prior (default the shipped
``tiny``). The environment variable ``EVPIPE_DDS_NFE`` overrides the NFE of every DDS model and of
the CG-only baseline together (so both keep the same number of CG iterations); the values used are
recorded in the report's fitted parameters.
Every DDS model is seeded with 0. A colour clip with the gray prior is restored as the restore node does
it (``windows.restore_colour_window``: the luma by DDS, the chroma CG-solved or as measured); CG-only and
ADMM-TV solve all three channels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from evpipe.nodes.restore.operators import LinearOperator, admm_tv, make_operator
from evpipe.nodes.restore.sampler import (
    PAPER_SPATIOTEMPORAL,
    PAPER_TEMPORAL,
    DDSConfig,
    back_projection,
    cg_only,
    dds_restore,
)

ADMM_LAMBDAS = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2)
ADMM_FIT_CLIPS = 3
# λ is fitted on a strided pixel subset of each fit clip of at most this many pixels per frame: with a
# temporal PSF and temporal TV the problem is separable per pixel, so the subset scores λ like the whole
# frame does (measured on 07_snowboarder at 320 px, stride 4: within 0.1 dB at every λ, same order), and a
# 640x360 fit takes 1/16 of the full solves' time.
ADMM_FIT_PIXELS = 160 * 90
Spatial = dict[str, Any] | None


def _config(spatial: Spatial) -> DDSConfig:
    """The paper's settings for the degradation (temporal or spatio-temporal), NFE from the environment."""
    config = PAPER_SPATIOTEMPORAL if spatial else PAPER_TEMPORAL
    value = os.environ.get("EVPIPE_DDS_NFE")
    if value is None:
        return config
    try:
        return config.with_(nfe=int(value))
    except ValueError as error:
        raise ValueError(f"EVPIPE_DDS_NFE={value!r}: {error}") from error


def _fitted(configs: DDSConfig | tuple[DDSConfig, DDSConfig]) -> dict[str, float]:
    temporal, spatial = configs if isinstance(configs, tuple) else (configs, configs)
    return {"nfe": temporal.nfe, "cg_steps": temporal.cg_steps, "eta": temporal.eta,
            "time_power": temporal.time_power, "nfe_spatial": spatial.nfe, "eta_spatial": spatial.eta}


def problem(degraded: np.ndarray, psf: np.ndarray, spatial: Spatial, boundary: str
            ) -> tuple[LinearOperator, torch.Tensor, tuple[int, int, int, int]]:
    """(A, y (L, C, h, w), clip shape (L, C, H, W)) of a restore case (see ``evpipe.tools.evaluate``)."""
    y = to_clip(degraded)
    kind = spatial["kind"] if spatial else None
    scale = 4 if kind == "sr4" else 1
    shape = (y.shape[0], y.shape[1], y.shape[2] * scale, y.shape[3] * scale)
    return make_operator(psf, shape, kind, spatial["seed"] if spatial else 0, boundary), y, shape


def to_clip(frames: np.ndarray) -> torch.Tensor:
    """(L, H, W) or (L, H, W, 3) float32 -> (L, C, H, W) tensor."""
    array = np.asarray(frames, dtype=np.float32)
    tensor = torch.from_numpy(array[:, None] if array.ndim == 3 else np.moveaxis(array, -1, 1).copy())
    return tensor.contiguous()


def from_clip(clip: torch.Tensor, like: np.ndarray) -> np.ndarray:
    """(L, C, H, W) tensor -> float32 (L, H, W) or (L, H, W, 3) as ``like`` is gray or colour."""
    array = clip.detach().cpu().numpy().astype(np.float32)
    return array[:, 0] if like.ndim == 3 else np.ascontiguousarray(np.moveaxis(array, 1, -1))


def _colour_with_gray_prior(model: Any, degraded: np.ndarray, psf: np.ndarray, spatial: Spatial, boundary: str,
                            config: DDSConfig, device: str) -> np.ndarray:
    """A colour clip with a gray prior, as the restore node does it: the luma by DDS, the chroma by
    :func:`~evpipe.nodes.restore.windows.chroma_method`'s choice (no inpainting: its mask is per channel)."""
    from evpipe.nodes.restore.windows import chroma_method, restore_colour_window

    kind = spatial["kind"] if spatial else "none"
    if kind == "inpaint":
        raise ValueError("dds: a colour clip with the gray prior takes no inpaint degradation")
    return restore_colour_window(model, psf, degraded, config, spatial=kind, boundary=boundary, device=device,
                                 chroma=chroma_method(psf, kind))


def _dds(batch_consistent: bool) -> Callable[[Any], Callable[..., np.ndarray]]:
    def make(context: Any) -> Callable[..., np.ndarray]:
        from evpipe.nodes.restore.model import load_prior

        model, _ = load_prior(context.checkpoint or "tiny", context.device)
        configs = tuple(_config(s).with_(batch_consistent=batch_consistent) for s in (None, {"kind": "any"}))
        context.options["fitted"] = _fitted(configs)

        def restore(degraded: np.ndarray, psf: np.ndarray, spatial: Spatial, boundary: str) -> np.ndarray:
            config = configs[1] if spatial else configs[0]
            if degraded.ndim == 4 and model.config.image_channels == 1:
                return _colour_with_gray_prior(model, degraded, psf, spatial, boundary, config, context.device)
            op, y, shape = problem(degraded, psf, spatial, boundary)
            return from_clip(dds_restore(model, op, y.to(context.device), shape, config), degraded)

        return restore

    return make


def _cg(context: Any) -> Callable[..., np.ndarray]:
    context.options["fitted"] = _fitted((_config(None), _config({"kind": "any"})))

    def restore(degraded: np.ndarray, psf: np.ndarray, spatial: Spatial, boundary: str) -> np.ndarray:
        op, y, shape = problem(degraded, psf, spatial, boundary)
        return from_clip(cg_only(op, y, shape, _config(spatial)), degraded)

    return restore


def _admm(degraded: np.ndarray, psf: np.ndarray, spatial: Spatial, boundary: str, lam: float) -> torch.Tensor:
    op, y, shape = problem(degraded, psf, spatial, boundary)
    return admm_tv(op, y, back_projection(op, y, shape), lam).clamp(0.0, 1.0)


def _fit_subset(case: dict[str, Any]) -> dict[str, Any]:
    """A temporal-PSF case on every s-th row and column (at most ``ADMM_FIT_PIXELS`` per frame); a case
    with a spatial degradation as it is (not separable per pixel)."""
    if case["spatial"]:
        return case
    height, width = np.shape(case["degraded"])[1:3]
    stride = math.ceil(math.sqrt(height * width / ADMM_FIT_PIXELS))
    if stride <= 1:
        return case
    return {**case, **{key: case[key][:, ::stride, ::stride] for key in ("degraded", "target")}}


def _admm_tv(context: Any) -> Callable[..., np.ndarray]:
    cases = context.fit_samples()
    picks = [_fit_subset(cases[int(i)])
             for i in np.linspace(0, len(cases) - 1, min(ADMM_FIT_CLIPS, len(cases))).round()]

    def fit_mse(lam: float) -> float:
        errors = []
        for case in picks:
            estimate = _admm(case["degraded"], case["psf"], case["spatial"], case["boundary"], lam)
            errors.append(float(torch.mean((estimate - to_clip(case["target"])) ** 2)))
        return float(np.mean(errors))

    best_mse, lam = min((fit_mse(lam), lam) for lam in ADMM_LAMBDAS)
    context.options["fitted"] = {"lambda": lam, "rho": 1.0, "fit_mse": best_mse}

    def restore(degraded: np.ndarray, psf: np.ndarray, spatial: Spatial, boundary: str) -> np.ndarray:
        return from_clip(_admm(degraded, psf, spatial, boundary, lam), degraded)

    return restore


MODELS = {
    "dds": _dds(batch_consistent=True),
    "dds-no-batch-consistent": _dds(batch_consistent=False),
    "cg": _cg,
    "admm-tv": _admm_tv,
}
