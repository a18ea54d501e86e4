"""ONNX export of the predictor: one fused graph per step count (encoders, unrolled DDIM sampler,
decoder), with dynamic height and width (multiples of ``Dessert.multiple``).

Graph: inputs ``anchor`` float32 (1, 1, H, W) in [0, 1], ``voxel`` float32 (1, bins, H, W),
``noise`` float32 (1, zc, H/4, W/4); output ``prediction`` float32 (1, 1, H, W) in [0, 1]. One graph
per step count beats four graphs per step (encoder, event encoder, U-Net step, decoder) for latency:
no per-step round trips through the runtime and ONNX Runtime fuses across the whole sampler.

Exports are cached (``$EVPIPE_CACHE`` or ``~/.cache/evpipe``, under ``predict/``) by a hash of the
checkpoint files, the variant and the composition, so a node exports once per machine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from evpipe.nodes.predict.checkpoint import load_model, resolve_dir
from evpipe.nodes.predict.models import Dessert, FusedPredictor

INPUT_NAMES = ("anchor", "voxel", "noise")
OUTPUT_NAME = "prediction"
OPSET = 18
# Bump when the exported graph changes for the same checkpoint (invalidates cached exports).
_EXPORT_VERSION = "1"

log = logging.getLogger(__name__)


def example_inputs(model: Dessert, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random (anchor, voxel, noise) of the graph's shapes for an H x W frame."""
    g = torch.Generator().manual_seed(seed)
    down = model.latent_downsample
    return (torch.rand(1, 1, height, width, generator=g),
            torch.randn(1, model.config.bins, height, width, generator=g),
            torch.randn(1, model.config.latent_channels, height // down, width // down, generator=g))


def export_fused(model: Dessert, steps: int, path: Path) -> Path:
    """Write the fused ``steps``-step graph of ``model`` to ``path`` (ONNX opset 18, dynamic H and W)."""
    fused = FusedPredictor(model, steps).eval()
    unit = torch.export.Dim("blocks_h", min=1, max=512), torch.export.Dim("blocks_w", min=1, max=512)
    mult, down = model.multiple, model.latent_downsample
    frame_axes = {2: mult * unit[0], 3: mult * unit[1]}
    latent_axes = {2: (mult // down) * unit[0], 3: (mult // down) * unit[1]}
    dynamic = {"anchor": frame_axes, "voxel": frame_axes, "noise": latent_axes}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The exporter warns about merged axis names and deprecated pytree internals; neither matters here.
        warnings.simplefilter("ignore")
        torch.onnx.export(fused, example_inputs(model, 2 * mult, 2 * mult), str(path), dynamo=True,
                          opset_version=OPSET, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_shapes=dynamic, external_data=False, verbose=False)
    return path


def parity(model: Dessert, steps: int, path: Path, sizes: tuple[tuple[int, int], ...] = ((128, 128), (272, 352))
           ) -> float:
    """Max abs difference between torch and ONNX Runtime (CPU) outputs over random inputs of ``sizes``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fused = FusedPredictor(model, steps).eval()
    worst = 0.0
    for i, (h, w) in enumerate(sizes):
        inputs = example_inputs(model, h, w, seed=i + 1)
        with torch.no_grad():
            expected = fused(*inputs).numpy()
        got = session.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, (x.numpy() for x in inputs), strict=True)))[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def cache_dir() -> Path:
    return Path(os.environ.get("EVPIPE_CACHE", Path.home() / ".cache" / "evpipe")) / "predict"


def _checkpoint_hash(directory: Path, variant: str) -> str:
    digest = hashlib.sha256(_EXPORT_VERSION.encode())
    for name in ("ae.pt", "ervae.pt", f"unet-{variant}.pt"):
        file = directory / name
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def cached_fused_onnx(variant: str, checkpoint: str | Path = "tiny", compose: str | None = None) -> Path:
    """Path of the fused ONNX graph of a checkpoint's ``variant``; exported on first use."""
    directory = resolve_dir(checkpoint)
    model, steps = load_model(variant, directory, compose)
    name = f"{_checkpoint_hash(directory, variant)}-{variant}-{model.config.compose}.onnx"
    path = cache_dir() / name
    if not path.is_file():
        log.info("exporting %s (%s, %d steps) to %s", directory, variant, steps, path)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        export_fused(model, steps, partial)
        partial.replace(path)  # atomic: a concurrent reader never sees half a file
    return path
