"""The predictor node: DESSERT next-frame prediction inside a graph."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.nodes.colour import gray_unit
from evpipe.nodes.model_engines import (
    build_plans,
    choose_engine,
    declare_engine_params,
    onnx_engine_summary,
    prepare_onnx,
    warm_up,
)
from evpipe.nodes.predict.checkpoint import VARIANTS
from evpipe.runtime.events import Frame
from evpipe.runtime.node import Node, NodeError, Spec
from evpipe.runtime.wire import Message

AUTO = ("onnxruntime on the CPU; on a GPU tensorrt, then torch (CUDA graphs), then onnxruntime's CUDA provider, "
        "whichever is installed first")
# Windows held while their anchor frame has not arrived; beyond this the oldest is dropped (counted).
_MAX_PENDING = 16


def _integration(params: dict[str, Any]) -> tuple[float, float] | None:
    """(contrast_threshold, integration_eps) when the graph calibrates the event-integration base, else None."""
    c, eps = params["contrast_threshold"], params["integration_eps"]
    if (c > 0) != (eps > 0):
        raise NodeError(f"predictor: parameters 'contrast_threshold' ({c}) and 'integration_eps' ({eps}) calibrate "
                        "the event-integration base together: set both, or neither to keep the checkpoint's")
    return (c, eps) if c > 0 else None


class Predictor(Node):
    """Residual diffusion next-frame predictor (DESSERT): predicts the frame at each voxel window's end.

    A voxel window on ``voxels`` (meta ``t_anchor``, ``t_target`` in µs) is answered with the predicted
    frame at ``t_target`` (float32 (H, W) in [0, 1], meta ``predicted: true``, ``t_anchor``). Its anchor
    is the real frame at ``t_anchor`` (every real frame resets the anchor at its time, replacing any
    prediction there), or else the node's own prediction for ``t_anchor``: windows that start where the
    previous one ended roll out several frames ahead autoregressively. Real frames of the last
    ``anchor_history_us`` of sensor time and their rollouts stay available, because frames and windows
    travel on separate edges and either may arrive first, and a window taken from a ``latest`` edge by a
    busy predictor may be older than many frames since; a window that starts after the newest frame
    waits (up to 16 of them) for it, and one whose anchor cannot come any more is counted as
    ``unanchored`` and skipped. Reports frames, predictions and unanchored.

    Any sensor size runs: frames are padded to the variant's multiple (16; 8 for 4step-coarse2) and the
    prediction cropped back. Cost per prediction on this 2-core CPU (ONNX Runtime, 2 threads, isolated
    calls, ``tools/bench_students.py`` at load 1.5-1.8): 346x260 (DAVIS346) 4step 67 ms, 4step-coarse4
    14 ms; 640x480 4step 231 ms, 4step-coarse4 39 ms; 1280x720 4step 739 ms, 4step-coarse4 116 ms. Live
    at 1x on the full DAVIS346 (``tools/bench_realtime.py``, a DV network stream, set ``frame_size`` so the
    engine warms up before it): 4step-coarse4 46 predictions/s at end-to-end p50 31 ms, p99 51 ms; 4step
    10/s.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("frames", "frame", "anchor (APS) frames, gray or colour, uint8 or float in [0, 1]")
        spec.input("voxels", "voxel", "voxel grids (bins, H, W) of the events from t_anchor to t_target")
        spec.output("predictions", "frame", "predicted frames at t_target, float32 (H, W) in [0, 1]")
        spec.param("checkpoint", str, default="tiny", doc="shipped checkpoint name (tiny) or a checkpoint directory")
        spec.param("variant", str, default="4step-coarse4",
                   doc="model variant: 4step-coarse4 (default) and 4step-coarse2 run the 4-step student's latent path "
                   "at 1/4 or 1/2 resolution with its head at full resolution, the fastest variants that keep the "
                   "quality floor on the real recordings (benchmarks/students.md); 4step is the full-resolution "
                   "student", choices=list(VARIANTS))
        declare_engine_params(spec, auto=AUTO)
        spec.param("frame_size", list, None, "[width, height] of the frames: the engine opens and runs once at start "
                   "(else at the first frame, and a live stream's frames arriving meanwhile wait or are skipped), "
                   "and `evpipe build-engines` builds the TensorRT plan ahead (one per static shape)")
        spec.param("threads", int, default=0, minimum=0,
                   doc="intra-op threads of onnxruntime or torch; 0 = the backend's default (all usable cores)")
        spec.param("temperature", float, default=0.0, minimum=0.0, maximum=1.0,
                   doc="scale of the sampler's initial noise: 0 deterministic (highest PSNR), 1 true samples; "
                   "the tiny 4step student is refined for 0 (use variant 2step or teacher to sample)")
        spec.param("seed", int, default=0, doc="seed of the sampler's noise sequence (temperature > 0)")
        spec.param("contrast_threshold", float, default=0.0, minimum=0.0,
                   doc="c of the event-integration base, exp(log(I + eps) + c·Σp) - eps, for this sensor; "
                   "0 = the checkpoint's (fitted on its training data). Set it with integration_eps")
        spec.param("integration_eps", float, default=0.0, minimum=0.0,
                   doc="eps of the event-integration base (with contrast_threshold); 0 = the checkpoint's")
        spec.param("anchor_history_us", int, default=1_000_000, minimum=1,
                   doc="sensor time of real frames kept as anchors for windows that arrive late (µs); "
                   "longer than the predictor's compute time, so a slow predictor still finds its anchors")

    @classmethod
    def check_machine(cls, name: str, params: dict[str, Any]) -> dict[str, str]:
        def onnx_path() -> Path:
            from evpipe.nodes.predict.export import fused_onnx_path  # torch loads only for a graph with this node

            return fused_onnx_path(params["variant"], params["checkpoint"], integration=_integration(params))

        return onnx_engine_summary(name, choose_engine(name, params), onnx_path, "at start", "frame size")

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        """``evpipe build-engines``: export (or find) the cached fused ONNX graph the onnxruntime and
        tensorrt backends run, and with tensorrt build the plan for ``frame_size``, so the first run does
        not spend half a minute exporting (minutes building). The torch backend needs nothing."""
        integration = _integration(params)
        choice = choose_engine(cls.__name__.lower(), params)
        if choice.backend == "torch":
            return []
        from evpipe.nodes.predict.export import cached_fused_onnx, fused_onnx_path

        variant, checkpoint = params["variant"], params["checkpoint"]
        made = [prepare_onnx(fused_onnx_path(variant, checkpoint, integration=integration),
                             lambda: cached_fused_onnx(variant, checkpoint, integration=integration))]
        if choice.backend == "tensorrt" and params["frame_size"]:
            made += build_plans(cls._predictor(params), params["frame_size"])
        return made

    @staticmethod
    def _predictor(params: dict[str, Any]) -> Any:
        from evpipe.nodes.predict.sampler import FramePredictor  # torch loads only when a graph runs this node

        return FramePredictor(params["variant"], params["checkpoint"], params["backend"],
                              integration=_integration(params), temperature=params["temperature"],
                              device=params["device"], precision=params["precision"],
                              threads=params["threads"] or None, seed=params["seed"])

    def start(self) -> None:
        p = self.params
        self.predictor = self._predictor(vars(p))
        if p.frame_size:
            warm_up(self.predictor, p.frame_size)
        self.anchors: dict[int, np.ndarray] = {}  # time -> real frame or prediction
        self.frame_times: deque[int] = deque()  # real frames within anchor_history_us, oldest first
        self.pending: list[Message] = []
        self.counts = {"frames": 0, "predictions": 0, "unanchored": 0}

    def process(self, port: str, msg: Message) -> None:
        if port == "voxels":
            self._window(msg)
            return
        frame = msg.frame()
        self.anchors[frame.t] = gray_unit(frame.image)  # a real frame replaces a prediction for its time
        self.frame_times.append(frame.t)
        while self.frame_times[0] < self.frame_times[-1] - self.params.anchor_history_us:
            self.frame_times.popleft()
        oldest = self.frame_times[0]
        self.anchors = {t: image for t, image in self.anchors.items() if t >= oldest}
        self.counts["frames"] += 1
        # Frames and windows travel on separate edges, so a window can overtake its frame.
        waiting, self.pending = self.pending, []
        for window in waiting:
            self._window(window)

    def _window(self, msg: Message) -> None:
        t_anchor, t_target = int(msg.meta["t_anchor"]), int(msg.meta["t_target"])
        anchor = self.anchors.get(t_anchor)
        if anchor is None:
            if not self.frame_times or t_anchor > self.frame_times[-1]:
                self.pending.append(msg)  # its frame (or the window before it) may still come
                if len(self.pending) <= _MAX_PENDING:
                    return
                msg = self.pending.pop(0)
                t_anchor = int(msg.meta["t_anchor"])
            if self.counts["unanchored"] == 0:
                self.log.warning("voxel window from t=%d has no anchor frame (known: %s); skipping such windows",
                                 t_anchor, sorted(self.anchors))
            self.counts["unanchored"] += 1
            return
        prediction = self.predictor.predict(anchor, np.asarray(msg.arrays["voxel"], np.float32))
        if t_target not in self.frame_times:
            self.anchors[t_target] = prediction  # the next window of a rollout starts here
        self.counts["predictions"] += 1
        meta = {"predicted": True, "t_anchor": t_anchor}
        self.emit("predictions", Message.from_frame(Frame(prediction, t_target, 0, meta)))

    def stop(self) -> None:
        engine = {}
        if hasattr(self, "predictor"):
            engine = {"engine": self.predictor.network.summary()}
            self.predictor.close()
        self.report({**self.counts, **engine})
