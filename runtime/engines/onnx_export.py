"""What every model family's ONNX export shares: the exporter call, the torch vs ONNX Runtime parity
check and the on-disk cache of exports (``$EVPIPE_CACHE`` or ``~/.cache/evpipe``, one folder per
family), so a node exports its graph once per machine."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

OPSET = 18

log = logging.getLogger(__name__)


def export_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, input_names: Sequence[str],
                output_name: str, dynamic_shapes: Mapping[str, Any] | None = None) -> Path:
    """Write ``module`` (eval mode) traced on ``inputs`` to ``path`` with the dynamo exporter (opset 18,
    one file, ``dynamic_shapes`` per ``forward`` argument name; None: every shape fixed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The exporter warns about merged axis names and deprecated pytree internals; neither matters here.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(path), dynamo=True, opset_version=OPSET, input_names=list(input_names),
                          output_names=[output_name], dynamic_shapes=dict(dynamic_shapes) if dynamic_shapes else None,
                          external_data=False, verbose=False)
    return path


def onnx_parity(module: torch.nn.Module, example_inputs: Callable[[int, int, int], tuple[torch.Tensor, ...]],
                path: Path, input_names: Sequence[str], output_name: str,
                sizes: Sequence[tuple[int, int]] = ((128, 128), (272, 352))) -> float:
    """Max abs difference between ``module`` in torch and the ONNX file at ``path`` in ONNX Runtime (CPU),
    over ``example_inputs(height, width, seed)`` for each (height, width) of ``sizes``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i, (h, w) in enumerate(sizes):
        inputs = example_inputs(h, w, i + 1)
        with torch.no_grad():
            expected = module(*inputs).numpy()
        got = session.run([output_name], dict(zip(input_names, (x.numpy() for x in inputs), strict=True)))[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_cache_dir(family: str) -> Path:
    """Folder of ``family``'s cached exports (e.g. ``predict``, ``deblur``)."""
    return Path(os.environ.get("EVPIPE_CACHE", Path.home() / ".cache" / "evpipe")) / family


def cached_export(family: str, name: str, export: Callable[[Path], object]) -> Path:
    """Path of the cached export ``name`` of ``family``; ``export(path)`` writes it on first use. Written to
    a temporary file and renamed, so a concurrent reader never sees half a file."""
    path = export_cache_dir(family) / name
    if not path.is_file():
        log.info("exporting %s", path)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        export(partial)
        partial.replace(path)
    return path
