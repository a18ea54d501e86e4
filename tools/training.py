"""The optimisation loop the model trainers in ``tools/`` share (predictor, deblurrer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm


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
