"""Running the trained deblurrer on numpy frames: the raw E of an exposure, padding, backends.

:class:`Deblurrer` wraps one variant: ``student`` (the distilled few-step graph the node runs, on
any backend through the engine interface, :class:`evpipe.nodes.model_engines.NetworkEngines`) or the
guided ``teacher`` (torch only: Algorithm 1 with ``degradation`` ``Ex``, ``fEx`` or ``fEx+r``). Frames
of any sensor size are padded (:func:`~evpipe.nodes.model_engines.pad_to_multiple`: edge values for
the frame and E, zeros for the voxel grid) to a multiple of the model's stride and cropped back; one
engine is opened per padded size.

    deblurrer = Deblurrer("student", checkpoint="tiny", backend="onnxruntime")
    sharp = deblurrer.deblur_events(blurry, events, exposure_start, exposure_end, t_ref)  # (H, W) in [0, 1]

The model's inputs besides the frame are the raw E of the exposure (:func:`exposure_edi`) and the
voxel grid of the exposure's events (:func:`exposure_voxel`, the student's extra condition).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evpipe.kernels import edi_integral, voxel_grid
from evpipe.nodes.deblur.checkpoint import load_model
from evpipe.nodes.deblur.models import DEGRADATIONS, FusedStudent, GuidedTeacher
from evpipe.nodes.deblur.presets import Guidance
from evpipe.nodes.model_engines import EngineChoice, NetworkEngines, pad_to_multiple
from evpipe.runtime.engines import BACKENDS, select_engine
from evpipe.runtime.events import Events

VARIANTS = ("student", "teacher")
INPUT_NAMES = ("blurry", "edi", "voxel", "noise")
OUTPUT_NAME = "sharp"


def exposure_edi(events: Events, exposure_start: int, exposure_end: int, t_ref: int, height: int, width: int,
                 c: float, samples: int) -> np.ndarray:
    """Raw EDI double integral E float32 (H, W) at ``t_ref`` of the events with start <= t < end (µs)."""
    return edi_integral(events.t, events.x, events.y, events.p, c, exposure_start, exposure_end, samples, height,
                        width, t_ref)


def exposure_voxel(events: Events, height: int, width: int, bins: int) -> np.ndarray:
    """Voxel grid float32 (bins, H, W) of the exposure's events (E2VID bins over their time span)."""
    return voxel_grid(events.t, events.x, events.y, events.p, bins, height, width)


class Deblurrer:
    """One deblurrer variant on one backend (see the module docstring).

    The sampler starts from zero noise (temperature 0, the mean path): deterministic, the highest
    PSNR; ``guidance`` overrides the checkpoint's weights for the teacher."""

    def __init__(self, variant: str = "student", checkpoint: str | Path = "tiny", backend: str = "onnxruntime", *,
                 degradation: str = "fEx+r", guidance: Guidance | None = None, device: str = "cpu",
                 precision: str = "fp32", threads: int | None = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if variant == "teacher" and backend not in ("auto", "torch"):
            raise ValueError("the guided teacher runs on the torch backend only (it is not exported)")
        if degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")
        self.model, self.info = load_model(checkpoint)
        self.choice = EngineChoice(*select_engine(backend, device, precision,
                                                  BACKENDS if variant == "student" else ("torch",)), precision)
        self.variant, self.threads = variant, threads
        self.backend, self.device = self.choice.backend, self.choice.device
        self.checkpoint = checkpoint
        if variant == "student":
            self.module: torch.nn.Module = FusedStudent(self.model, self.info["student_steps"]).eval()
        else:
            self.module = GuidedTeacher(self.model, self.info["teacher_steps"], guidance or self.info["guidance"],
                                        degradation).eval()
        self.c, self.samples = self.model.config.edi_c, self.model.config.edi_samples
        self.bins = self.model.config.event_bins
        self.multiple = self.model.multiple
        onnx = None
        if self.backend != "torch":
            from evpipe.nodes.deblur.export import cached_student_onnx

            onnx = cached_student_onnx(checkpoint)  # exported now (once per machine), not at the first frame
        self.network = NetworkEngines(self.choice, self.module, INPUT_NAMES, OUTPUT_NAME,
                                      onnx=None if onnx is None else lambda: onnx, threads=threads)

    def warm_up(self, height: int, width: int) -> None:
        """Open (build) the engine for height x width frames now."""
        zeros = np.zeros((height, width), np.float32)
        self.deblur(zeros, zeros + 1.0, np.zeros((self.bins, height, width), np.float32))

    def deblur(self, blurry: np.ndarray, edi: np.ndarray, voxel: np.ndarray) -> np.ndarray:
        """Sharp frame float32 (H, W) in [0, 1] from a blurry gray frame (H, W) in [0, 1] (uint8 is
        scaled by 1/255), the raw E (H, W) of its exposure (:func:`exposure_edi` with the model's c)
        and the exposure's voxel grid (bins, H, W) (:func:`exposure_voxel` with :attr:`bins`)."""
        blurry = np.asarray(blurry)
        if blurry.dtype == np.uint8:
            blurry = blurry.astype(np.float32) / 255.0
        if blurry.ndim != 2:
            raise ValueError(f"blurry must be a gray (H, W) frame, got shape {blurry.shape}")
        h, w = blurry.shape
        if np.shape(edi) != (h, w):
            raise ValueError(f"edi shape {np.shape(edi)} does not match the frame's {(h, w)}")
        if np.shape(voxel) != (self.bins, h, w):
            raise ValueError(f"voxel shape {np.shape(voxel)} does not match ({self.bins} bins, frame {(h, w)})")
        blurry_p = pad_to_multiple(blurry, self.multiple, "edge")
        feeds = {"blurry": blurry_p[None, None], "edi": pad_to_multiple(edi, self.multiple, "edge")[None, None],
                 "voxel": pad_to_multiple(voxel, self.multiple, "zeros")[None],
                 "noise": np.zeros((1, 1, *blurry_p.shape), np.float32)}
        return self.network.run(feeds)[0, 0, :h, :w]

    def deblur_events(self, blurry: np.ndarray, events: Events, exposure_start: int, exposure_end: int,
                      t_ref: int) -> np.ndarray:
        """The evaluation protocol: the sharp frame at ``t_ref`` from the blurry frame and its exposure's events."""
        h, w = np.asarray(blurry).shape[:2]
        return self.deblur(blurry, exposure_edi(events, exposure_start, exposure_end, t_ref, h, w, self.c,
                                                self.samples), exposure_voxel(events, h, w, self.bins))

    def close(self) -> None:
        self.network.close()
