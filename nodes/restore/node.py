"""Offline restoration nodes: read a clip, restore it with DDS in overlapping windows.

``clip_reader`` (source) emits the frames of a video file (anything PyAV decodes) or of an event
recording with APS frames (any format ``evpipe info`` knows). ``restore`` (transform) buffers
frames into windows of ``window`` frames overlapping by ``overlap``, restores each window with the
DDS sampler (:mod:`evpipe.nodes.restore.sampler`) and emits the restored frames in order; where two
windows overlap their estimates are cross-faded linearly, so a clip of any length runs in the
memory of one window. ``evpipe restore IN OUT --degradation ...`` runs ``configs/restore_clip.yaml``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.nodes.model_engines import (
    EngineChoice,
    NetworkEngines,
    choose_engine,
    declare_engine_params,
    onnx_engine_summary,
    prepare_onnx,
)
from evpipe.nodes.restore.psf import BOUNDARIES, DEFAULT_BOUNDARY
from evpipe.runtime.events import Frame
from evpipe.runtime.node import Node, NodeError, Spec
from evpipe.runtime.wire import Message

DEGRADATIONS = ("uniform7", "uniform13", "gaussian1")
SPATIAL = ("none", "blur", "sr4")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
AUTO_RESTORE = ("torch (eager on the CPU, CUDA graphs per window shape on a GPU); onnxruntime and tensorrt run the "
                "prior's ONNX export when asked for")


def open_prior(name: str, params: dict[str, Any]) -> tuple[EngineChoice, Any, NetworkEngines]:
    """The engine choice, the prior (an ImagePrior on the chosen device) and the prior behind the engine
    interface, for restore node ``name``'s parameters (also what ``evpipe batch restore`` runs)."""
    from evpipe.nodes.restore.export import INPUT_NAMES, OUTPUT_NAME, cached_prior_onnx
    from evpipe.nodes.restore.model import load_prior

    choice = choose_engine(name, params, auto_forms=("torch",))
    try:
        model, _ = load_prior(params["checkpoint"], choice.device)
    except (FileNotFoundError, ValueError) as error:
        raise NodeError(f"{name}: {error}") from error
    network = NetworkEngines(choice, model, INPUT_NAMES, OUTPUT_NAME,
                             onnx=lambda: cached_prior_onnx(params["checkpoint"]), threads=params["threads"] or None)
    return choice, model, network


class ClipReader(Node):
    """Frames of a video file (decoded with PyAV) or of a recording's APS frames, in order."""

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.output("frames", "frame", "the clip's frames (video: uint8 RGB; recording: as stored)")
        spec.param("path", str, doc=f"a video file ({', '.join(VIDEO_SUFFIXES)}) or an event recording with frames",
                   input_path=True)
        spec.param("max_frames", int, 0, "stop after this many frames; 0: all", minimum=0)

    def start(self) -> None:
        self.path = Path(self.params.path)
        if not self.path.exists():
            raise NodeError(f"clip_reader: {self.path} does not exist")

    def _video(self) -> Iterator[Frame]:
        import av

        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                for frame in container.decode(stream):
                    t = round(float(frame.time or 0.0) * 1e6)
                    yield Frame(frame.to_ndarray(format="rgb24"), t, 0)
        except (av.error.FFmpegError, IndexError) as error:
            raise NodeError(f"clip_reader: cannot decode {self.path} as a video ({error})") from error

    def _recording(self) -> Iterator[Frame]:
        from evpipe.nodes.sources.readers import RecordingError, open_recording

        try:
            with open_recording(self.path) as recording:
                yield from recording.frames()
        except RecordingError as error:
            raise NodeError(f"clip_reader: {error}") from error

    def produce(self) -> Iterator[tuple[str, Message]]:
        frames = self._video() if self.path.suffix.lower() in VIDEO_SUFFIXES else self._recording()
        count = 0
        for frame in frames:
            yield "frames", Message.from_frame(frame)
            count += 1
            if count == self.params.max_frames:
                break
        if count == 0:
            raise NodeError(f"clip_reader: {self.path} has no frames")
        self.report({"frames": count})


class Restore(Node):
    """DDS video restoration of a clip in overlapping windows (float32 [0, 1] out, colour kept).

    A clip whose first frame has colour comes out (H, W, 3) RGB: the gray prior restores the luma and the
    chroma is restored by the CG-only solve of the same operator, or kept as measured for gaussian1
    (``windows.restore_colour_window``, ``chroma_method``); a gray clip comes out (H, W). Frames are
    reflect-padded to a multiple of the prior's stride. The measurement model: the temporal PSF
    ``degradation`` (frames beyond each window given by ``boundary``), then optionally ``spatial``
    ``blur`` (Gaussian σ 2) or ``sr4`` (4× average pooling: the output is 4× the input size). Reports
    frames in/out and windows.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("frames", "frame", "degraded frames in time order, gray or colour, uint8 or float in [0, 1]")
        spec.output("frames", "frame", "restored frames, float32 (H, W) or (H, W, 3) in [0, 1], the inputs' times")
        spec.param("degradation", str, "uniform7", "temporal PSF of the measurement", choices=list(DEGRADATIONS))
        spec.param("boundary", str, DEFAULT_BOUNDARY, "frames beyond a window in the PSF: wrapped around (the paper's "
                   "code) or the end frames repeated", choices=list(BOUNDARIES))
        spec.param("spatial", str, "none", "spatial degradation after the PSF", choices=list(SPATIAL))
        spec.param("checkpoint", str, "tiny", "shipped prior name (tiny) or a prior .pt file")
        spec.param("nfe", int, 20, "network evaluations (sampler steps) per window", minimum=1)
        spec.param("cg_steps", int, 5, "conjugate-gradient steps per sampler step", minimum=0)
        spec.param("eta", float, 0.15, "DDIM stochasticity (0.8 is the paper's choice with a spatial degradation)",
                   minimum=0.0, maximum=1.0)
        spec.param("time_power", float, 1.0, "sampler time grid t_i = (1 - i/nfe)^time_power (1: the paper's even "
                   "grid; larger ends nearer t = 0, see evpipe.nodes.restore.sampler)", minimum=0.01)
        spec.param("batch_consistent", bool, True, "the same noise for every frame (DDS); false: per-frame noise")
        spec.param("window", int, 16, "frames restored together", minimum=2)
        spec.param("overlap", int, 4, "frames shared by consecutive windows (cross-faded)", minimum=0)
        spec.param("seed", int, 0, "seed of the sampler's noise")
        spec.param("threads", int, 0, "torch CPU threads (and onnxruntime's); 0: the backend's default", minimum=0)
        declare_engine_params(spec, auto=AUTO_RESTORE)
        spec.param("progress", bool, True, "show a progress bar per window on stderr")

    def start(self) -> None:
        import torch

        from evpipe.nodes.restore.psf import temporal_psf
        from evpipe.nodes.restore.windows import WindowStitcher, sampler_config

        p = self.params
        if p.overlap >= p.window:
            raise NodeError(f"restore: overlap ({p.overlap}) must be smaller than window ({p.window})")
        if p.threads:
            torch.set_num_threads(p.threads)
        self.choice, self.model, self.network = open_prior(self.name, vars(p))
        self.config = sampler_config(vars(p))
        self.psf = temporal_psf(p.degradation)
        self.buffer: list[tuple[np.ndarray, int]] = []  # (frame, time) not yet restored in a full window
        self.stitcher = WindowStitcher(p.overlap)
        self.counts = {"frames_in": 0, "frames_out": 0, "windows": 0}
        self.size: tuple[int, ...] | None = None
        self.colour: bool | None = None

    def _image(self, image: np.ndarray) -> np.ndarray:
        """float32 in [0, 1]: (H, W, 3) RGB for a colour clip, (H, W) for a gray one."""
        from evpipe.nodes.colour import is_gray, unit_image
        from evpipe.nodes.restore.windows import clip_image

        if self.colour is None:  # the clip's first frame decides, so every window has one shape
            self.colour = not is_gray(unit_image(image))
        return clip_image(image, self.colour)

    def process(self, port: str, msg: Message) -> None:
        frame = msg.frame()
        image = self._image(frame.image)
        if self.size is None:
            self.size = image.shape
        elif image.shape != self.size:
            raise NodeError(f"restore: frame at t={frame.t} has size {image.shape}, the clip's is {self.size}")
        self.buffer.append((image, frame.t))
        self.counts["frames_in"] += 1
        if len(self.buffer) == self.params.window:
            self._restore_window(final=False)

    def _restore_window(self, final: bool) -> None:
        from evpipe.nodes.restore.windows import restore_any_window

        p = self.params
        frames = np.stack([image for image, _ in self.buffer])
        restored = restore_any_window(self.model, self.psf, frames, self.config, spatial=p.spatial,
                                      boundary=p.boundary, device=self.choice.device, progress=p.progress,
                                      network=self.network)
        ready = self.stitcher.add(restored, final)
        self._send(ready, self.buffer[: len(ready)])
        self.buffer = self.buffer[len(ready):]
        self.counts["windows"] += 1

    def _send(self, images: np.ndarray, frames: list[tuple[np.ndarray, int]]) -> None:
        from evpipe.nodes.restore.windows import restored_message

        for image, (_, t) in zip(images, frames, strict=True):
            self.emit("frames", restored_message(image, t, self.params.degradation))
            self.counts["frames_out"] += 1

    @classmethod
    def check_machine(cls, name: str, params: dict[str, Any]) -> dict[str, str]:
        def onnx_path() -> Path:
            from evpipe.nodes.restore.export import prior_onnx_path  # torch loads only for a graph with this node

            return prior_onnx_path(params["checkpoint"])

        return onnx_engine_summary(name, choose_engine(name, params, auto_forms=("torch",)), onnx_path,
                                   "at the first window", "window shape")

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        """``evpipe build-engines``: the prior's cached ONNX export for the onnxruntime and tensorrt
        backends (TensorRT plans follow the clip's frame size and are built at the first window)."""
        if choose_engine(cls.__name__.lower(), params, auto_forms=("torch",)).backend == "torch":
            return []
        from evpipe.nodes.restore.export import cached_prior_onnx, prior_onnx_path

        return [prepare_onnx(prior_onnx_path(params["checkpoint"]), lambda: cached_prior_onnx(params["checkpoint"]))]

    def stop(self) -> None:
        if not hasattr(self, "buffer"):
            return
        if len(self.buffer) > self.stitcher.pending:
            self._restore_window(final=True)
        elif self.stitcher.pending:  # the stream ended exactly at a window: its overlap is final as it is
            self._send(self.stitcher.flush(), self.buffer)
        engine = self.network.summary()
        self.network.close()
        self.report({**self.counts, "engine": engine})
