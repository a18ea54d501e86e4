"""HiFI's network: one v-parameterised pixel diffusion U-Net for every pyramid level.

The denoiser sees the noisy middle frame ``z_t`` (B, C, h, w), the two input frames and a
low-resolution estimate of the middle frame (bilinearly upsampled to h × w), plus an availability
map (1 where an estimate is given, 0 for the base level where the estimate is all zeros). The
estimate is dropped (zeros, availability 0) for half of the training samples, so the same weights
predict from scratch at the coarsest level and refine an estimate at every finer level (HiFI,
"single model for all stages"). The availability map is our addition: a zero estimate is otherwise
indistinguishable from "no change" in the residual units below.

Diffusion data units (our choice for a small CPU-trained model; HiFI denoises the frame itself): the
middle frame relative to the blend of its two inputs, ``(x - (x0 + x1) / 2) · residual_scale``
(``residual_scale`` = 1 / the residual's standard deviation on training crops, so the data has unit
variance), and the estimate enters in the same units. The network only learns what blending gets
wrong (the motion), and a network that predicts zero residual returns the blend: it starts at the
baseline's quality instead of re-synthesising every pixel.

Tensors are NCHW float32; images enter as [0, 1] and are mapped to [-1, 1] inside (``to_model`` /
``from_model``); h and w must be multiples of ``HiFI.multiple``. The U-Net is the predictor's
conditional U-Net (``evpipe.nodes.predict.models.UNet``), reused as is; the diffusion maths is
``evpipe.nodes.diffusion``.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from evpipe.nodes import diffusion
from evpipe.nodes.predict.models import UNet

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class HiFIConfig:
    """Architecture and training-crop size. ``patch`` is the training crop side: the cascade cuts
    patches of this size at inference, so the network always runs at the resolution it learnt."""

    channels: int = 1  # image channels (1 gray, 3 RGB)
    width: int = 32  # U-Net base width
    mult: tuple[int, ...] = (1, 2, 2)
    attention: bool = False
    patch: int = 32


class HiFI(nn.Module):
    """``forward(z_t, t, frame0, frame1, estimate, available) -> v`` (all (B, C, h, w) but ``t`` (B,)
    in [0, 1] and ``available`` (B,) float 0/1); frames in the model range [-1, 1], ``z_t`` and
    ``estimate`` in data units (:meth:`to_data`)."""

    def __init__(self, config: HiFIConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.unet = UNet(c, 3 * c + 1, config.width, tuple(config.mult), config.attention)
        self.schedule = diffusion.CosineSchedule()
        self.register_buffer("residual_scale", torch.ones(()))

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (one factor 2 per U-Net downsampling)."""
        return 2 ** (len(self.config.mult) - 1)

    def forward(self, z_t: Tensor, t: Tensor, frame0: Tensor, frame1: Tensor, estimate: Tensor,
                available: Tensor) -> Tensor:
        mask = available.to(z_t.dtype)[:, None, None, None].expand(-1, 1, *z_t.shape[-2:])
        return self.unet(z_t, t, torch.cat([frame0, frame1, estimate, mask], dim=1))

    # In-place arithmetic on fresh temporaries: at 2048² every full-size copy is 16 MB per channel, and
    # the cascade's peak memory must stay flat in resolution.
    def to_data(self, x: Tensor, frame0: Tensor, frame1: Tensor) -> Tensor:
        """Middle frame (model range) -> diffusion data: its residual from the blend, scaled."""
        return x.sub(torch.add(frame0, frame1).mul_(0.5)).mul_(self.residual_scale)

    def from_data(self, data: Tensor, frame0: Tensor, frame1: Tensor) -> Tensor:
        """Diffusion data -> middle frame in the model range (not clipped)."""
        return torch.add(frame0, frame1).mul_(0.5).add_(data / self.residual_scale)


def to_model(image: Tensor) -> Tensor:
    """[0, 1] images -> the model's [-1, 1] range."""
    return image * 2.0 - 1.0


def from_model(x: Tensor) -> Tensor:
    """The model's [-1, 1] range -> [0, 1] images, clipped."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def save_checkpoint(model: HiFI, path: Path, extra: dict | None = None) -> None:
    """Weights as float16 (the committed checkpoint stays small) plus the config and ``extra`` metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"config": asdict(model.config), "state": state, "extra": extra or {}}, path)


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A shipped checkpoint name (``tiny``) or a path to a ``.pt`` file -> the file's path."""
    shipped = CHECKPOINT_DIR / f"{name_or_path}.pt"
    if shipped.is_file():
        return shipped
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    known = sorted(p.stem for p in CHECKPOINT_DIR.glob("*.pt"))
    raise FileNotFoundError(f"HiFI checkpoint {str(name_or_path)!r}: neither a shipped name (known: {known}) "
                            "nor an existing file")


def load_checkpoint(name_or_path: str | Path, device: str = "cpu") -> HiFI:
    """The model of a checkpoint (shipped name or file), float32, in eval mode on ``device``."""
    path = resolve_checkpoint(name_or_path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        config = HiFIConfig(**{**blob["config"], "mult": tuple(blob["config"]["mult"])})
        model = HiFI(config)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state"].items()})
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path}: not a HiFI checkpoint ({error})") from error
    return model.to(device).eval()
