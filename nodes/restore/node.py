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

import numpy as np

from evpipe.nodes.restore.psf import BOUNDARIES, DEFAULT_BOUNDARY
from evpipe.runtime.events import Frame
from evpipe.runtime.node import Node, NodeError, Spec
from evpipe.runtime.wire import Message

DEGRADATIONS = ("uniform7", "uniform13", "gaussian1")
SPATIAL = ("none", "blur", "sr4")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


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
    """DDS video restoration of a clip in overlapping windows (gray, float32 [0, 1] out).

    Frames are converted to gray (the shipped prior is gray) and reflect-padded to a multiple of the
    prior's stride. The measurement model: the temporal PSF ``degradation`` (frames beyond each window
    given by ``boundary``), then optionally ``spatial`` ``blur`` (Gaussian σ 2) or ``sr4`` (4× average pooling:
    the output is 4× the input size). Reports frames in/out and windows.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("frames", "frame", "degraded frames in time order, gray or colour, uint8 or float in [0, 1]")
        spec.output("frames", "frame", "restored frames, float32 (H, W) in [0, 1], the inputs' times")
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
        spec.param("threads", int, 0, "torch CPU threads; 0: torch's default", minimum=0)
        spec.param("device", str, "cpu", "torch device")
        spec.param("progress", bool, True, "show a progress bar per window on stderr")

    def start(self) -> None:
        import torch

        from evpipe.nodes.predict.node import gray_unit  # imports torch: only when a graph runs this node
        from evpipe.nodes.restore.model import load_prior
        from evpipe.nodes.restore.psf import temporal_psf
        from evpipe.nodes.restore.sampler import DDSConfig

        p = self.params
        if p.overlap >= p.window:
            raise NodeError(f"restore: overlap ({p.overlap}) must be smaller than window ({p.window})")
        if p.threads:
            torch.set_num_threads(p.threads)
        try:
            self.model, _ = load_prior(p.checkpoint, p.device)
        except (FileNotFoundError, ValueError) as error:
            raise NodeError(f"restore: {error}") from error
        self.config = DDSConfig(nfe=p.nfe, cg_steps=p.cg_steps, eta=p.eta, time_power=p.time_power,
                                batch_consistent=p.batch_consistent, seed=p.seed)
        self.psf = temporal_psf(p.degradation)
        self.buffer: list[tuple[np.ndarray, int]] = []  # (gray frame, time) not yet restored in a full window
        self.carry: np.ndarray | None = None  # the previous window's estimates of the buffer's first frames
        self.counts = {"frames_in": 0, "frames_out": 0, "windows": 0}
        self.size: tuple[int, int] | None = None
        self.gray = gray_unit

    def process(self, port: str, msg: Message) -> None:
        frame = msg.frame()
        image = self.gray(frame.image)
        if self.size is None:
            self.size = image.shape
        elif image.shape != self.size:
            raise NodeError(f"restore: frame at t={frame.t} has size {image.shape}, the clip's is {self.size}")
        self.buffer.append((image, frame.t))
        self.counts["frames_in"] += 1
        if len(self.buffer) == self.params.window:
            self._restore_window(final=False)

    def _restore_window(self, final: bool) -> None:
        import torch

        from evpipe.nodes.restore.operators import make_operator
        from evpipe.nodes.restore.sampler import dds_restore

        p = self.params
        frames = np.stack([image for image, _ in self.buffer])
        scale = 4 if p.spatial == "sr4" else 1
        multiple = self.model.multiple
        height, width = frames.shape[1] * scale, frames.shape[2] * scale
        pad_h, pad_w = -height % (multiple * scale), -width % (multiple * scale)
        padded = np.pad(frames, ((0, 0), (0, pad_h // scale), (0, pad_w // scale)), mode="reflect")
        y = torch.from_numpy(padded[:, None]).to(p.device)
        shape = (len(frames), 1, (height + pad_h), (width + pad_w))
        op = make_operator(self.psf, shape, None if p.spatial == "none" else p.spatial, boundary=p.boundary)
        restored = dds_restore(self.model, op, y, shape, self.config, progress=p.progress)
        restored = restored[:, 0, :height, :width].cpu().numpy().astype(np.float32)
        if self.carry is not None:  # cross-fade the overlap with the previous window's estimates
            n = len(self.carry)
            weight = ((np.arange(n) + 1) / (n + 1)).astype(np.float32)[:, None, None]
            restored[:n] = (1 - weight) * self.carry + weight * restored[:n]
        keep = 0 if final else p.overlap
        self._send(restored[: len(frames) - keep], self.buffer[: len(frames) - keep])
        self.carry = restored[len(frames) - keep :] if keep else None
        self.buffer = self.buffer[len(frames) - keep :]
        self.counts["windows"] += 1

    def _send(self, images: np.ndarray, frames: list[tuple[np.ndarray, int]]) -> None:
        for image, (_, t) in zip(images, frames, strict=True):
            meta = {"restored": True, "degradation": self.params.degradation}
            self.emit("frames", Message.from_frame(Frame(image, t, 0, meta)))
            self.counts["frames_out"] += 1

    def stop(self) -> None:
        if not hasattr(self, "buffer"):
            return
        done = 0 if self.carry is None else len(self.carry)
        if len(self.buffer) > done:
            self._restore_window(final=True)
        elif self.carry is not None:  # the stream ended exactly at a window: its overlap is final as it is
            self._send(self.carry, self.buffer)
        self.report(dict(self.counts))
