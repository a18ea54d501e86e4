"""DDS restoration models for ``python -m evpipe.tools.evaluate --task restore --model NAME``.

Names: ``dds`` (the sampler with batch-consistent noise, :data:`~evpipe.nodes.restore.sampler.PAPER_TEMPORAL`
settings unless the NFE is overridden), ``dds-no-batch-consistent`` (the paper's ablation: independent
noise per frame), ``cg`` (CG alone: the same M × NFE CG iterations, restarted every M like the sampler's,
without the diffusion updates) and ``admm-tv`` (ADMM on ½‖y − Ax‖² + λ‖∇_t x‖₁, 30 × 20 iterations,
λ chosen on training clips). CG-only and ADMM-TV start from the normalised back-projection
``Aᵀy / Aᵀ(A 1)`` (the degraded clip itself for a temporal PSF), a stronger start than zeros.

``--checkpoint`` selects the prior (default the shipped ``tiny``). The environment variable
``EVPIPE_DDS_NFE`` overrides the NFE of every DDS model and of the CG-only baseline together (so both
keep the same number of CG iterations); the value used is recorded in the report's fitted parameters.
Every DDS model is seeded with 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from evpipe.nodes.restore.operators import LinearOperator, TemporalPSF, admm_tv
from evpipe.nodes.restore.sampler import PAPER_TEMPORAL, DDSConfig, back_projection, cg_only, dds_restore

ADMM_LAMBDAS = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2)
ADMM_FIT_CLIPS = 3


def _config() -> DDSConfig:
    value = os.environ.get("EVPIPE_DDS_NFE")
    if value is None:
        return PAPER_TEMPORAL
    try:
        return PAPER_TEMPORAL.with_(nfe=int(value))
    except ValueError as error:
        raise ValueError(f"EVPIPE_DDS_NFE={value!r}: {error}") from error


def to_clip(frames: np.ndarray) -> torch.Tensor:
    """(L, H, W) or (L, H, W, 3) float32 -> (L, C, H, W) tensor."""
    array = np.asarray(frames, dtype=np.float32)
    tensor = torch.from_numpy(array[:, None] if array.ndim == 3 else np.moveaxis(array, -1, 1).copy())
    return tensor.contiguous()


def from_clip(clip: torch.Tensor, like: np.ndarray) -> np.ndarray:
    """(L, C, H, W) tensor -> float32 array shaped like ``like``."""
    array = clip.detach().cpu().numpy().astype(np.float32)
    return array[:, 0] if like.ndim == 3 else np.ascontiguousarray(np.moveaxis(array, 1, -1))


def _dds(batch_consistent: bool) -> Callable[[Any], Callable[..., np.ndarray]]:
    def make(context: Any) -> Callable[..., np.ndarray]:
        from evpipe.nodes.restore.model import load_prior

        model, _ = load_prior(context.checkpoint or "tiny", context.device)
        config = _config().with_(batch_consistent=batch_consistent)
        context.options["fitted"] = {"nfe": config.nfe, "cg_steps": config.cg_steps, "eta": config.eta}

        def restore(degraded: np.ndarray, psf: np.ndarray) -> np.ndarray:
            y = to_clip(degraded).to(context.device)
            op = TemporalPSF(psf, len(y))
            return from_clip(dds_restore(model, op, y, tuple(y.shape), config), degraded)

        return restore

    return make


def _cg(context: Any) -> Callable[..., np.ndarray]:
    config = _config()
    context.options["fitted"] = {"nfe": config.nfe, "cg_steps": config.cg_steps}

    def restore(degraded: np.ndarray, psf: np.ndarray) -> np.ndarray:
        y = to_clip(degraded)
        return from_clip(cg_only(TemporalPSF(psf, len(y)), y, tuple(y.shape), config), degraded)

    return restore


def _admm(op: LinearOperator, y: torch.Tensor, lam: float) -> torch.Tensor:
    return admm_tv(op, y, back_projection(op, y, tuple(y.shape)), lam).clamp(0.0, 1.0)


def _admm_tv(context: Any) -> Callable[..., np.ndarray]:
    cases = context.fit_samples()
    picks = [cases[int(i)] for i in np.linspace(0, len(cases) - 1, min(ADMM_FIT_CLIPS, len(cases))).round()]

    def fit_mse(lam: float) -> float:
        errors = []
        for case in picks:
            y = to_clip(case["degraded"])
            estimate = _admm(TemporalPSF(case["psf"], len(y)), y, lam)
            errors.append(float(torch.mean((estimate - to_clip(case["target"])) ** 2)))
        return float(np.mean(errors))

    best_mse, lam = min((fit_mse(lam), lam) for lam in ADMM_LAMBDAS)
    context.options["fitted"] = {"lambda": lam, "rho": 1.0, "fit_mse": best_mse}

    def restore(degraded: np.ndarray, psf: np.ndarray) -> np.ndarray:
        y = to_clip(degraded)
        return from_clip(_admm(TemporalPSF(psf, len(y)), y, lam), degraded)

    return restore


MODELS = {
    "dds": _dds(batch_consistent=True),
    "dds-no-batch-consistent": _dds(batch_consistent=False),
    "cg": _cg,
    "admm-tv": _admm_tv,
}
