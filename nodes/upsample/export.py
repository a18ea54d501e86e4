"""ONNX export of HiFI's denoiser, for the onnxruntime and tensorrt backends of the ``upsample`` node.

Graph: inputs ``z_t``, ``frame0``, ``frame1``, ``estimate`` float32 (B, C, h, w) and ``t``,
``available`` float32 (B,) (as :meth:`HiFI.forward` takes them); output ``v`` float32 (B, C, h, w).
Batch (patches per call), height and width are dynamic (multiples of ``HiFI.multiple``), so one file
serves every pyramid level and patch batch. Exports are cached under ``$EVPIPE_CACHE`` (default
``~/.cache/evpipe``) ``/upsample/`` by a hash of the checkpoint file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from evpipe.nodes.upsample import DEFAULT_CHECKPOINT
from evpipe.nodes.upsample.model import HiFI, load_checkpoint, resolve_checkpoint
from evpipe.runtime.engines.onnx_export import cached_export, export_cache_dir, export_onnx

INPUT_NAMES = ("z_t", "t", "frame0", "frame1", "estimate", "available")
OUTPUT_NAME = "v"
# Bump when the exported graph changes for the same checkpoint (invalidates cached exports).
_EXPORT_VERSION = "1"


def export_denoiser(model: HiFI, path: Path) -> Path:
    """Write ``model`` to ``path`` (ONNX opset 18, dynamic batch, height and width)."""
    mult = model.multiple
    batch = torch.export.Dim("patches", min=1, max=4096)
    unit = torch.export.Dim("blocks_h", min=1, max=1024), torch.export.Dim("blocks_w", min=1, max=1024)
    image = {0: batch, 2: mult * unit[0], 3: mult * unit[1]}
    c, side = model.config.channels, 2 * mult
    example = (torch.randn(2, c, side, side), torch.rand(2), torch.rand(2, c, side, side), torch.rand(2, c, side, side),
               torch.randn(2, c, side, side), torch.ones(2))
    shapes = {name: ({0: batch} if name in ("t", "available") else image) for name in INPUT_NAMES}
    return export_onnx(model.eval(), example, path, INPUT_NAMES, OUTPUT_NAME, shapes)


def _export_name(checkpoint: str | Path) -> str:
    data = resolve_checkpoint(checkpoint).read_bytes()
    return f"{hashlib.sha256(_EXPORT_VERSION.encode() + data).hexdigest()[:16]}-hifi.onnx"


def denoiser_onnx_path(checkpoint: str | Path = DEFAULT_CHECKPOINT) -> Path:
    """Where :func:`cached_denoiser_onnx` keeps this export (whether or not it exists yet)."""
    return export_cache_dir("upsample") / _export_name(checkpoint)


def cached_denoiser_onnx(checkpoint: str | Path = DEFAULT_CHECKPOINT) -> Path:
    """Path of HiFI's denoiser as an ONNX graph for a checkpoint; exported on first use."""
    return cached_export("upsample", _export_name(checkpoint),
                         lambda path: export_denoiser(load_checkpoint(checkpoint), path))
