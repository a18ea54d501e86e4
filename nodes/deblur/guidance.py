"""The EBRD degradation model and the analytic guidance gradients of DiffEvent's alternating sampler.

EBRD (Event Blurry Residual Degradation): a blurry frame y is ``y = f(E) · x + r`` with x the sharp
frame, E the EDI double integral of the exposure's events, f a learned enhancement of E and r a
residual image. All images here are float tensors in intensity units (x, y in [0, 1]; r signed),
shape (B, 1, H, W) or any shape that broadcasts; sums run over every element (per-pixel gradients do
not depend on the image size).

Guidance objectives (Algorithm 1 of the paper, lines 5 and 8)::

    L_x = s  ||y - F x - r||²  +  λ  TV(x)        (gradient in x)
    L_r = s' ||y - F x - r||²  +  λ' ||r||_1       (gradient in r)

TV and L1 are smoothed with the Charbonnier function φ(d) = sqrt(d² + ε²) (ε = :data:`SMOOTH`) so
their gradients are defined everywhere: TV(x) = Σ φ(x[i, j+1] - x[i, j]) + Σ φ(x[i+1, j] - x[i, j])
(anisotropic, forward differences), ||r||_1 = Σ φ(r). The gradients below are closed forms — no
autograd, no backprop through a network — so the guided sampler is a plain feed-forward graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

SMOOTH = 1e-3


def degrade(x: Tensor, enhanced: Tensor, r: Tensor | None = None) -> Tensor:
    """EBRD forward model ``f(E) · x + r`` (``r`` None: ``f(E) · x``, the residual-free model)."""
    blurry = enhanced * x
    return blurry if r is None else blurry + r


def charbonnier(d: Tensor) -> Tensor:
    """φ(d) = sqrt(d² + ε²), elementwise."""
    return torch.sqrt(d * d + SMOOTH * SMOOTH)


def charbonnier_grad(d: Tensor) -> Tensor:
    """φ'(d) = d / sqrt(d² + ε²), elementwise."""
    return d / torch.sqrt(d * d + SMOOTH * SMOOTH)


def total_variation(x: Tensor) -> Tensor:
    """Smoothed anisotropic TV of ``x`` (..., H, W), summed over everything: a scalar."""
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return charbonnier(dx).sum() + charbonnier(dy).sum()


def total_variation_grad(x: Tensor) -> Tensor:
    """Gradient of :func:`total_variation` w.r.t. ``x``: same shape.

    Each forward difference d = x[k+1] - x[k] contributes φ'(d) to x[k+1] and -φ'(d) to x[k].
    """
    gx = charbonnier_grad(x[..., :, 1:] - x[..., :, :-1])
    gy = charbonnier_grad(x[..., 1:, :] - x[..., :-1, :])
    grad = torch.zeros_like(x)
    grad[..., :, 1:] += gx
    grad[..., :, :-1] -= gx
    grad[..., 1:, :] += gy
    grad[..., :-1, :] -= gy
    return grad


def x_objective(y: Tensor, enhanced: Tensor, x: Tensor, r: Tensor, s: float, lam: float) -> Tensor:
    """L_x = s ||y - F x - r||² + λ TV(x): a scalar (the quantity whose gradient the sampler follows)."""
    return s * (y - degrade(x, enhanced, r)).square().sum() + lam * total_variation(x)


def r_objective(y: Tensor, enhanced: Tensor, x: Tensor, r: Tensor, s_r: float, lam_r: float) -> Tensor:
    """L_r = s' ||y - F x - r||² + λ' ||r||_1 (smoothed): a scalar."""
    return s_r * (y - degrade(x, enhanced, r)).square().sum() + lam_r * charbonnier(r).sum()


def x_objective_grad(y: Tensor, enhanced: Tensor, x: Tensor, r: Tensor, s: float, lam: float) -> Tensor:
    """∇_x L_x = -2 s F (y - F x - r) + λ ∇TV(x), shape of ``x``."""
    grad = -2.0 * s * enhanced * (y - degrade(x, enhanced, r))
    return grad + lam * total_variation_grad(x) if lam else grad


def r_objective_grad(y: Tensor, enhanced: Tensor, x: Tensor, r: Tensor, s_r: float, lam_r: float) -> Tensor:
    """∇_r L_r = -2 s' (y - F x - r) + λ' φ'(r), shape of ``r``."""
    return -2.0 * s_r * (y - degrade(x, enhanced, r)) + lam_r * charbonnier_grad(r)
