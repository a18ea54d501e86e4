"""Checkpoint files of the DESSERT predictor and assembling a runnable model from them.

A checkpoint directory (``nodes/predict/checkpoints/<preset>/`` for the shipped ones) holds one
file per trained part, each a ``torch.save`` dict with fp16 weights (half the size on disk; they
are loaded as float32, and every number reported was measured with the loaded weights)::

    ae.pt            {"state", "stats": {latent_scale, residual_scale, voxel_scale, ei_c, ei_eps,
                      ei_residual_scale}, "preset", "bins"}
    ervae.pt         {"state"}                                  the ER-VAE event encoder
    unet-<variant>.pt {"state", "config": ModelConfig dict, "steps": sampler steps[, "head"]}

``head`` (weights of the full-resolution head, fp16 like ``state``) is present exactly when the
config's ``head_channels`` > 0: ``train_predictor.py --stage head`` adds it to the node's student.

Variants: ``teacher`` (DDIM, ``teacher_steps``), ``4step``/``2step``/``1step`` (distilled students),
``4step-coarse2``/``4step-coarse4`` (the 4-step student's weights with its latent path at 1/2 or 1/4
resolution and its head at full resolution: ``Dessert.coarse``; the real-time deployment variants),
and the ablations ``no-ervae`` (raw events into the U-Net), ``no-dlt`` (trained on 1-frame gaps
only), ``regression`` (same U-Net, deterministic) and ``short`` (the full model at the ablations'
training budget, their fair reference).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from evpipe.nodes.predict.models import Dessert, ModelConfig

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
# Deployment variants without weights of their own: (the trained variant, ``Dessert.coarse``).
COARSE_VARIANTS = {"4step-coarse2": ("4step", 2), "4step-coarse4": ("4step", 4)}
VARIANTS = ("teacher", "4step", "2step", "1step", "no-ervae", "no-dlt", "regression", "short", *COARSE_VARIANTS)


def weights_variant(variant: str) -> str:
    """The trained variant whose ``unet-<variant>.pt`` a variant runs (itself, except the coarse ones)."""
    return COARSE_VARIANTS.get(variant, (variant, 1))[0]


class CheckpointError(ValueError):
    """A checkpoint directory or file that is missing or does not fit together."""


def resolve_dir(checkpoint: str | Path) -> Path:
    """A shipped preset name (``tiny``) or a directory path -> the directory, checked to exist."""
    path = Path(checkpoint)
    if not path.is_dir() and (CHECKPOINTS / str(checkpoint)).is_dir():
        path = CHECKPOINTS / str(checkpoint)
    if not path.is_dir():
        shipped = sorted(p.name for p in CHECKPOINTS.iterdir() if p.is_dir()) if CHECKPOINTS.is_dir() else []
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} is neither a shipped checkpoint "
                              f"({', '.join(shipped) or 'none'}) nor a directory")
    return path


WEIGHTS = ("state", "head")  # the entries of a part file that hold weights


def half_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s weights as fp16 (scalar buffers and integer tensors keep their dtype)."""
    return {k: (v.half() if v.is_floating_point() and v.ndim > 0 else v).clone() for k, v in
            module.state_dict().items()}


def save_part(path: Path, module: torch.nn.Module, **extra: Any) -> None:
    """Write ``module``'s weights (``half_state``) plus ``extra``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": half_state(module), **extra}, path)


def load_part(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file {path} (train it with tools/train_predictor.py)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(data, dict) or "state" not in data:
        raise CheckpointError(f"{path} is not a predictor checkpoint (no 'state')")
    for key in WEIGHTS:
        if key in data:
            data[key] = {k: v.float() if v.is_floating_point() else v for k, v in data[key].items()}
    return data


def load_module(module: torch.nn.Module, path: Path) -> dict[str, Any]:
    data = load_part(path)
    try:
        module.load_state_dict(data["state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit the model: {exc}") from None
    return data


def load_model(variant: str = "4step", checkpoint: str | Path = "tiny", compose: str | None = None,
               integration: tuple[float, float] | None = None) -> tuple[Dessert, int]:
    """Assemble the ``variant`` model from a checkpoint directory; returns (model in eval mode, steps).

    ``compose`` overrides how the prediction is formed from the residual (``latent`` or ``pixel``);
    ``integration`` = (c, eps) recalibrates the event-integration base for another sensor (the
    checkpoint's were fitted on its training data).
    """
    if variant not in VARIANTS:
        raise CheckpointError(f"unknown predictor variant {variant!r} (known: {', '.join(VARIANTS)})")
    directory = resolve_dir(checkpoint)
    variant, coarse = COARSE_VARIANTS.get(variant, (variant, 1))
    unet = load_part(directory / f"unet-{variant}.pt")
    config = ModelConfig(**unet["config"])
    if compose is not None:
        config = dataclasses.replace(config, compose=compose)
    model = Dessert(config)
    ae = load_module(model.ae, directory / "ae.pt")
    model.set_stats(**ae["stats"])
    if integration is not None:
        c, eps = integration
        if not (c > 0 and eps > 0):
            raise CheckpointError(f"event-integration calibration needs c > 0 and eps > 0, got c={c}, eps={eps}")
        model.ei_c.fill_(c)
        model.ei_eps.fill_(eps)
    if model.event_encoder is not None:
        load_module(model.event_encoder, directory / "ervae.pt")
    path = directory / f"unet-{variant}.pt"
    if (model.head is not None) != ("head" in unet):
        raise CheckpointError(f"{path}: its config has head_channels={config.head_channels} but the file "
                              f"{'lacks' if model.head is not None else 'has'} head weights")
    try:
        model.unet.load_state_dict(unet["state"])
        if model.head is not None:
            model.head.load_state_dict(unet["head"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit its config: {exc}") from None
    if coarse > 1 and model.head is None:
        raise CheckpointError(f"{path}: a coarse variant needs the student's full-resolution head, which it lacks")
    model.coarse = coarse
    return model.eval().requires_grad_(False), int(unet["steps"])
