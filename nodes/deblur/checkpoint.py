"""Checkpoint files of the DiffEvent deblurrer.

A checkpoint directory (``nodes/deblur/checkpoints/<preset>/`` for the shipped one) holds
``diffevent.pt``: a ``torch.save`` dict ``{"state": fp16 weights of DiffEvent (f(E), both priors, the
student), "config": ModelConfig dict, "preset", "teacher_steps", "student_steps", "guidance":
Guidance dict}`` (fp16 on disk, loaded as float32; every number reported was measured with the
loaded weights), plus ``train_log.json`` (commands, losses, times). The file layer (fp16 save, checked
load) is the predictor's (:mod:`evpipe.nodes.predict.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evpipe.nodes.deblur.models import DiffEvent, ModelConfig
from evpipe.nodes.deblur.presets import Guidance
from evpipe.nodes.predict.checkpoint import CheckpointError, load_part

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
FILE = "diffevent.pt"


def resolve_dir(checkpoint: str | Path) -> Path:
    """A shipped preset name (``tiny``) or a directory path -> the directory, checked to exist."""
    path = Path(checkpoint)
    if not path.is_dir() and (CHECKPOINTS / str(checkpoint)).is_dir():
        path = CHECKPOINTS / str(checkpoint)
    if not (path / FILE).is_file():
        shipped = sorted(p.name for p in CHECKPOINTS.iterdir() if (p / FILE).is_file()) if CHECKPOINTS.is_dir() else []
        raise CheckpointError(f"deblur checkpoint {str(checkpoint)!r}: no {FILE} there and not a shipped checkpoint "
                              f"({', '.join(shipped) or 'none'}); train one with tools/train_deblur.py")
    return path


def load_model(checkpoint: str | Path = "tiny") -> tuple[DiffEvent, dict[str, Any]]:
    """(model in eval mode, info) from a checkpoint; info has ``teacher_steps``, ``student_steps``,
    ``guidance`` (a :class:`Guidance`) and ``preset``."""
    path = resolve_dir(checkpoint) / FILE
    data = load_part(path)
    try:
        model = DiffEvent(ModelConfig(**data["config"]))
        model.load_state_dict(data["state"])
        info = {"teacher_steps": int(data["teacher_steps"]), "student_steps": int(data["student_steps"]),
                "guidance": Guidance(**data["guidance"]), "preset": data.get("preset")}
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a DiffEvent checkpoint of this code: {exc}") from None
    return model.eval().requires_grad_(False), info
