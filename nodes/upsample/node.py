"""The upsample node: HiFI frame-rate upsampling (×2, ×4, ×8) of a frame stream in an offline graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evpipe.nodes.model_engines import (
    choose_engine,
    declare_engine_params,
    onnx_engine_summary,
    prepare_onnx,
)
from evpipe.nodes.upsample import DEFAULT_CHECKPOINT
from evpipe.runtime.events import Frame
from evpipe.runtime.node import Node, NodeError, Spec
from evpipe.runtime.wire import Message

FACTORS = [2, 4, 8, 16]
AUTO_UPSAMPLE = ("torch (eager on the CPU, CUDA graphs per patch-batch shape on a GPU); onnxruntime and tensorrt run "
                 "the denoiser's ONNX export when asked for")


class Upsample(Node):
    """Raises the frame rate ``factor`` times: after each input frame (from the second on) it emits the
    ``factor - 1`` interpolated frames between it and the previous one (times evenly spaced, meta
    ``interpolated: true``), then the input frame itself, so the output is in time order. Frames come
    out float32 in [0, 1]: colour (H, W, 3) RGB when the stream's first frame has colour (the gray
    network runs on the luma and the chroma is carried, see ``Upsampler``), gray (H, W) when
    it is gray. Offline: each frame pair costs seconds on a CPU. Reports frames in, frames interpolated.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("frames", "frame", "frames in time order, gray or colour, uint8 or float in [0, 1]")
        spec.output("frames", "frame", "the input frames with the interpolated frames between them, float32, "
                    "colour kept")
        spec.param("factor", int, default=2, choices=FACTORS, doc="frame-rate multiplier (a power of two)")
        spec.param("checkpoint", str, default=DEFAULT_CHECKPOINT,
                   doc=f"shipped checkpoint name ({DEFAULT_CHECKPOINT}, the default, fine-tuned on real video; tiny, "
                   "synthetic data only) or a .pt file")
        spec.param("levels", int, default=3, minimum=1, maximum=8, doc="cascade pyramid levels (1: no cascade)")
        spec.param("steps", int, default=1, minimum=1, doc="DDIM sampling steps per level (the paper's sampler: 8)")
        spec.param("samples", int, default=1, minimum=1,
                   doc="samples averaged per level (the paper's sampler: 4; see CascadeSettings for the choice)")
        spec.param("overlap", float, default=0.25, minimum=0.0, maximum=0.9, doc="patch overlap fraction")
        spec.param("seed", int, default=0, doc="seed of the sampler's noise")
        declare_engine_params(spec, auto=AUTO_UPSAMPLE)

    def start(self) -> None:
        # torch loads only when a graph runs this node
        from evpipe.nodes.upsample.cascade import CascadeSettings, Upsampler
        from evpipe.nodes.upsample.model import load_checkpoint

        p = self.params
        try:
            patch = load_checkpoint(p.checkpoint).config.patch
        except (FileNotFoundError, ValueError) as error:
            raise NodeError(f"upsample.checkpoint: {error}") from None
        settings = CascadeSettings(levels=p.levels, steps=p.steps, samples=p.samples, patch=patch,
                                   overlap=p.overlap, seed=p.seed)
        self.upsampler = Upsampler(p.checkpoint, settings, p.device, p.backend, p.precision)
        self.previous: Frame | None = None
        self.colour: bool | None = None
        self.counts = {"frames": 0, "interpolated": 0}

    def _image(self, image: np.ndarray) -> np.ndarray:
        """float32 in [0, 1]: gray (H, W) for a gray model on a gray stream, else (H, W, 3) RGB."""
        from evpipe.nodes.colour import colour_image, gray_unit, is_gray, unit_image

        image = unit_image(image)
        if self.colour is None:  # the stream's first frame decides, so every frame out has one shape
            self.colour = self.upsampler.model.config.channels == 3 or not is_gray(image)
        return colour_image(image) if self.colour else gray_unit(image)

    def process(self, port: str, msg: Message) -> None:
        frame = msg.frame()
        frame = Frame(self._image(frame.image), frame.t, frame.exposure_us, frame.meta)
        previous, self.previous = self.previous, frame
        self.counts["frames"] += 1
        if previous is not None:
            if frame.image.shape != previous.image.shape:
                raise NodeError(f"upsample: frame size changed from {previous.image.shape} to {frame.image.shape} "
                                f"at t={frame.t} µs")
            factor = self.params.factor
            for k, image in enumerate(self.upsampler.between(previous.image, frame.image, factor), start=1):
                t = previous.t + (frame.t - previous.t) * k // factor
                self.emit("frames", Message.from_frame(Frame(image, t, 0, {"interpolated": True})))
                self.counts["interpolated"] += 1
        self.emit("frames", Message.from_frame(frame))

    @classmethod
    def check_machine(cls, name: str, params: dict[str, Any]) -> dict[str, str]:
        def onnx_path() -> Path:
            from evpipe.nodes.upsample.export import denoiser_onnx_path  # torch loads only for a graph with this node

            return denoiser_onnx_path(params["checkpoint"])

        return onnx_engine_summary(name, choose_engine(name, params, auto_forms=("torch",)), onnx_path,
                                   "at the first frame pair", "patch-batch shape")

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        """``evpipe build-engines``: the denoiser's cached ONNX export for the onnxruntime and tensorrt
        backends (TensorRT plans follow the levels' patch batches and are built at the first frame pair)."""
        if choose_engine(cls.__name__.lower(), params, auto_forms=("torch",)).backend == "torch":
            return []
        from evpipe.nodes.upsample.export import cached_denoiser_onnx, denoiser_onnx_path

        return [prepare_onnx(denoiser_onnx_path(params["checkpoint"]),
                             lambda: cached_denoiser_onnx(params["checkpoint"]))]

    def stop(self) -> None:
        engine = {}
        if hasattr(self, "upsampler"):
            engine = {"engine": self.upsampler.network.summary()}
            self.upsampler.close()
        if hasattr(self, "counts"):
            self.report({**self.counts, **engine})
