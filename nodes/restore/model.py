"""The image diffusion prior of DDS restoration: an unconditional pixel-space U-Net.

Images are NCHW float32 in the diffusion's data range [-1, 1] (``to_model``/``from_model`` convert
from and to [0, 1]). The network is the predictor's U-Net (:class:`evpipe.nodes.predict.models.UNet`)
with no conditioning channels, so every diffusion model in evpipe shares one architecture and one
schedule (:mod:`evpipe.nodes.diffusion`). Fully convolutional: trained on crops, run on whole frames
whose height and width are multiples of ``ImagePrior.multiple``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from evpipe.nodes import diffusion
from evpipe.nodes.predict.models import UNet

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class PriorConfig:
    """Architecture of one prior (stored inside its checkpoint)."""

    image_channels: int = 1
    channels: int = 32
    mult: tuple[int, ...] = (1, 2, 2, 2)
    attention: bool = False
    prediction: str = "v"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mult", tuple(self.mult))
        diffusion.check_prediction(self.prediction)


class ImagePrior(nn.Module):
    """Unconditional denoiser ``(x_t (B, C, H, W), t (B,)) -> prediction`` of kind ``config.prediction``."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet(config.image_channels, 0, config.channels, config.mult, config.attention)

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.config.mult) - 1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, t, x[:, :0])  # no conditioning: an empty channel slice


def to_model(images: Tensor) -> Tensor:
    """[0, 1] -> the diffusion data range [-1, 1]."""
    return images * 2.0 - 1.0


def from_model(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] (not clipped)."""
    return (x + 1.0) * 0.5


def save_prior(path: Path, model: ImagePrior, **extra: Any) -> None:
    """fp16 weights + config + ``extra`` (training record) in one torch file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"config": asdict(model.config), "state": state, **extra}, path)


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A preset name (``tiny``: ``nodes/restore/checkpoints/tiny/prior.pt``) or a file path."""
    path = Path(checkpoint)
    if not path.suffix:
        path = CHECKPOINT_DIR / str(checkpoint) / "prior.pt"
    if not path.is_file():
        raise FileNotFoundError(f"restore prior checkpoint {path} not found (train one with "
                                "python -m evpipe.tools.train_restore_prior)")
    return path


def load_prior(checkpoint: str | Path = "tiny", device: str = "cpu") -> tuple[ImagePrior, dict[str, Any]]:
    """(model in eval mode, float32, on ``device``; the checkpoint's extra record)."""
    path = resolve_checkpoint(checkpoint)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = ImagePrior(PriorConfig(**blob["config"]))
        model.load_state_dict({k: v.float() for k, v in blob["state"].items()})
    except (KeyError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path}: not a restore prior checkpoint ({error})") from error
    record = {k: v for k, v in blob.items() if k not in ("config", "state")}
    return model.to(device).eval(), record
