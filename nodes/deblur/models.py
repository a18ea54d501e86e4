"""DiffEvent's networks: the event enhancement f(E), the pixel-space diffusion priors of x and r, the
alternating guided sampler (Algorithm 1) and the fused few-step student.

Tensors are NCHW float32, gray: ``blurry`` y (B, 1, H, W) in [0, 1]; ``edi`` the raw EDI double
integral E (B, 1, H, W) > 0 for the exposure (``evpipe.kernels.edi_integral`` with the preset's c);
H and W multiples of :attr:`DiffEvent.multiple` (:mod:`.sampler` pads to that).

Diffusion data units: the sharp frame relative to the blurry one, ``(x - y) · x_scale``, and the
residual as ``r · r_scale`` (each scale = 1 / the standard deviation over the training pairs, so both
priors see unit-variance data). Denoising x - y rather than x means an untrained or uncertain prior
returns the input (x̂_0 = 0 is x = y): the model starts at the blurry frame's quality and learns the
sharpening, which is what a small CPU-trained prior can afford. Both priors are
conditioned on y and f(E) (channels ``2y - 1``, ``log f(E)``, ``2 clip(y / f(E)) - 1``) and denoise
in pixel space: each U-Net works on the 4x4 space-to-depth of the image (16 channels at H/4 x W/4;
an exact, invertible rearrangement, no autoencoder), which is what lets a 128x128 pixel prior train
on a CPU. The U-Net is the predictor's (:class:`evpipe.nodes.predict.models.UNet`).

The student is conditioned on the same three channels plus ``voxel`` (B, event_bins, H, W), the
voxel grid of the exposure's events (``evpipe.kernels.voxel_grid``): E folds the events' timing into
one number per pixel at one contrast threshold, while the synthetic sensors' thresholds vary
(0.15-0.45) and the bins let the network weigh early and late events itself (measured on the tiny
test split with a regression probe: +0.36 dB over the same network without them). It also has a
full-resolution head (``student_head`` channels, ``student_head_layers`` 3x3 convolutions; see
:class:`PixelDenoiser`): in scratch probes (the same head on the 1-step student's output image, data
term only, 2000 steps, a third of the 510 tiny test frames, blurry input 45.05 dB) the student
without it scored 46.01 dB; with a head of 24 channels and 3 layers 46.26, 32 and 5 46.82, 48 and 5
46.94, 32 and 8 (the shipped one) 46.95.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import Tensor, nn

from evpipe.nodes import diffusion
from evpipe.nodes.deblur import guidance as ebrd
from evpipe.nodes.deblur.presets import Guidance
from evpipe.nodes.predict.models import UNet, conv_stack, voxel_input

# E = mean of exp(c ΔU) is positive; clamping keeps log E and y / E finite where events pile up (on the
# tiny training split 99.9% of E lies in [0.7, 4]; a few pixels reach float16 overflow).
E_MIN, E_MAX = 0.05, 10.0
SPACE_TO_DEPTH = 4
COND_CHANNELS = 3
HEAD_LAYERS = 8  # default convolutions of the student's full-resolution head (receptive field 17x17)
STUDENT_E = ("enhanced", "raw")
# Degradation models of the paper's ablation (Table "EBRD model"): what the guidance uses for F and r.
DEGRADATIONS = ("Ex", "fEx", "fEx+r")


class EnhanceNet(nn.Module):
    """f(E): log f(E) = log E + h(log E), h a small fully convolutional net (starts as the identity).

    Working on log E makes the correction multiplicative, as EBRD's E + ΔE is for E > 0, and keeps
    f(E) > 0 (the pseudo-inverse y / f(E) stays defined)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = conv_stack(1, channels, 4)

    def forward(self, edi: Tensor) -> Tensor:
        """f(E) (B, 1, H, W) > 0 from the raw E (B, 1, H, W)."""
        log_e = torch.log(edi.clamp(E_MIN, E_MAX))
        return torch.exp((log_e + self.net(log_e)).clamp(-3.0, 2.3))


class PixelDenoiser(nn.Module):
    """Pixel-space denoiser: (x_t (B, 1, H, W), t (B,), cond (B, cond_channels, H, W)) -> prediction
    (B, 1, H, W).

    The U-Net sees the 4x4 space-to-depth of x_t and of the condition. With ``head_channels`` > 0 a
    small full-resolution convolutional head adds a correction computed from the U-Net's prediction,
    x_t and the condition at every pixel: the space-to-depth U-Net's first layer mixes 4x4 blocks, and
    a sharp edge's position inside its block is what deblurring must get right (the head's last layer
    starts at zero, so it starts as the plain denoiser)."""

    def __init__(self, channels: int, mult: tuple[int, ...], cond_channels: int = COND_CHANNELS,
                 head_channels: int = 0, head_layers: int = HEAD_LAYERS) -> None:
        super().__init__()
        k = SPACE_TO_DEPTH * SPACE_TO_DEPTH
        self.unet = UNet(k, cond_channels * k, channels, mult)
        self.head = conv_stack(2 + cond_channels, head_channels, head_layers) if head_channels else None

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        out = self.unet(F.pixel_unshuffle(x, SPACE_TO_DEPTH), t, F.pixel_unshuffle(cond, SPACE_TO_DEPTH))
        out = F.pixel_shuffle(out, SPACE_TO_DEPTH)
        if self.head is None:
            return out
        return out + self.head(torch.cat([out, x, cond], dim=1))


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a DiffEvent model (saved inside every checkpoint)."""

    enhance_channels: int
    unet_channels: int
    unet_mult: tuple[int, ...]
    edi_c: float
    edi_samples: int
    student_channels: int
    student_mult: tuple[int, ...]
    event_bins: int  # voxel bins of the exposure's events in the student's condition
    prediction: str = "v"
    student_head: int = 0  # channels of the student's full-resolution head (0: none; see PixelDenoiser)
    student_head_layers: int = HEAD_LAYERS  # its 3x3 convolutions
    # What the student's E channels are: "enhanced" f(E) (the priors' condition) or "raw" E, which spares the
    # enhancement net's full-resolution convolutions at run time (the compact student learns the correction).
    student_e: str = "enhanced"

    def __post_init__(self) -> None:
        object.__setattr__(self, "unet_mult", tuple(self.unet_mult))
        object.__setattr__(self, "student_mult", tuple(self.student_mult))
        if self.event_bins < 1:
            raise ValueError(f"ModelConfig.event_bins: must be >= 1, got {self.event_bins!r}")
        if self.student_e not in STUDENT_E:
            raise ValueError(f"ModelConfig.student_e: {self.student_e!r} is not one of {STUDENT_E}")
        if self.student_head_layers < 2:
            raise ValueError(f"ModelConfig.student_head_layers: must be >= 2, got {self.student_head_layers!r}")
        diffusion.check_prediction(self.prediction)

    def to_dict(self) -> dict:
        return asdict(self)


class DiffEvent(nn.Module):
    """The enhancement net and the two priors, with the guided alternating sampler.

    ``student`` is a third denoiser (its own width, conditioned on the voxel grid as well), distilled
    from the guided sampler; :meth:`student_sample` runs it.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.enhance = EnhanceNet(config.enhance_channels)
        self.prior_x = PixelDenoiser(config.unet_channels, config.unet_mult)
        self.prior_r = PixelDenoiser(config.unet_channels, config.unet_mult)
        self.student = PixelDenoiser(config.student_channels, config.student_mult, COND_CHANNELS + config.event_bins,
                                     config.student_head, config.student_head_layers)
        self.schedule = diffusion.CosineSchedule()
        self.register_buffer("x_scale", torch.ones(()))
        self.register_buffer("r_scale", torch.ones(()))

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this."""
        levels = max(len(self.config.unet_mult), len(self.config.student_mult))
        return SPACE_TO_DEPTH * 2 ** (levels - 1)

    # -- conditioning and units ---------------------------------------------------------------------
    def condition(self, blurry: Tensor, edi: Tensor, enhance: bool = True) -> tuple[Tensor, Tensor]:
        """(f(E), cond): the enhanced E (B, 1, H, W) and the priors' condition (B, 3, H, W); with
        ``enhance`` False the raw E (clamped) in place of f(E)."""
        enhanced = self.enhance(edi) if enhance else edi.clamp(E_MIN, E_MAX)
        pseudo_inverse = (blurry / enhanced).clamp(0.0, 1.0)
        cond = torch.cat([blurry * 2.0 - 1.0, torch.log(enhanced), pseudo_inverse * 2.0 - 1.0], dim=1)
        return enhanced, cond

    def x_to_data(self, x: Tensor, blurry: Tensor) -> Tensor:
        return (x - blurry) * self.x_scale

    def x_from_data(self, data: Tensor, blurry: Tensor) -> Tensor:
        return blurry + data / self.x_scale

    def r_to_data(self, r: Tensor) -> Tensor:
        return r * self.r_scale

    def r_from_data(self, data: Tensor) -> Tensor:
        return data / self.r_scale

    # -- sampling -----------------------------------------------------------------------------------
    def _x0_eps(self, net: nn.Module, z: Tensor, t: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = self.schedule.alpha_sigma(t)
        pred = net(z, t.expand(z.shape[0]), cond)
        return diffusion.x0_eps_from_prediction(pred, self.config.prediction, z, alpha, sigma)

    def guided_sample(self, blurry: Tensor, edi: Tensor, noise_x: Tensor, noise_r: Tensor, steps: int,
                      weights: Guidance, degradation: str = "fEx+r") -> Tensor:
        """Algorithm 1 (alternating sampling of x and r with pseudo-inverse guidance), DDIM form.

        Per step t -> s: x̂_0 from x_t and r̂_0 from r_t; x̂_0 moves by -∇L_x(x̂_0, r̂_0) and x_s is the
        DDIM step from that guided x̂_0 (μ_t is linear in x̂_0, so this is the paper's
        μ_t - σ_t²∇L with the per-step weight α_s in place of σ_t²); then x̂_0* from x_s, r̂_0 moves
        by -∇L_r(x̂_0*, r̂_0) and r_s is its DDIM step. x̂_0* is the next step's x̂_0 (one x-prior call
        per step). Deterministic (η = 0): the randomness is the initial noise, (B, 1, H, W) each in
        data units (zeros: the mean path). ``degradation`` selects the ablation: ``Ex`` (F = raw E,
        r = 0), ``fEx`` (F = f(E), r = 0), ``fEx+r`` (the EBRD model). Returns x_0 in [0, 1].
        """
        if degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")
        enhanced, cond = self.condition(blurry, edi)
        operator = edi.clamp(E_MIN, E_MAX) if degradation == "Ex" else enhanced
        use_r = degradation == "fEx+r"
        times = self.schedule.timesteps(steps)
        x, r = noise_x, noise_r
        x0, eps_x = self._x0_eps(self.prior_x, x, times[0], cond)
        r_img = torch.zeros_like(blurry)
        for i in range(steps):
            t, s = times[i], times[i + 1]
            alpha_s, sigma_s = self.schedule.alpha_sigma(s)
            alpha_t, sigma_t = self.schedule.alpha_sigma(t)
            if use_r:
                r0, eps_r = self._x0_eps(self.prior_r, r, t, cond)
                r_img = self.r_from_data(r0)
            x_img = self.x_from_data(x0, blurry)
            x_img = x_img - ebrd.x_objective_grad(blurry, operator, x_img, r_img, weights.s, weights.lam)
            x = diffusion.ddim_step(self.x_to_data(x_img, blurry), eps_x, alpha_s, sigma_s, alpha_t, sigma_t)
            if i < steps - 1:
                x0, eps_x = self._x0_eps(self.prior_x, x, s, cond)
            else:
                x0 = x  # at s = 0 the sample is its own x̂_0
            if use_r:
                x_star = self.x_from_data(x0, blurry)
                r_img = r_img - ebrd.r_objective_grad(blurry, operator, x_star, r_img, weights.s_r, weights.lam_r)
                r = diffusion.ddim_step(self.r_to_data(r_img), eps_r, alpha_s, sigma_s, alpha_t, sigma_t)
        return self.x_from_data(x, blurry).clamp(0.0, 1.0)

    def student_sample(self, blurry: Tensor, edi: Tensor, voxel: Tensor, noise: Tensor, steps: int) -> Tensor:
        """The distilled student: ``steps`` unguided DDIM steps of ``student`` from ``noise`` (B, 1, H, W)
        (data units; zeros at temperature 0), conditioned on (y, f(E)) (or the raw E, ``config.student_e``) and
        the exposure's voxel grid (B, event_bins, H, W). Returns x_0 in [0, 1], unclamped for training."""
        _, cond = self.condition(blurry, edi, enhance=self.config.student_e == "enhanced")
        cond = torch.cat([cond, voxel_input(voxel)], dim=1)
        out = diffusion.ddim_sample(lambda z, t, c: self.student(z, t, c), noise, self.schedule, steps,
                                    prediction=self.config.prediction, cond={"c": cond})
        return self.x_from_data(out, blurry)


class FusedStudent(nn.Module):
    """The node's graph: forward(blurry (B,1,H,W), edi (B,1,H,W), voxel (B,bins,H,W), noise (B,1,H,W))
    -> sharp (B,1,H,W) in [0, 1] (f(E), conditioning and the unrolled ``steps``-step student), exported
    to ONNX."""

    def __init__(self, model: DiffEvent, steps: int) -> None:
        super().__init__()
        self.model = model
        self.steps = steps

    def forward(self, blurry: Tensor, edi: Tensor, voxel: Tensor, noise: Tensor) -> Tensor:
        return self.model.student_sample(blurry, edi, voxel, noise, self.steps).clamp(0.0, 1.0)


class GuidedTeacher(nn.Module):
    """The guided alternating sampler with fixed steps, weights and degradation, as a module (the same
    inputs as :class:`FusedStudent`; the priors are not conditioned on the voxel grid)."""

    def __init__(self, model: DiffEvent, steps: int, weights: Guidance, degradation: str = "fEx+r") -> None:
        super().__init__()
        self.model, self.steps, self.weights, self.degradation = model, steps, weights, degradation

    def forward(self, blurry: Tensor, edi: Tensor, voxel: Tensor, noise: Tensor) -> Tensor:
        return self.model.guided_sample(blurry, edi, noise, torch.zeros_like(noise), self.steps, self.weights,
                                        self.degradation)
