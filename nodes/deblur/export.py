"""ONNX export of the distilled student: one fused graph (f(E), conditioning, the unrolled few-step
sampler) with dynamic height and width (multiples of ``DiffEvent.multiple``).

Graph: inputs ``blurry``, ``edi``, ``noise`` float32 (1, 1, H, W) (the frame in [0, 1], the raw E of its
exposure, the sampler's initial noise in data units: zeros at temperature 0); output ``sharp`` float32
(1, 1, H, W) in [0, 1]. Exports are cached under ``$EVPIPE_CACHE`` (default ``~/.cache/evpipe``)
``/deblur/`` by a hash of the checkpoint file, so a node exports once per machine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from evpipe.nodes.deblur.checkpoint import FILE, load_model, resolve_dir
from evpipe.nodes.deblur.models import DiffEvent, FusedStudent
from evpipe.nodes.deblur.sampler import INPUT_NAMES, OUTPUT_NAME

OPSET = 18
# Bump when the exported graph changes for the same checkpoint (invalidates cached exports).
_EXPORT_VERSION = "1"

log = logging.getLogger(__name__)


def example_inputs(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random (blurry, edi, noise) of the graph's shapes: frame in [0, 1], E in [0.5, 2], zero noise."""
    g = torch.Generator().manual_seed(seed)
    blurry = torch.rand(1, 1, height, width, generator=g)
    edi = torch.exp((torch.rand(1, 1, height, width, generator=g) - 0.5) * 1.4)
    return blurry, edi, torch.zeros(1, 1, height, width)


def export_student(model: DiffEvent, steps: int, path: Path) -> Path:
    """Write the fused ``steps``-step student of ``model`` to ``path`` (ONNX opset 18, dynamic H and W)."""
    fused = FusedStudent(model, steps).eval()
    mult = model.multiple
    unit = torch.export.Dim("blocks_h", min=1, max=512), torch.export.Dim("blocks_w", min=1, max=512)
    axes = {2: mult * unit[0], 3: mult * unit[1]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The exporter warns about merged axis names and deprecated pytree internals; neither matters here.
        warnings.simplefilter("ignore")
        torch.onnx.export(fused, example_inputs(2 * mult, 2 * mult), str(path), dynamo=True, opset_version=OPSET,
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_shapes={name: axes for name in INPUT_NAMES}, external_data=False, verbose=False)
    return path


def parity(model: DiffEvent, steps: int, path: Path, sizes: tuple[tuple[int, int], ...] = ((128, 128), (272, 352))
           ) -> float:
    """Max abs difference between torch and ONNX Runtime (CPU) outputs over random inputs of ``sizes``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fused = FusedStudent(model, steps).eval()
    worst = 0.0
    for i, (h, w) in enumerate(sizes):
        inputs = example_inputs(h, w, seed=i + 1)
        with torch.no_grad():
            expected = fused(*inputs).numpy()
        got = session.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, (x.numpy() for x in inputs), strict=True)))[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def cache_dir() -> Path:
    return Path(os.environ.get("EVPIPE_CACHE", Path.home() / ".cache" / "evpipe")) / "deblur"


def cached_student_onnx(checkpoint: str | Path = "tiny") -> Path:
    """Path of the student's fused ONNX graph for a checkpoint; exported on first use."""
    directory = resolve_dir(checkpoint)
    digest = hashlib.sha256(_EXPORT_VERSION.encode() + (directory / FILE).read_bytes()).hexdigest()[:16]
    path = cache_dir() / f"{digest}-student.onnx"
    if not path.is_file():
        model, info = load_model(directory)
        log.info("exporting %s (student, %d steps) to %s", directory, info["student_steps"], path)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        export_student(model, info["student_steps"], partial)
        partial.replace(path)  # atomic: a concurrent reader never sees half a file
    return path
