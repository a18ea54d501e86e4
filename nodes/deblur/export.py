"""ONNX export of the distilled student: one fused graph (f(E), conditioning, the unrolled few-step
sampler) with dynamic height and width (multiples of ``DiffEvent.multiple``).

Graph: inputs ``blurry``, ``edi``, ``noise`` float32 (1, 1, H, W) (the frame in [0, 1], the raw E of its
exposure, the sampler's initial noise in data units: zeros at temperature 0) and ``voxel`` float32
(1, event_bins, H, W) (the exposure's voxel grid); output ``sharp`` float32 (1, 1, H, W) in [0, 1].
Exports are cached under ``$EVPIPE_CACHE`` (default ``~/.cache/evpipe``) ``/deblur/`` by a hash of the
checkpoint file, so a node exports once per machine.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import torch

from evpipe.nodes.deblur.checkpoint import FILE, load_model, resolve_dir
from evpipe.nodes.deblur.models import DiffEvent, FusedStudent
from evpipe.nodes.deblur.sampler import INPUT_NAMES, OUTPUT_NAME
from evpipe.runtime.engines.onnx_export import cached_export, export_cache_dir, export_onnx, onnx_parity

# Bump when the exported graph changes for the same checkpoint (invalidates cached exports).
_EXPORT_VERSION = "2"


def example_inputs(bins: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random (blurry, edi, voxel, noise) of the graph's shapes: frame in [0, 1], E in [0.5, 2], voxel
    counts of a few events per bin, zero noise."""
    g = torch.Generator().manual_seed(seed)
    blurry = torch.rand(1, 1, height, width, generator=g)
    edi = torch.exp((torch.rand(1, 1, height, width, generator=g) - 0.5) * 1.4)
    voxel = torch.randn(1, bins, height, width, generator=g) * 2.0
    return blurry, edi, voxel, torch.zeros(1, 1, height, width)


def export_student(model: DiffEvent, steps: int, path: Path) -> Path:
    """Write the fused ``steps``-step student of ``model`` to ``path`` (ONNX opset 18, dynamic H and W)."""
    mult = model.multiple
    unit = torch.export.Dim("blocks_h", min=1, max=512), torch.export.Dim("blocks_w", min=1, max=512)
    axes = {2: mult * unit[0], 3: mult * unit[1]}
    inputs = example_inputs(model.config.event_bins, 2 * mult, 2 * mult)
    return export_onnx(FusedStudent(model, steps).eval(), inputs, path, INPUT_NAMES, OUTPUT_NAME,
                       {name: axes for name in INPUT_NAMES})


def parity(model: DiffEvent, steps: int, path: Path, sizes: tuple[tuple[int, int], ...] = ((128, 128), (272, 352))
           ) -> float:
    """Max abs difference between torch and ONNX Runtime (CPU) outputs over random inputs of ``sizes``."""
    return onnx_parity(FusedStudent(model, steps).eval(), partial(example_inputs, model.config.event_bins), path,
                       INPUT_NAMES, OUTPUT_NAME, sizes)


def _export_name(directory: Path) -> str:
    digest = hashlib.sha256(_EXPORT_VERSION.encode() + (directory / FILE).read_bytes()).hexdigest()[:16]
    return f"{digest}-student.onnx"


def student_onnx_path(checkpoint: str | Path = "tiny") -> Path:
    """Where :func:`cached_student_onnx` keeps this export (whether or not it exists yet)."""
    return export_cache_dir("deblur") / _export_name(resolve_dir(checkpoint))


def cached_student_onnx(checkpoint: str | Path = "tiny") -> Path:
    """Path of the student's fused ONNX graph for a checkpoint; exported on first use."""
    directory = resolve_dir(checkpoint)

    def export(path: Path) -> None:
        model, info = load_model(directory)
        export_student(model, info["student_steps"], path)

    return cached_export("deblur", _export_name(directory), export)
