"""What every model family's ONNX export shares: the exporter call, the torch vs ONNX Runtime parity
check and the on-disk cache of exports (``$EVPIPE_CACHE`` or ``~/.cache/evpipe``, one folder per
family), so a node exports its graph once per machine."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

OPSET = 18

log = logging.getLogger(__name__)
# The exporter's own loggers: hundreds of INFO lines per export ("Replaced initializer ...") and warnings about
# operators of packages that are not installed (torchvision), none of which a user can act on. Errors still show.
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # The exporter warns about merged axis names and deprecated pytree internals; neither matters here.
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, input_names: Sequence[str],
                output_name: str, dynamic_shapes: Mapping[str, Any] | None = None) -> Path:
    """Write ``module`` (eval mode) traced on ``inputs`` to ``path`` with the dynamo exporter (opset 18,
    one file, ``dynamic_shapes`` per ``forward`` argument name; None: every shape fixed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter():
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


def cached_export(family: str, name: str, export: Callable[[Path], object], shipped: Path | None = None) -> Path:
    """Path of the export ``name`` of ``family``: ``shipped / name`` when the package ships it, else the cached
    one, which ``export(path)`` writes on first use (to a temporary file, then renamed, so a concurrent reader
    never sees half a file). ``name`` must carry a hash of the checkpoint it was exported from, so a shipped or
    cached file made from other weights is never picked up."""
    if shipped is not None and (shipped / name).is_file():
        return shipped / name
    path = export_cache_dir(family) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        log.info("exporting the %s ONNX graph once for this machine (about half a minute; `evpipe build-engines "
                 "CONFIG` does it ahead of a run) -> %s", family, path)
        start = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        export(partial)
        partial.replace(path)
        log.info("exported %s in %.1f s", path.name, time.perf_counter() - start)
    return path
