"""ONNX export of the DDS image prior, for the onnxruntime and tensorrt backends of the ``restore`` node.

Graph: inputs ``x`` float32 (L, C, H, W) (the noisy frames of a window, the clip's frames being the
batch) and ``t`` float32 (L,); output ``prediction`` float32 (L, C, H, W). The batch, height and width
are dynamic (height and width multiples of ``ImagePrior.multiple``), so one file serves every window
and frame size. Exports are cached under ``$EVPIPE_CACHE`` (default ``~/.cache/evpipe``) ``/restore/``
by a hash of the checkpoint file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from evpipe.nodes.restore.model import ImagePrior, load_prior, resolve_checkpoint
from evpipe.runtime.engines.onnx_export import cached_export, export_cache_dir, export_onnx

INPUT_NAMES = ("x", "t")
OUTPUT_NAME = "prediction"
# Bump when the exported graph changes for the same checkpoint (invalidates cached exports).
_EXPORT_VERSION = "1"


def export_prior(model: ImagePrior, path: Path) -> Path:
    """Write ``model`` to ``path`` (ONNX opset 18, dynamic batch, height and width)."""
    mult = model.multiple
    batch = torch.export.Dim("frames", min=1, max=4096)
    unit = torch.export.Dim("blocks_h", min=1, max=1024), torch.export.Dim("blocks_w", min=1, max=1024)
    channels = model.config.image_channels
    example = torch.randn(2, channels, 2 * mult, 2 * mult), torch.rand(2)
    return export_onnx(model.eval(), example, path, INPUT_NAMES, OUTPUT_NAME,
                       {"x": {0: batch, 2: mult * unit[0], 3: mult * unit[1]}, "t": {0: batch}})


def _export_name(checkpoint: str | Path) -> str:
    data = resolve_checkpoint(checkpoint).read_bytes()
    return f"{hashlib.sha256(_EXPORT_VERSION.encode() + data).hexdigest()[:16]}-prior.onnx"


def prior_onnx_path(checkpoint: str | Path = "tiny") -> Path:
    """Where :func:`cached_prior_onnx` keeps this export (whether or not it exists yet)."""
    return export_cache_dir("restore") / _export_name(checkpoint)


def cached_prior_onnx(checkpoint: str | Path = "tiny") -> Path:
    """Path of the prior's ONNX graph for a checkpoint; exported on first use."""
    return cached_export("restore", _export_name(checkpoint),
                         lambda path: export_prior(load_prior(checkpoint)[0], path))
