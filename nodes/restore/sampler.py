"""DDS video restoration (Kwon & Ye: decomposed diffusion sampling with an image prior, time as the batch).

Each reverse step of an ``nfe``-step sampler on the shared cosine schedule
(:mod:`evpipe.nodes.diffusion`), the L frames of a clip being the batch of an image diffusion model:

1. Tweedie: x̂0 (L, C, H, W) per frame from the model's prediction at x_t (clipped to the data range);
2. data consistency over the whole clip: ``cg_steps`` conjugate-gradient steps on
   ‖y − A x‖² + γ‖x − x̂0‖² started at x̂0 (γ = 0 is the paper's form: the update stays in the Krylov
   subspace around x̂0), in image units [0, 1];
3. DDIM(η) re-noising of the updated x̂0 to the next time, with the model's ε̂ as the deterministic
   direction and, when ``batch_consistent``, the *same* stochastic noise for every frame — as is the
   initial noise. Without it (the paper's ablation) every frame draws its own noise.

The output is the last data-consistent x̂0, clipped to [0, 1]. Paper defaults: ``cg_steps`` 5,
η 0.15, 20 NFE for temporal PSFs; η 0.8, 100 NFE with a spatial degradation (:data:`PAPER_TEMPORAL`,
:data:`PAPER_SPATIOTEMPORAL`), on the paper's even DDIM grid t_i = 1 − i/NFE (``time_power`` 1).
A larger ``time_power`` ends the grid nearer t = 0, so the last x̂0 carries less of the prior's
denoising error: better on noiseless measurements, worse on quantised ones, where the late steps'
CG fits the rounding noise and no denoising step follows (see ``benchmarks/RESULTS.md``).
:func:`cg_only` is the paper's ablation without the prior: the same
``nfe`` rounds of ``cg_steps`` CG steps, from the back-projection ``Aᵀy / Aᵀ(A 1)``.

Only the DDS loop lives here; the schedule, the Tweedie/ε conversion and the DDIM update are the
shared ones of :mod:`evpipe.nodes.diffusion`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from tqdm import tqdm

from evpipe.nodes import diffusion
from evpipe.nodes.restore.model import ImagePrior, from_model, to_model
from evpipe.nodes.restore.operators import LinearOperator, data_consistency


@dataclass(frozen=True)
class DDSConfig:
    """Sampler settings (see the module docstring)."""

    nfe: int = 20
    cg_steps: int = 5
    eta: float = 0.15
    gamma: float = 0.0
    time_power: float = 1.0
    batch_consistent: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.nfe, int) or self.nfe < 1:
            raise ValueError(f"DDSConfig.nfe must be a positive int, got {self.nfe!r}")
        if self.cg_steps < 0 or self.gamma < 0 or not 0.0 <= self.eta <= 1.0 or not self.time_power > 0:
            raise ValueError(f"DDSConfig: need cg_steps >= 0, gamma >= 0, 0 <= eta <= 1, time_power > 0; got {self}")

    def with_(self, **changes: object) -> DDSConfig:
        return replace(self, **changes)


PAPER_TEMPORAL = DDSConfig(nfe=20, cg_steps=5, eta=0.15)
PAPER_SPATIOTEMPORAL = DDSConfig(nfe=100, cg_steps=5, eta=0.8)


def sampler_noise(shape: tuple[int, ...], generator: torch.Generator, batch_consistent: bool) -> Tensor:
    """float32 N(0, I) noise of ``shape`` (L, C, H, W): one draw repeated for every frame when
    ``batch_consistent`` (a contiguous copy), else independent per frame."""
    if batch_consistent:
        return torch.randn((1, *shape[1:]), generator=generator).expand(shape).contiguous()
    return torch.randn(shape, generator=generator)


def back_projection(op: LinearOperator, y: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
    """Aᵀy / Aᵀ(A 1), 0 where nothing was measured: a start in image units."""
    weight = op.adjoint(op.forward(torch.ones(shape, device=y.device)))
    return torch.where(weight > 1e-6, op.adjoint(y) / weight.clamp(min=1e-6), torch.zeros(()))


@torch.no_grad()
def cg_only(op: LinearOperator, y: Tensor, shape: tuple[int, int, int, int], config: DDSConfig = PAPER_TEMPORAL
            ) -> Tensor:
    """The sampler's data-consistency steps without the diffusion updates: ``nfe`` rounds of
    ``cg_steps`` CG steps, each round restarted at the previous result; clipped to [0, 1]."""
    x = back_projection(op, y, shape)
    for _ in range(config.nfe):
        x = data_consistency(op, y, x, config.cg_steps, config.gamma)
    return x.clamp(0.0, 1.0)


@torch.no_grad()
def dds_restore(model: ImagePrior, op: LinearOperator, y: Tensor, shape: tuple[int, int, int, int],
                config: DDSConfig = PAPER_TEMPORAL, progress: bool = False,
                network: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """Restore a clip of ``shape`` (L, C, H, W) from measurements ``y`` = A(clip) (float32, the shape
    ``op.measurement_shape(shape)``, image units). Returns float32 (L, C, H, W) in [0, 1] on ``y``'s
    device. Deterministic given ``config.seed``. ``network(x, t)`` evaluates the prior: the restore
    node passes its engine (:class:`evpipe.nodes.model_engines.NetworkEngines`); default ``model`` itself,
    eagerly (training and evaluation)."""
    if tuple(y.shape) != tuple(op.measurement_shape(shape)):
        raise ValueError(f"dds_restore: measurements have shape {tuple(y.shape)}, the operator gives "
                         f"{op.measurement_shape(shape)} for a clip of {shape}")
    multiple = model.multiple
    if shape[-2] % multiple or shape[-1] % multiple:
        raise ValueError(f"dds_restore: frame size {shape[-2]}x{shape[-1]} must be a multiple of {multiple}")
    schedule = diffusion.CosineSchedule()
    generator = torch.Generator().manual_seed(config.seed)
    prediction = model.config.prediction
    device = y.device
    x = sampler_noise(shape, generator, config.batch_consistent).to(device)
    times = schedule.timesteps(config.nfe, config.time_power)
    x0 = x
    for i in tqdm(range(config.nfe), desc="DDS", unit="step", disable=not progress, leave=False):
        alpha_t, sigma_t = schedule.alpha_sigma(times[i])
        alpha_s, sigma_s = schedule.alpha_sigma(times[i + 1])
        pred = (network or model)(x, times[i].expand(shape[0]).to(device))
        x0, eps = diffusion.x0_eps_from_prediction(pred, prediction, x, alpha_t, sigma_t)
        x0 = x0.clamp(-1.0, 1.0)
        x0 = to_model(data_consistency(op, y, from_model(x0), config.cg_steps, config.gamma))
        if i == config.nfe - 1:
            break
        noise = sampler_noise(shape, generator, config.batch_consistent).to(device) if config.eta > 0 else None
        x = diffusion.ddim_step(x0, eps, alpha_s, sigma_s, alpha_t, sigma_t, config.eta if noise is not None
                                else 0.0, noise)
    return from_model(x0).clamp(0.0, 1.0)
