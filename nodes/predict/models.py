"""DESSERT's networks: KL image autoencoder, ER-VAE event encoder, conditional U-Net, and the composite.

Tensors are NCHW float32. Images are gray, (B, 1, H, W) in [0, 1]; voxel grids (B, bins, H, W)
(E2VID voxel grids, raw event counts); latents (B, 4, H/4, W/4). H and W must be multiples of
``Dessert.multiple`` (16 for the presets; 8 and 16 for their coarse2 and coarse4 variants);
:mod:`evpipe.nodes.predict.sampler` pads to that.

Latent units. The autoencoder's posterior mean is multiplied by ``latent_scale`` (1 / its standard
deviation over the training frames) so latents have unit variance; the residual
``z_res = z_target - z_anchor`` is further multiplied by ``residual_scale`` (1 / its standard
deviation over the DLT training pairs) so the diffusion model's clean data has unit variance. The
ER-VAE's ``z_event`` lives in those normalised residual units, which is what makes the alignment
loss ``||z_event - z_res||²`` and the U-Net's conditioning commensurate.

Conditioning by channel concatenation (not cross-attention): ``z_event`` and ``z_anchor`` lie on the
same 1/4-resolution grid as the residual being denoised, so the information for each latent pixel
sits at that pixel; concatenation hands it over at zero cost in parameters and FLOPs, keeps the
U-Net fully convolutional (any sensor size at run time) and exports to ONNX as a plain Concat.
Cross-attention pays for a learned correspondence search (O(N²) in latent pixels) that this aligned
conditioning does not need; it suits unaligned tokens such as text.

The node's student has one part the paper does not: a full-resolution head (``head_channels``,
:data:`HEAD_LAYERS` 3x3 convolutions) after the composed image, trained alone on the frozen
student's predictions. Everything the latent path produces passes through a decoder from 1/4
resolution; the head sees the prediction, the event-integration base, the anchor and the voxel grid
at every pixel and corrects what that path blurs or misplaces (an edge's position inside a 4x4
block). Measured on the tiny preset it adds about 2 dB at k = 1 for about 1 ms of ONNX Runtime time
per 128x128 frame (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import Tensor, nn

from evpipe.nodes import diffusion

# Voxel counts beyond ±8 events per bin are rare (edges of fast motion); clipping keeps a full-resolution
# network's input bounded on real sensors with hot pixels.
VOXEL_CLIP = 8.0
HEAD_LAYERS = 5  # convolutions of the predictor's full-resolution head (receptive field 11x11)
# The head's correction is scaled down: its first Adam steps then move the prediction by hundredths,
# not tenths, and the frozen prediction it corrects stays the starting point.
HEAD_GAIN = 0.1


def conv_stack(cin: int, channels: int, layers: int) -> nn.Sequential:
    """``layers`` 3x3 convolutions at the input's resolution, SiLU between, cin -> channels -> ... -> 1.
    The last layer starts at zero, so a fresh stack is the zero function: a correction added by it
    starts as no correction."""
    modules: list[nn.Module] = [nn.Conv2d(cin, channels, 3, padding=1), nn.SiLU()]
    for _ in range(layers - 2):
        modules += [nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU()]
    stack = nn.Sequential(*modules, nn.Conv2d(channels, 1, 3, padding=1))
    nn.init.zeros_(stack[-1].weight)
    nn.init.zeros_(stack[-1].bias)
    return stack


def voxel_input(voxel: Tensor) -> Tensor:
    """A voxel grid (B, bins, H, W) of raw counts as a full-resolution network's input: clipped to
    ±``VOXEL_CLIP`` and halved (most counts then lie in [-1, 1])."""
    return voxel.clamp(-VOXEL_CLIP, VOXEL_CLIP) / 2.0


def _groups(channels: int) -> int:
    for groups in (8, 4, 2, 1):
        if channels % groups == 0:
            return groups
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual path; adds a projected time embedding when given."""

    def __init__(self, cin: int, cout: int, emb_dim: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout) if emb_dim else None
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head spatial self-attention (used at the coarsest U-Net level of the larger preset)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (B, HW, HW)
        return x + self.out((v @ attn.transpose(1, 2)).reshape(b, c, h, w))


class Encoder(nn.Module):
    """Convolutional encoder: (B, cin, H, W) -> (B, 2·zc, H/2^L, W/2^L), the posterior mean and
    log-variance of a diagonal Gaussian. Each level halves the resolution with a strided conv and
    doubles the width, then one residual block: no residual block runs at full resolution, which is
    where a CPU spends its time."""

    def __init__(self, cin: int, channels: int, latent_channels: int, levels: int = 2) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cin, channels, 3, padding=1)
        blocks: list[nn.Module] = []
        c = channels
        for _ in range(levels):
            blocks += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), ResBlock(2 * c, 2 * c)]
            c *= 2
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, 2 * latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv_out(F.silu(self.norm(self.blocks(self.conv_in(x)))))
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


class EventEncoder(nn.Module):
    """ER-VAE encoder: voxel grid (B, bins, H, W) -> posterior (mean, logvar) of z_event, each
    (B, zc, H/4, W/4). Space-to-depth by 2 first (events are sparse: a 2x2 block loses nothing a conv
    would not mix anyway), then one strided level, so no convolution runs at full resolution."""

    def __init__(self, bins: int, channels: int, latent_channels: int) -> None:
        super().__init__()
        self.encoder = Encoder(4 * bins, 2 * channels, latent_channels, levels=1)

    def forward(self, voxel: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(F.pixel_unshuffle(voxel, 2))


class Decoder(nn.Module):
    """Mirror of :class:`Encoder`: (B, zc, h, w) -> (B, cout, h·2^L, w·2^L); each level is a residual
    block, nearest-neighbour ×2 upsampling and a conv that halves the width."""

    def __init__(self, latent_channels: int, channels: int, cout: int, levels: int = 2) -> None:
        super().__init__()
        c = channels * 2**levels
        self.conv_in = nn.Conv2d(latent_channels, c, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        for _ in range(levels):
            self.blocks.append(ResBlock(c, c))
            self.ups.append(nn.Conv2d(c, c // 2, 3, padding=1))
            c //= 2
        self.norm = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, cout, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block, up in zip(self.blocks, self.ups, strict=True):
            h = up(F.interpolate(block(h), scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm(h)))


class AutoEncoder(nn.Module):
    """KL autoencoder for gray frames: (B, 1, H, W) in [0, 1] <-> raw latents (B, zc, H/4, W/4)."""

    def __init__(self, channels: int, latent_channels: int = 4) -> None:
        super().__init__()
        self.encoder = Encoder(1, channels, latent_channels)
        self.decoder = Decoder(latent_channels, channels, 1)

    def encode(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior (mean, logvar), each (B, zc, H/4, W/4), of ``image`` in [0, 1]."""
        return self.encoder(image * 2.0 - 1.0)

    def decode(self, z: Tensor) -> Tensor:
        """Image (B, 1, H, W), nominally [0, 1] (not clamped: training sees the raw output)."""
        return self.decoder(z) * 0.5 + 0.5


def sample_posterior(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over channels and pixels, averaged over the batch."""
    return 0.5 * torch.sum(mean * mean + logvar.exp() - 1.0 - logvar) / mean.shape[0]


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (B, dim) of diffusion times ``t`` (B,) in [0, 1] (scaled by 1000 like DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class UNet(nn.Module):
    """Conditional U-Net on latents: (x (B, out, h, w), t (B,), cond (B, cc, h, w)) -> (B, out, h, w).

    ``mult`` gives the width of each level relative to ``channels``; one residual block per level
    and direction; h and w must be multiples of 2^(len(mult) - 1).
    """

    def __init__(self, out_channels: int, cond_channels: int, channels: int, mult: tuple[int, ...] = (1, 2, 2),
                 attention: bool = False) -> None:
        super().__init__()
        self.emb_dim = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, self.emb_dim), nn.SiLU(),
                                      nn.Linear(self.emb_dim, self.emb_dim))
        self.channels = channels
        self.conv_in = nn.Conv2d(out_channels + cond_channels, channels, 3, padding=1)
        widths = [channels * m for m in mult]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = channels
        for i, w in enumerate(widths):
            self.down.append(ResBlock(c, w, self.emb_dim))
            c = w
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1 = ResBlock(c, c, self.emb_dim)
        self.attn = SelfAttention(c) if attention else nn.Identity()
        self.mid2 = ResBlock(c, c, self.emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(ResBlock(c + w, w, self.emb_dim))
            c = w
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)
        # Start as the zero function: the first predictions are the data mean, and training is stabler.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.channels))
        h = self.conv_in(torch.cat([x, cond], dim=1))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for j, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm(h)))


BASES = ("anchor", "event-integration")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and conditioning of one trained DESSERT model (saved inside every checkpoint).

    ``events``: ``ervae`` (the ER-VAE's z_event) or ``raw`` (the voxel grid space-to-depth'd to the
    latent grid, the no-alignment ablation). ``mode``: ``diffusion`` or ``regression`` (the same U-Net
    called once with x_t = 0, t = 0, trained to output the residual directly). ``compose``:
    ``latent`` (the paper: decode(z_anchor + ẑ_res)) or ``pixel`` (anchor + decode(z_anchor + ẑ_res)
    - decode(z_anchor), which cancels the autoencoder's reconstruction error where nothing moved).
    ``base``: the frame the residual is taken from, and the U-Net's second condition: ``anchor`` (the
    paper) or ``event-integration`` (the anchor moved by the events: exp(log(anchor + eps) + c·Σp) - eps
    with c, eps fitted on the train split; Σp is the voxel grid summed over its bins). With the latter
    the diffusion model only corrects what event integration gets wrong (threshold mismatch, changes
    below the threshold, noise events) at full resolution, instead of re-deriving every edge the events
    already give through the 4x-downsampled latent, whose reconstruction caps the prediction.
    In either case ``compose`` forms the image from the base: ``base`` replaces ``anchor`` above.
    ``head_channels`` > 0 adds a full-resolution head after the composed image (see ``Dessert.predict``).
    """

    bins: int
    ae_channels: int
    latent_channels: int
    unet_channels: int
    unet_mult: tuple[int, ...]
    unet_attention: bool
    events: str = "ervae"
    mode: str = "diffusion"
    prediction: str = "v"
    compose: str = "pixel"
    base: str = "anchor"
    head_channels: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "unet_mult", tuple(self.unet_mult))
        for name, allowed in (("events", ("ervae", "raw")), ("mode", ("diffusion", "regression")),
                              ("compose", ("latent", "pixel")), ("base", BASES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name}: {getattr(self, name)!r} is not one of {allowed}")
        if self.head_channels < 0:
            raise ValueError(f"ModelConfig.head_channels: {self.head_channels} is negative")
        diffusion.check_prediction(self.prediction)

    def to_dict(self) -> dict:
        return asdict(self)


class Dessert(nn.Module):
    """The whole predictor: image autoencoder, event encoder, U-Net, and the latent statistics.

    ``predict(anchor, voxel, noise, steps)`` maps an anchor frame (B, 1, H, W) in [0, 1], the voxel
    grid of the events from the anchor to the target time (B, bins, H, W) and the sampler's initial
    noise (B, zc, H/4, W/4) to the predicted target frame (B, 1, H, W) in [0, 1].
    """

    latent_downsample = 4

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # >1: the latent path runs on the frame average-pooled by this factor (see ``predict``); set by
        # ``load_model`` for the coarse deployment variants, never in training.
        self.coarse = 1
        zc = config.latent_channels
        self.ae = AutoEncoder(config.ae_channels, zc)
        self.event_encoder = EventEncoder(config.bins, config.ae_channels, zc) if config.events == "ervae" else None
        event_channels = zc if config.events == "ervae" else config.bins * self.latent_downsample**2
        self.unet = UNet(zc, event_channels + zc, config.unet_channels, config.unet_mult, config.unet_attention)
        self.schedule = diffusion.CosineSchedule()
        # Input: the composed image, the base, the anchor (each 2v - 1) and the voxel grid.
        self.head = conv_stack(3 + config.bins, config.head_channels, HEAD_LAYERS) if config.head_channels else None
        for name in ("latent_scale", "residual_scale", "voxel_scale", "ei_eps"):
            self.register_buffer(name, torch.ones(()))
        self.register_buffer("ei_c", torch.zeros(()))

    @property
    def latent_stride(self) -> int:
        """Frame pixels per latent pixel: 4, times ``coarse``."""
        return self.latent_downsample * self.coarse

    @property
    def latent_multiple(self) -> int:
        """The latent path's input (frame, or its average-pooled copy) must be a multiple of this."""
        return self.latent_downsample * 2 ** (len(self.config.unet_mult) - 1)

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this: ``latent_multiple``, or with ``coarse`` > 1 ``latent_stride``
        (the pooled frame is padded to the latent path's multiple inside ``predict``, so the full-resolution
        head runs on a frame padded by less than 16 px instead of 64: 22% fewer pixels at 346x260)."""
        return self.latent_stride if self.coarse > 1 else self.latent_multiple

    def noise_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(zc, H/s, W/s), s = ``latent_stride``: the sampler's noise (and every latent) for an H x W frame."""
        stride = self.latent_stride
        return self.config.latent_channels, height // stride, width // stride

    def set_stats(self, latent_scale: float, residual_scale: float, voxel_scale: float, ei_c: float = 0.0,
                  ei_eps: float = 1.0, ei_residual_scale: float = 1.0) -> None:
        """The train split's statistics (stored with the autoencoder): latent and voxel scales, the
        event-integration fit (c, eps) and the residual scale of the configured ``base``."""
        self.latent_scale.fill_(latent_scale)
        self.residual_scale.fill_(ei_residual_scale if self.config.base == "event-integration" else residual_scale)
        self.voxel_scale.fill_(voxel_scale)
        self.ei_c.fill_(ei_c)
        self.ei_eps.fill_(ei_eps)

    # -- the pieces -------------------------------------------------------------------------------
    def encode_image(self, image: Tensor) -> Tensor:
        """Normalised latent (posterior mean) of ``image`` (B, 1, H, W) in [0, 1]: (B, zc, H/4, W/4)."""
        return self.ae.encode(image)[0] * self.latent_scale

    def decode_latent(self, z: Tensor) -> Tensor:
        """Image (B, 1, H, W) from a normalised latent (not clamped)."""
        return self.ae.decode(z / self.latent_scale)

    def event_integration(self, anchor: Tensor, voxel: Tensor) -> Tensor:
        """exp(log(anchor + eps) + c·Σ_bins voxel) - eps in [0, 1], (B, 1, H, W): the anchor moved by the
        events (a bin-summed voxel grid is each pixel's polarity sum)."""
        moved = torch.exp(torch.log(anchor + self.ei_eps) + self.ei_c * voxel.sum(1, keepdim=True)) - self.ei_eps
        return moved.clamp(0.0, 1.0)

    def base_image(self, anchor: Tensor, voxel: Tensor) -> Tensor:
        """The frame the residual is taken from (``config.base``), (B, 1, H, W) in [0, 1]."""
        return self.event_integration(anchor, voxel) if self.config.base == "event-integration" else anchor

    def event_posterior(self, voxel: Tensor) -> tuple[Tensor, Tensor]:
        """ER-VAE posterior (mean, logvar) of z_event, (B, zc, H/4, W/4), in normalised residual units."""
        if self.event_encoder is None:
            raise RuntimeError("this model feeds raw events to the U-Net; it has no ER-VAE")
        return self.event_encoder(voxel * self.voxel_scale)

    def event_condition(self, voxel: Tensor) -> Tensor:
        """The U-Net's event conditioning: z_event (posterior mean), or the raw voxel grid on the latent grid."""
        if self.event_encoder is None:
            return F.pixel_unshuffle(voxel * self.voxel_scale, self.latent_downsample)
        return self.event_posterior(voxel)[0]

    def denoiser(self, x: Tensor, t: Tensor, z_anchor: Tensor, z_event: Tensor) -> Tensor:
        """The diffusion model in the shared module's calling convention (``model(x_t, t, **cond)``)."""
        return self.unet(x, t, torch.cat([z_event, z_anchor], dim=1))

    # -- inference --------------------------------------------------------------------------------
    def residual(self, z_anchor: Tensor, z_event: Tensor, noise: Tensor, steps: int) -> Tensor:
        """Normalised residual latent ẑ_res (B, zc, h, w): ``steps`` DDIM steps from ``noise``, or one
        regression pass (``mode == "regression"``; ``noise`` and ``steps`` unused)."""
        if self.config.mode == "regression":
            zeros = torch.zeros_like(z_anchor)
            return self.denoiser(zeros, torch.zeros(z_anchor.shape[0]), z_anchor, z_event)
        return diffusion.ddim_sample(self.denoiser, noise, self.schedule, steps, prediction=self.config.prediction,
                                     cond={"z_anchor": z_anchor, "z_event": z_event})

    def compose(self, anchor: Tensor, z_anchor: Tensor, residual: Tensor) -> Tensor:
        """Predicted frame (B, 1, H, W) in [0, 1] from the base frame (``anchor``: the anchor or its event
        integration, per ``config.base``), its latent and a normalised residual."""
        z_target = z_anchor + residual / self.residual_scale
        if self.config.compose == "latent":
            image = self.decode_latent(z_target)
        else:
            both = self.decode_latent(torch.cat([z_target, z_anchor], dim=0))
            target, anchor_rec = both.chunk(2, dim=0)
            image = anchor + target - anchor_rec
        return image.clamp(0.0, 1.0)

    def head_correction(self, image: Tensor, base: Tensor, anchor: Tensor, voxel: Tensor) -> Tensor:
        """The head's correction (B, 1, H, W) to a composed ``image`` (already scaled by ``HEAD_GAIN``;
        add it, then clamp). The head works at every pixel, where the decoder's finest detail comes
        from a latent at 1/4 resolution (its measured worth: benchmarks/RESULTS.md)."""
        if self.head is None:
            raise RuntimeError("this model has no head (ModelConfig.head_channels == 0)")
        x = torch.cat([image * 2.0 - 1.0, base * 2.0 - 1.0, anchor * 2.0 - 1.0, voxel_input(voxel)], dim=1)
        return HEAD_GAIN * self.head(x)

    def predict_composed(self, anchor: Tensor, voxel: Tensor, noise: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        """(composed image, base), each (B, 1, H, W) in [0, 1]: the prediction before the head."""
        base = self.base_image(anchor, voxel)
        z_base = self.encode_image(base)
        residual = self.residual(z_base, self.event_condition(voxel), noise, steps)
        return self.compose(base, z_base, residual), base

    def predict(self, anchor: Tensor, voxel: Tensor, noise: Tensor, steps: int) -> Tensor:
        """The prediction. With ``coarse`` > 1 the latent path (encoders, sampler, decoder) runs on the
        anchor and voxel grid average-pooled by ``coarse`` (a coarse pixel sees the mean event count of
        the pixels it covers, as a coarser sensor would), its correction to the base is upsampled
        (bilinear) onto the full-resolution base, and the head, trained at full resolution, restores the
        detail: most of the student's time is the latent path, so this divides it by about coarse²
        (benchmarks/students.md measures speed and quality)."""
        if self.coarse > 1:
            if self.head is None:
                raise RuntimeError("a coarse latent path needs the full-resolution head to restore detail")
            small_anchor, small_voxel = F.avg_pool2d(anchor, self.coarse), F.avg_pool2d(voxel, self.coarse)
            h, w = small_anchor.shape[-2:]
            mult, down = self.latent_multiple, self.latent_downsample
            pad = (0, (w + mult - 1) // mult * mult - w, 0, (h + mult - 1) // mult * mult - h)
            small, base_small = self.predict_composed(
                F.pad(small_anchor, pad, mode="replicate"), F.pad(small_voxel, pad),
                F.pad(noise, tuple(side // down for side in pad)), steps)
            small, base_small = small[..., :h, :w], base_small[..., :h, :w]
            base = self.base_image(anchor, voxel)
            image = (base + F.interpolate(small - base_small, scale_factor=float(self.coarse), mode="bilinear",
                                          align_corners=False)).clamp(0.0, 1.0)
        else:
            image, base = self.predict_composed(anchor, voxel, noise, steps)
        if self.head is None:
            return image
        return (image + self.head_correction(image, base, anchor, voxel)).clamp(0.0, 1.0)


class FusedPredictor(nn.Module):
    """``Dessert.predict`` with the step count fixed: one graph (encoders, unrolled sampler, decoder)
    for ONNX export. forward(anchor (B,1,H,W), voxel (B,bins,H,W), noise (B,zc,H/s,W/s)) -> (B,1,H,W), s =
    ``Dessert.latent_stride``."""

    def __init__(self, model: Dessert, steps: int) -> None:
        super().__init__()
        self.model = model
        self.steps = steps

    def forward(self, anchor: Tensor, voxel: Tensor, noise: Tensor) -> Tensor:
        return self.model.predict(anchor, voxel, noise, self.steps)
