"""The deblur node: blurry frames with exposure times + the event stream in, sharp frames out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evpipe.kernels.edi import warm_up as warm_up_edi
from evpipe.kernels.voxel import warm_up as warm_up_voxel_grid
from evpipe.nodes.colour import gray_unit
from evpipe.nodes.model_engines import (
    build_plans,
    choose_engine,
    declare_engine_params,
    onnx_engine_summary,
    prepare_onnx,
    warm_up,
)
from evpipe.nodes.predict.node import AUTO
from evpipe.nodes.transforms.voxelizer import EventIntake
from evpipe.runtime.events import Frame
from evpipe.runtime.node import Node, NodeError, Spec
from evpipe.runtime.wire import Message

METHODS = ("diffevent", "edi")


class Deblur(Node):
    """Event-guided deblurring of every exposed frame (DiffEvent's distilled student, or plain EDI).

    A frame on ``frames`` (time t = exposure midpoint, ``exposure_us`` > 0) is held until the events
    stream's watermark has passed its exposure [t - e//2, t + e - e//2) — in a live graph the events of
    the exposure are usually buffered already when the frame arrives — then E (the EDI double integral
    of those events, ``evpipe.kernels.edi_integral``) is computed and the frame is deblurred:
    ``method: diffevent`` runs the student (:class:`evpipe.nodes.deblur.sampler.Deblurrer`) on the frame,
    E and the voxel grid of the exposure's events, ``method: edi`` divides by E (the EDI baseline, with
    ``edi_c``). Output: float32 (H, W) in [0, 1] at time t, meta ``deblurred`` (the method),
    ``exposure_us`` (of the input). Colour frames are deblurred as their luma. Frames without an
    exposure time get ``exposure_us`` when it is set, else they are counted (``no_exposure``) and
    skipped. Events are kept from the oldest pending exposure and for ``max_buffer_us`` behind the
    watermark; a frame whose exposure starts before that is counted (``late``) and skipped. At the end of
    the stream the frames still pending are deblurred with the events there are. Events outside the
    frame or going back in time are dropped and counted. Reports frames_in, deblurred, no_exposure, late,
    events_dropped.

    Any sensor size runs: frames are padded to the student's multiple (8) and cropped back. Cost per
    frame on this 2-core CPU (ONNX Runtime, 2 threads, isolated calls, ``tools/bench_students.py`` at load
    1.5-1.8), checkpoint ``tiny-rt`` (the default) / ``tiny``: 346x260 11 / 54 ms, 640x480 38 / 181 ms,
    1280x720 118 / 570 ms. Live at 1x on the full DAVIS346 (``tools/bench_realtime.py``, every frame on a
    lossless edge, ``frame_size`` set): ``tiny-rt`` deblurs all 25 frames a second at end-to-end p50
    18 ms, p99 25-55 ms (median of 3 runs, three sets); ``tiny`` falls behind (p50 344 ms).
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("frames", "frame", "blurry frames with exposure_us, gray or colour, uint8 or float in [0, 1]")
        spec.input("events", "events", "the event stream of the same sensor, time-ordered")
        spec.output("frames", "frame", "sharp frames float32 (H, W) in [0, 1] at the exposure midpoint")
        spec.param("method", str, "diffevent", "diffevent (the distilled student) or edi (blurry / E)",
                   choices=list(METHODS))
        spec.param("checkpoint", str, "tiny-rt", "shipped deblur checkpoint name or a checkpoint directory: tiny-rt "
                   "(default) has the compact student, chosen for a live full sensor on a 2-core CPU; tiny the wider "
                   "one, 0.24-0.31 dB better on the synthetic test split at 3.5x the cost (benchmarks/RESULTS.md)")
        declare_engine_params(spec, auto=AUTO)
        spec.param("frame_size", list, None, "[width, height] of the frames: the engine opens and runs once at start "
                   "(else at the first frame, and a live stream's frames arriving meanwhile wait or are skipped), "
                   "and `evpipe build-engines` builds the TensorRT plan ahead (one per static shape)")
        spec.param("threads", int, 0, "onnxruntime intra-op threads; 0 = all usable cores", minimum=0)
        spec.param("edi_c", float, 0.0, "edi: contrast threshold; 0 = the checkpoint's (the c the model saw)",
                   minimum=0.0)
        spec.param("exposure_us", int, 0, "exposure assumed for frames that carry none (µs); 0 skips such frames",
                   minimum=0)
        spec.param("max_buffer_us", int, 1_000_000, "events kept behind the watermark for late frames, µs",
                   minimum=1)

    @classmethod
    def check_machine(cls, name: str, params: dict[str, Any]) -> dict[str, str] | None:
        if params["method"] == "edi":
            return None  # no network
        def onnx_path() -> Path:
            from evpipe.nodes.deblur.export import student_onnx_path  # torch loads only for a graph with this node

            return student_onnx_path(params["checkpoint"])

        return onnx_engine_summary(name, choose_engine(name, params), onnx_path, "at start", "frame size")

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        """``evpipe build-engines``: the student's cached ONNX export (onnxruntime, tensorrt) and, with
        tensorrt and ``frame_size``, its TensorRT plan. Nothing for ``method: edi`` or the torch backend."""
        if params["method"] == "edi":
            return []
        choice = choose_engine(cls.__name__.lower(), params)
        if choice.backend == "torch":
            return []
        from evpipe.nodes.deblur.export import cached_student_onnx, student_onnx_path

        checkpoint = params["checkpoint"]
        made = [prepare_onnx(student_onnx_path(checkpoint), lambda: cached_student_onnx(checkpoint))]
        if choice.backend == "tensorrt" and params["frame_size"]:
            made += build_plans(cls._deblurrer(params), params["frame_size"])
        return made

    @staticmethod
    def _deblurrer(params: dict[str, Any]) -> Any:
        from evpipe.nodes.deblur.sampler import Deblurrer  # torch loads only when a graph runs this node

        if params["method"] == "edi":  # only the checkpoint's c and samples are used: no engine, no export
            return Deblurrer("student", params["checkpoint"], "torch")
        return Deblurrer("student", params["checkpoint"], params["backend"], device=params["device"],
                         precision=params["precision"], threads=params["threads"] or None)

    def start(self) -> None:
        from evpipe.nodes.deblur.sampler import exposure_edi, exposure_voxel

        p = self.params
        try:
            self.deblurrer = self._deblurrer(vars(p))
        except ValueError as error:
            raise NodeError(f"{self.name}: parameter 'checkpoint': {error}") from None
        if p.method == "diffevent" and p.frame_size:
            warm_up(self.deblurrer, p.frame_size)
        # The event kernels load now, not at the first frame (0.2 s there, holding back the frames behind it);
        # EDI alone never voxelizes.
        warm_up_edi()
        if p.method == "diffevent":
            warm_up_voxel_grid()

        self.exposure_edi, self.exposure_voxel = exposure_edi, exposure_voxel
        self.c = p.edi_c or self.deblurrer.c
        self.stream = EventIntake()
        self.pending: list[Frame] = []
        self.counts = {"frames_in": 0, "deblurred": 0, "no_exposure": 0, "late": 0, "events_dropped": 0}

    def process(self, port: str, msg: Message) -> None:
        if port == "frames":
            self._on_frame(msg.frame())
        else:
            self._on_events(msg)
        self._emit_ready(final=False)
        self._release()

    def _on_frame(self, frame: Frame) -> None:
        self.counts["frames_in"] += 1
        if frame.exposure_us <= 0 and self.params.exposure_us:
            frame = Frame(frame.image, frame.t, self.params.exposure_us, frame.meta)
        if frame.exposure_us <= 0:
            if self.counts["no_exposure"] == 0:
                self.log.warning("frame at t=%d has no exposure time; frames without one are skipped", frame.t)
            self.counts["no_exposure"] += 1
        elif frame.exposure_start < self.stream.released_before:
            self.counts["late"] += 1
        else:
            self.pending.append(frame)

    def _on_events(self, msg: Message) -> None:
        self.counts["events_dropped"] += self.stream.accept(msg)[1]

    def _emit_ready(self, final: bool) -> None:
        limit = self.stream.known_until(final)
        ready = [f for f in self.pending if final or f.exposure_end - 1 <= limit]
        self.pending = [f for f in self.pending if not (final or f.exposure_end - 1 <= limit)]
        for frame in sorted(ready, key=lambda f: f.t):
            self._deblur(frame)

    def _deblur(self, frame: Frame) -> None:
        blurry = gray_unit(frame.image)
        height, width = blurry.shape
        buffer = self.stream.buffer
        lo, hi = np.searchsorted(buffer.t, [frame.exposure_start, frame.exposure_end], side="left")
        events = buffer.events(int(lo), int(hi))
        inside = (events.x < width) & (events.y < height)
        if not inside.all():
            self.counts["events_dropped"] += int(len(events) - np.count_nonzero(inside))
            events = events[inside]
        edi = self.exposure_edi(events, frame.exposure_start, frame.exposure_end, frame.t, height, width, self.c,
                                self.deblurrer.samples)
        if self.params.method == "edi":
            sharp = np.clip(blurry / edi, 0.0, 1.0).astype(np.float32)
        else:
            voxel = self.exposure_voxel(events, height, width, self.deblurrer.bins)
            sharp = self.deblurrer.deblur(blurry, edi, voxel)
        self.counts["deblurred"] += 1
        meta = {"deblurred": self.params.method, "exposure_us": frame.exposure_us}
        self.emit("frames", Message.from_frame(Frame(sharp, frame.t, 0, meta)))

    def _release(self) -> None:
        """Keep events from the oldest pending exposure, and ``max_buffer_us`` behind the watermark."""
        if self.stream.watermark is None:
            return
        cut = self.stream.watermark - self.params.max_buffer_us
        if self.pending:
            cut = min(cut, min(f.exposure_start for f in self.pending))
        self.stream.release_before(cut)

    def stop(self) -> None:
        if hasattr(self, "stream"):
            self._emit_ready(final=True)
        engine = {}
        if hasattr(self, "deblurrer"):
            if self.params.method == "diffevent":
                engine = {"engine": self.deblurrer.network.summary()}
            self.deblurrer.close()
        if hasattr(self, "counts"):
            self.report({**self.counts, **engine})
