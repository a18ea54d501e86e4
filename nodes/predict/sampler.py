"""Running a trained predictor on numpy frames: padding, noise, backends, rollout.

:class:`FramePredictor` wraps one model variant behind the engine interface
(:class:`evpipe.nodes.model_engines.NetworkEngines`): ``torch`` runs the fused module (eagerly on the
CPU, as a CUDA graph on a GPU), ``onnxruntime`` and ``tensorrt`` run its cached ONNX export. Frames of
any sensor size are padded (:func:`~evpipe.nodes.model_engines.pad_to_multiple`: edge values for the
frame, zeros for the voxel grid) to a multiple of the model's stride and cropped back; one engine is
opened per padded size, so GPU backends see fixed shapes.

    predictor = FramePredictor("4step", checkpoint="tiny", backend="onnxruntime")
    target = predictor.predict(anchor, voxel)                    # (H, W) float32 in [0, 1]
    target = predictor.predict_events(anchor, events, t0, t1)    # the evaluation protocol
    frames = predictor.rollout(anchor, events, t0, [t1, t2, ...])  # each prediction is the next anchor
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from evpipe.kernels import voxel_grid
from evpipe.nodes.model_engines import EngineChoice, NetworkEngines, pad_to_multiple
from evpipe.nodes.predict.checkpoint import load_model
from evpipe.nodes.predict.export import INPUT_NAMES, OUTPUT_NAME, cached_fused_onnx
from evpipe.nodes.predict.models import FusedPredictor
from evpipe.runtime.engines import select_engine
from evpipe.runtime.events import Events


def events_voxel(events: Events, t_anchor: int, t_target: int, bins: int, height: int, width: int) -> np.ndarray:
    """Voxel grid float32 (bins, H, W) of the events with t_anchor < t <= t_target (zeros if none): the
    window convention of the training data (``evpipe.tools.dataset.PredictionView``)."""
    window = events.time_slice(t_anchor + 1, t_target + 1)
    if len(window) == 0:
        return np.zeros((bins, height, width), np.float32)
    return voxel_grid(window.t, window.x, window.y, window.p, bins, height, width)


class FramePredictor:
    """One predictor variant on one backend, device and precision.

    ``temperature`` scales the sampler's initial noise: 1 draws true samples from the model; 0 (the
    default) starts every DDIM trajectory at the prior's mean, a deterministic prediction close to
    the conditional mean: less texture, measurably higher PSNR (see benchmarks/predict.md).
    ``integration`` = (c, eps) calibrates the event-integration base to the sensor (default: the
    checkpoint's fit on its training data). ``seed`` fixes the noise sequence when the temperature is
    above 0. ``backend`` / ``device`` / ``precision`` as in :func:`evpipe.runtime.engines.select_engine`
    (``auto``: the fastest here; a backend or device that is missing raises SelectionError).
    ``threads`` sets the intra-op threads of ONNX Runtime, or of torch for the whole process
    (``torch.set_num_threads``): on a busy 2-core machine torch's default of one thread per core stalls
    in its barriers (the 64-step teacher measured 21 s per frame with two threads, 0.5 s with one).
    """

    def __init__(self, variant: str = "4step", checkpoint: str | Path = "tiny", backend: str = "onnxruntime",
                 *, compose: str | None = None, integration: tuple[float, float] | None = None,
                 temperature: float = 0.0, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 seed: int = 0) -> None:
        if not 0.0 <= temperature <= 1.0:
            raise ValueError(f"temperature must be in [0, 1], got {temperature!r}")
        self.temperature = float(temperature)
        self.model, self.steps = load_model(variant, checkpoint, compose, integration)
        self.choice = EngineChoice(*select_engine(backend, device, precision), precision)
        self.variant, self.threads = variant, threads
        self.backend, self.device = self.choice.backend, self.choice.device
        self.bins = self.model.config.bins
        self.multiple = self.model.multiple
        # Exported now (once per machine), not at the first frame.
        onnx = None if self.backend == "torch" else cached_fused_onnx(variant, checkpoint, compose, integration)
        self.network = NetworkEngines(self.choice, FusedPredictor(self.model, self.steps).eval(), INPUT_NAMES,
                                      OUTPUT_NAME, onnx=None if onnx is None else lambda: onnx, threads=threads)
        self._torch_threads = threads if self.backend == "torch" and self.device == "cpu" else None
        self._rng = np.random.default_rng(seed)

    def _feeds(self, anchor: np.ndarray, voxel: np.ndarray) -> dict[str, np.ndarray]:
        anchor_p = pad_to_multiple(anchor, self.multiple, "edge")
        voxel_p = pad_to_multiple(voxel, self.multiple, "zeros")
        hp, wp = anchor_p.shape
        noise = self._rng.standard_normal((1, *self.model.noise_shape(hp, wp)), dtype=np.float32) * \
            np.float32(self.temperature)
        return dict(zip(INPUT_NAMES, (anchor_p[None, None], voxel_p[None], noise), strict=True))

    def warm_up(self, height: int, width: int) -> None:
        """Open (build) the engine for height x width frames now."""
        self.predict(np.zeros((height, width), np.float32), np.zeros((self.bins, height, width), np.float32))

    def predict(self, anchor: np.ndarray, voxel: np.ndarray) -> np.ndarray:
        """Predicted frame float32 (H, W) in [0, 1] from an anchor (H, W) in [0, 1] (uint8 is scaled by
        1/255) and the voxel grid float32 (bins, H, W) of the events from the anchor to the target time."""
        anchor = np.asarray(anchor)
        if anchor.dtype == np.uint8:
            anchor = anchor.astype(np.float32) / 255.0
        if anchor.ndim != 2:
            raise ValueError(f"anchor must be a gray (H, W) frame, got shape {anchor.shape}")
        h, w = anchor.shape
        if voxel.shape != (self.bins, h, w):
            raise ValueError(f"voxel grid shape {voxel.shape} does not match the model's {self.bins} bins and the "
                             f"anchor's {h}x{w} (expected {(self.bins, h, w)})")
        feeds = self._feeds(anchor, voxel)
        if self._torch_threads:
            # Set before every call: the voxel grid's parallel Numba kernels reset this thread's count.
            torch.set_num_threads(self._torch_threads)
        return self.network.run(feeds)[0, 0, :h, :w]

    def predict_events(self, anchor: np.ndarray, events: Events, t_anchor: int, t_target: int) -> np.ndarray:
        """The evaluation protocol: the frame at ``t_target`` from the anchor at ``t_anchor`` and the events."""
        h, w = np.asarray(anchor).shape
        return self.predict(anchor, events_voxel(events, t_anchor, t_target, self.bins, h, w))

    def rollout(self, anchor: np.ndarray, events: Events, t_anchor: int, targets: Sequence[int]) -> list[np.ndarray]:
        """Autoregressive prediction at each time in ``targets`` (increasing): every prediction is the
        anchor of the next step, with the events since the previous target."""
        frames = []
        t_prev = t_anchor
        for t_next in targets:
            anchor = self.predict_events(anchor, events, t_prev, t_next)
            frames.append(anchor)
            t_prev = t_next
        return frames

    def close(self) -> None:
        self.network.close()
