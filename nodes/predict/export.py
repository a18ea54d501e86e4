"""ONNX export of the predictor: one fused graph per step count (encoders, unrolled DDIM sampler,
decoder; with ``Dessert.coarse`` the pooling and upsampling around them), with dynamic height and width
(multiples of ``Dessert.multiple``).

Graph: inputs ``anchor`` float32 (1, 1, H, W) in [0, 1], ``voxel`` float32 (1, bins, H, W),
``noise`` float32 (1, zc, H/s, W/s) (s = ``Dessert.latent_stride``); output ``prediction`` float32
(1, 1, H, W) in [0, 1]. One graph per step count beats four graphs per step (encoder, event encoder,
U-Net step, decoder) for latency: no per-step round trips through the runtime
and ONNX Runtime fuses across the whole sampler.

Exports are named by a hash of the checkpoint files, the variant and the composition, and cached
(``$EVPIPE_CACHE`` or ``~/.cache/evpipe``, under ``predict/``), so a node exports once per machine. An export
that ships beside its checkpoint (``<checkpoint>/onnx/``: the default graph's ``tiny`` 4-step graph, made with
``python -m evpipe.tools.ship_predictor_onnx``) is used when its name — hence its hash — matches the weights, so the
first run starts as fast as the second and retrained weights never meet a stale graph.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from evpipe.nodes.predict.checkpoint import load_model, resolve_dir, weights_variant
from evpipe.nodes.predict.models import Dessert, FusedPredictor
from evpipe.runtime.engines.onnx_export import cached_export, export_cache_dir, export_onnx, onnx_parity

INPUT_NAMES = ("anchor", "voxel", "noise")
OUTPUT_NAME = "prediction"
SHIPPED = "onnx"  # folder of a checkpoint directory holding exports shipped with it
# Bump when the exported graph changes for the same checkpoint (invalidates cached exports).
_EXPORT_VERSION = "2"


def example_inputs(model: Dessert, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random (anchor, voxel, noise) of the graph's shapes for an H x W frame."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, height, width, generator=g),
            torch.randn(1, model.config.bins, height, width, generator=g),
            torch.randn(1, *model.noise_shape(height, width), generator=g))


def export_fused(model: Dessert, steps: int, path: Path) -> Path:
    """Write the fused ``steps``-step graph of ``model`` to ``path`` (ONNX opset 18, dynamic H and W)."""
    unit = torch.export.Dim("blocks_h", min=1, max=512), torch.export.Dim("blocks_w", min=1, max=512)
    mult, down = model.multiple, model.latent_stride
    frame_axes = {2: mult * unit[0], 3: mult * unit[1]}
    latent_axes = {2: (mult // down) * unit[0], 3: (mult // down) * unit[1]}
    return export_onnx(FusedPredictor(model, steps).eval(), example_inputs(model, 2 * mult, 2 * mult), path,
                       INPUT_NAMES, OUTPUT_NAME, {"anchor": frame_axes, "voxel": frame_axes, "noise": latent_axes})


def parity(model: Dessert, steps: int, path: Path, sizes: tuple[tuple[int, int], ...] = ((128, 128), (272, 352))
           ) -> float:
    """Max abs difference between torch and ONNX Runtime (CPU) outputs over random inputs of ``sizes``."""
    return onnx_parity(FusedPredictor(model, steps).eval(), lambda h, w, seed: example_inputs(model, h, w, seed),
                       path, INPUT_NAMES, OUTPUT_NAME, sizes)


def _checkpoint_hash(directory: Path, variant: str) -> str:
    digest = hashlib.sha256(_EXPORT_VERSION.encode())
    for name in ("ae.pt", "ervae.pt", f"unet-{weights_variant(variant)}.pt"):
        file = directory / name
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def export_name(directory: Path, variant: str, compose: str) -> str:
    """File stem of an export: the checkpoint files' hash, the variant and the composition."""
    return f"{_checkpoint_hash(directory, variant)}-{variant}-{compose}"


def _export_file(directory: Path, variant: str, model: Dessert, integration: tuple[float, float] | None) -> str:
    calibration = "" if integration is None else f"-c{integration[0]:.6g}-eps{integration[1]:.6g}"
    return export_name(directory, variant, model.config.compose) + calibration + ".onnx"


def fused_onnx_path(variant: str, checkpoint: str | Path = "tiny", compose: str | None = None,
                    integration: tuple[float, float] | None = None) -> Path:
    """Where :func:`cached_fused_onnx` finds this export (shipped, or cached whether or not it exists yet)."""
    directory = resolve_dir(checkpoint)
    model, _ = load_model(variant, directory, compose, integration)
    name = _export_file(directory, variant, model, integration)
    shipped = directory / SHIPPED / name
    return shipped if shipped.is_file() else export_cache_dir("predict") / name


def cached_fused_onnx(variant: str, checkpoint: str | Path = "tiny", compose: str | None = None,
                      integration: tuple[float, float] | None = None) -> Path:
    """Path of the fused ONNX graph of a checkpoint's ``variant`` (``compose`` and ``integration`` as
    in :func:`~evpipe.nodes.predict.checkpoint.load_model`); exported on first use."""
    directory = resolve_dir(checkpoint)
    model, steps = load_model(variant, directory, compose, integration)
    return cached_export("predict", _export_file(directory, variant, model, integration),
                         lambda path: export_fused(model, steps, path), shipped=directory / SHIPPED)
