"""What the staged model trainers in ``tools/`` share (predictor, deblurrer): the command line, the
optimisation loop and the data term their students learn from."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

# Floor of the per-sample MSE in log_mse: 60 dB, about where the stillest synthetic frames are.
LOG_FLOOR = 1e-6


def sample_mse(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The MSE of every sample of a batch (B, ...): shape (B,)."""
    return (estimate - reference).square().flatten(1).mean(1)


def log_mse(estimate: torch.Tensor, reference: torch.Tensor, floor: torch.Tensor | float = LOG_FLOOR) -> torch.Tensor:
    """Mean over the batch (B, ...) of log10(per-sample MSE + floor): -PSNR / 10 above the floor, so
    the loss weighs every frame as the mean-PSNR evaluations do. A plain MSE is dominated by the frames
    with the largest errors: on the tiny deblur test frames an MSE-trained probe of the student (600
    steps) averaged 43.22 dB, below the blurry input's 44.69, with a tenth of the frames 8.5 dB or more
    below their input; the same probe on this loss (2000 steps) averaged 45.18 dB. ``floor`` (a scalar or
    one value per sample) is the error below which a sample stops counting."""
    return torch.log10(sample_mse(estimate, reference) + floor).mean()


class Schedule(Protocol):
    """What the loop needs of a stage's schedule (each model's ``presets.StageSchedule`` has it)."""

    iters: int
    lr: float


def optimise(params: list[torch.nn.Parameter], schedule: Schedule, loss_fn: Callable[[int], torch.Tensor],
             desc: str, *, lr_at: Callable[[Schedule, int], float],
             on_step: Callable[[int], None] | None = None) -> list[float]:
    """Adam over ``params`` for ``schedule.iters`` steps of ``loss_fn(step)`` (a scalar loss), with the
    learning rate ``lr_at(schedule, step)`` and gradients clipped to norm 1; returns the loss per step.
    ``on_step(step)`` runs after each update (e.g. an EMA)."""
    optimiser = torch.optim.Adam(params, lr=schedule.lr)
    losses: list[float] = []
    bar = tqdm(range(schedule.iters), desc=desc, unit="it", mininterval=1.0)
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = lr_at(schedule, step)
        loss = loss_fn(step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4g}")
    return losses


def stage_parser(doc: str, presets: Sequence[str], stages: Sequence[str]) -> argparse.ArgumentParser:
    """The arguments every staged trainer takes: --preset, --stage (one of ``stages`` or ``all``),
    --dataset, --out, --seed and --iters; the module docstring ``doc`` is the help."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--preset", default="tiny", choices=sorted(presets))
    parser.add_argument("--stage", required=True, choices=[*stages, "all"])
    parser.add_argument("--dataset", default=None, help="dataset directory (default: the tiny dataset's location)")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint directory (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, default=None,
                        help="override every stage's iteration count (quick runs and tests)")
    return parser


def with_iters(preset: Any, schedules: Sequence[str], iters: int | None, parser: argparse.ArgumentParser) -> Any:
    """``preset`` (a frozen dataclass) with every schedule field named in ``schedules`` set to ``iters``
    steps (unchanged when ``iters`` is None; a parser error when it is below 1)."""
    if iters is None:
        return preset
    if iters < 1:
        parser.error(f"--iters must be >= 1, got {iters}")
    return dataclasses.replace(preset, **{name: dataclasses.replace(getattr(preset, name), iters=iters)
                                          for name in schedules})
