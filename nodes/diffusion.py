"""Shared diffusion machinery, model-agnostic: cosine schedule, parameterisation conversions, the DDIM
sampler and the training losses (denoising and progressive distillation).

Conventions (variance preserving, continuous time ``t`` in [0, 1], ``t = 0`` clean, ``t = 1`` pure
noise)::

    x_t = alpha(t) * x_0 + sigma(t) * eps,   alpha² + sigma² = 1
    v   = alpha * eps - sigma * x_0          (Salimans & Ho, 2022)

A *model* is any callable ``model(x_t, t, **cond) -> prediction`` (k-diffusion style): ``x_t`` a
float tensor (B, ...), ``t`` float (B,) in [0, 1], ``cond`` whatever keyword tensors the model takes;
``prediction`` has ``x_t``'s shape and is ``v``, ``eps`` or ``x0`` as named by the ``prediction``
argument of the functions below. Nothing here knows what the model is or what ``x`` holds (latents,
pixels), so every diffusion model in evpipe shares this one module.

The samplers are plain functions of (model, x, schedule): they unroll into fixed graphs under
``torch.onnx.export`` when the step count is a Python int, which is how fused few-step ONNX graphs
are built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

PREDICTIONS = ("v", "eps", "x0")

Model = Callable[..., Tensor]


@dataclass(frozen=True)
class CosineSchedule:
    """Cosine noise schedule (Nichol & Dhariwal, 2021): alpha(t) = cos(φ(t)) / cos(φ(0)),
    φ(t) = (t + s) / (1 + s) · π/2, so alpha(0) = 1 and alpha(1) = 0 exactly."""

    s: float = 0.008

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t), sigma(t) for ``t`` float in [0, 1] (any shape; same shape out)."""
        t = torch.as_tensor(t, dtype=torch.float32)
        phi0 = self.s / (1 + self.s) * math.pi / 2
        alpha = torch.cos((t + self.s) / (1 + self.s) * math.pi / 2) / math.cos(phi0)
        alpha = alpha.clamp(0.0, 1.0)
        sigma = torch.sqrt((1.0 - alpha * alpha).clamp(min=0.0))
        return alpha, sigma

    def timesteps(self, steps: int, power: float = 1.0) -> Tensor:
        """The ``steps + 1`` times of a ``steps``-step sampler, from 1 down to 0 (float32):
        ``(1 - i / steps) ** power``, evenly spaced for ``power`` 1; a larger power spends more of the
        steps near t = 0."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if not power > 0:
            raise ValueError(f"power must be > 0, got {power!r}")
        return torch.linspace(1.0, 0.0, steps + 1) ** power


def _bcast(coef: Tensor, like: Tensor) -> Tensor:
    """(B,) or scalar coefficient -> shape broadcasting against ``like`` (B, ...)."""
    coef = coef.to(like.dtype)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape[0], *([1] * (like.ndim - 1)))


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def x0_eps_from_prediction(pred: Tensor, prediction: str, x_t: Tensor, alpha: Tensor,
                           sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(x_0, eps) implied by a model output ``pred`` of kind ``prediction`` at noise level (alpha, sigma).

    ``alpha``, ``sigma`` scalars or (B,). For ``eps`` at alpha = 0 (t = 1) x_0 is undefined; it is
    computed with alpha clamped to 1e-4 (use ``v`` prediction where t = 1 matters).
    """
    check_prediction(prediction)
    a, s = _bcast(alpha, x_t), _bcast(sigma, x_t)
    if prediction == "v":
        # In place on fresh products: one full-size temporary fewer per term (HiFI samples 2048² images).
        return (a * x_t).sub_(s * pred), (s * x_t).add_(a * pred)
    if prediction == "eps":
        return (x_t - s * pred) / a.clamp(min=1e-4), pred
    return pred, (x_t - a * pred) / s.clamp(min=1e-4)


def target_for(prediction: str, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """What a model of kind ``prediction`` should output for clean ``x0`` noised with ``eps``."""
    check_prediction(prediction)
    a, s = _bcast(alpha, x0), _bcast(sigma, x0)
    if prediction == "v":
        return a * eps - s * x0
    if prediction == "eps":
        return eps
    return x0


def q_sample(x0: Tensor, t: Tensor, eps: Tensor, schedule: CosineSchedule) -> Tensor:
    """x_t = alpha(t) x_0 + sigma(t) eps for ``t`` (B,)."""
    alpha, sigma = schedule.alpha_sigma(t)
    return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps


def ddim_step(x0: Tensor, eps: Tensor, alpha_s: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor,
              eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """One DDIM update from time t to the earlier time s given the model's (x_0, eps) at t.

    ``eta`` 0 is the deterministic DDIM ODE step; ``eta`` 1 is ancestral (DDPM-like) and then needs
    ``noise`` (same shape as ``x0``).
    """
    if eta == 0.0:
        return (_bcast(alpha_s, x0) * x0).add_(_bcast(sigma_s, x0) * eps)
    if noise is None:
        raise ValueError("ddim_step with eta > 0 needs noise")
    # DDIM's σ_η² = η² (1 − ᾱ_s)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_s), with ᾱ = α².
    ab_t, ab_s = alpha_t * alpha_t, alpha_s * alpha_s
    var = eta**2 * (1 - ab_s) / (1 - ab_t).clamp(min=1e-12) * (1 - ab_t / ab_s.clamp(min=1e-12))
    var = var.clamp(min=0.0)
    direction = torch.sqrt((sigma_s * sigma_s - var).clamp(min=0.0))
    return (_bcast(alpha_s, x0) * x0 + _bcast(direction, x0) * eps + _bcast(torch.sqrt(var), x0) * noise)


def ddim_sample(model: Model, x: Tensor, schedule: CosineSchedule, steps: int, *, prediction: str = "v",
                eta: float = 0.0, cond: Mapping[str, Tensor] | None = None,
                generator: torch.Generator | None = None, t_start: float = 1.0) -> Tensor:
    """Run ``steps`` DDIM steps from ``x`` (noise at time ``t_start``, shape (B, ...)) down to t = 0.

    Returns the sample x_0 (same shape). Time grid: ``steps + 1`` evenly spaced points from
    ``t_start`` to 0 (the grid progressive distillation trains students on). Deterministic for
    ``eta`` 0; ``eta`` > 0 draws noise from ``generator``.
    """
    check_prediction(prediction)
    cond = dict(cond or {})
    times = schedule.timesteps(steps) * t_start
    batch = x.shape[0]
    for i in range(steps):
        t, s = times[i], times[i + 1]
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        # The model output is not kept past this line: its memory is free for the step below.
        x0, eps = x0_eps_from_prediction(model(x, t.expand(batch).to(x.device), **cond), prediction, x, alpha_t,
                                         sigma_t)
        noise = None
        if eta > 0 and i < steps - 1:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = ddim_step(x0, eps, alpha_s, sigma_s, alpha_t, sigma_t, eta if noise is not None else 0.0, noise)
    return x


def diffusion_loss(model: Model, x0: Tensor, schedule: CosineSchedule, *, prediction: str = "v",
                   cond: Mapping[str, Tensor] | None = None, generator: torch.Generator | None = None,
                   norm: str = "l2") -> Tensor:
    """Denoising loss: mean squared (``norm`` "l2") or absolute ("l1", HiFI's choice) error between the
    model output and its target at t ~ U(0, 1).

    ``x0`` (B, ...) clean data; returns a scalar. For ``v`` prediction the plain MSE equals the
    x_0-space MSE weighted by SNR + 1, a good default (Salimans & Ho, 2022).
    """
    check_prediction(prediction)
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    t = torch.rand(x0.shape[0], generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    alpha, sigma = schedule.alpha_sigma(t)
    x_t = _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps
    pred = model(x_t, t, **dict(cond or {}))
    error = pred - target_for(prediction, x0, eps, alpha, sigma)
    return torch.mean(error.abs() if norm == "l1" else error**2)


def progressive_distillation_loss(student: Model, teacher: Model, x0: Tensor, schedule: CosineSchedule,
                                  student_steps: int, *, prediction: str = "v",
                                  cond: Mapping[str, Tensor] | None = None,
                                  generator: torch.Generator | None = None) -> Tensor:
    """One progressive-distillation loss (Salimans & Ho, 2022): a ``student_steps``-step student
    learns to cover two DDIM steps of the ``2 * student_steps``-step teacher in one.

    A student time t = i / N (i uniform in 1..N) is drawn per sample; the teacher runs DDIM
    t -> t - 1/(2N) -> t - 1/N from x_t; the student's x_0 target is the x̃ that makes one DDIM step
    of the student land on the teacher's result::

        x̃ = (z_s - (σ_s/σ_t) z_t) / (α_s - (σ_s/σ_t) α_t)

    The loss is the x_0-space MSE weighted by max(SNR(t), 1) ("truncated SNR"), which stays finite
    at t = 1. Returns a scalar; gradients flow into ``student`` only.
    """
    check_prediction(prediction)
    cond = dict(cond or {})
    n = student_steps
    batch = x0.shape[0]
    i = torch.randint(1, n + 1, (batch,), generator=generator, device=x0.device)
    t = i.to(torch.float32) / n
    t_mid, s = t - 0.5 / n, t - 1.0 / n
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    z_t = _bcast(alpha_t, x0) * x0 + _bcast(sigma_t, x0) * eps
    with torch.no_grad():
        z = z_t
        for a, b in ((t, t_mid), (t_mid, s)):
            alpha_a, sigma_a = schedule.alpha_sigma(a)
            alpha_b, sigma_b = schedule.alpha_sigma(b)
            x0_hat, eps_hat = x0_eps_from_prediction(teacher(z, a, **cond), prediction, z, alpha_a, sigma_a)
            z = ddim_step(x0_hat, eps_hat, alpha_b, sigma_b, alpha_a, sigma_a)
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        ratio = sigma_s / sigma_t
        target = (z - _bcast(ratio, z) * z_t) / _bcast(alpha_s - ratio * alpha_t, z)
    x0_student, _ = x0_eps_from_prediction(student(z_t, t, **cond), prediction, z_t, alpha_t, sigma_t)
    weight = (alpha_t * alpha_t / (sigma_t * sigma_t).clamp(min=1e-12)).clamp(min=1.0)
    return torch.mean(_bcast(weight, x0) * (x0_student - target) ** 2)
