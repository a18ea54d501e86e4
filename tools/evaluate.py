"""Evaluate a model and its task's baselines on held-out data: one harness for every model.

    python -m evpipe.tools.evaluate --task predict --model event-integration --split test
    python -m evpipe.tools.evaluate --task predict --model dessert-4step --checkpoint ckpt.pt
    python -m evpipe.tools.evaluate --task deblur --model edi --dataset ~/.cache/evpipe/datasets/tiny
    python -m evpipe.tools.evaluate --task restore --model dds cg --degradation uniform7 gaussian1

Prints a Markdown table (mean ± std over samples), and writes ``<out>/<name>.md``, ``.json``
(configuration, fitted parameters, summaries, per-sequence results, timings),
``<name>_per_sequence.csv`` and ``<name>.png`` (examples: input, baselines, model, ground truth).

Tasks, their data and their model protocol (images are float32 in [0, 1], (H, W) gray or
(H, W, 3) RGB; ``Events`` is ``evpipe.runtime.events.Events`` on the same sensor):

* ``predict`` — DLT samples (``PredictionView``) for each gap ``--k`` in APS frames; on the real
  recordings in ``--real-data`` (DAVIS346 street, ECD slider_depth), APS frame i+1 from frame i
  and the real events between them. ``fn(anchor, events, t_anchor, t_target) -> target``;
  ``events`` are those with t_anchor < t <= t_target (µs).
* ``deblur`` — ``DeblurView``: ``fn(blurry, events, exposure_start, exposure_end, t_ref) -> sharp``
  at ``t_ref`` (the exposure centre); ``events`` are those with start <= t < end.
* ``upsample`` — ×2 frame rate, ``InterpolationView(context=True)``: ``fn(frame0, frame1, before,
  after) -> middle``; ``before``/``after`` are the neighbours at the same spacing on each side
  (a model may ignore them).
* ``restore`` — ``ClipView`` clips of ``--clip-length`` (16) APS frames degraded by a temporal PSF (``--degradation``,
  the DDS paper's settings): ``fn(degraded (L, H, W[, 3]), psf (w,) float32, spatial, boundary) -> (L, H, W[, 3])``,
  with ``degraded[t] = sum_j psf[j] * clip[(t + j - w // 2) mod L]`` (``--boundary circular``, the boundary of
  the paper's released code and the default; ``replicate`` repeats the end frames instead),
  plus, with ``--noise SIGMA``, Gaussian noise of that standard deviation (seeded by the clip's index),
  and, with ``--bits N``, the result clipped to [0, 1] and rounded to 2^N − 1 levels (``--bits 8``: what
  an 8-bit video file, the input of ``evpipe restore``, holds; see :class:`Measurement`).
  Spatio-temporal degradations ``uniform7+blur``, ``+sr4``, ``+inpaint`` (any PSF before the ``+``)
  follow the PSF with the DDS paper's spatial operator
  (``evpipe.nodes.restore.operators.spatial_operator``: Gaussian blur σ 2, 4× average pooling — the
  measurement is then 4× smaller —, or a random mask keeping 50% of the pixels, seeded by the clip's
  index): ``spatial = {"kind": ..., "seed": ...}``; None for a PSF alone.

Several ``--model`` names run side by side (with the baselines) in one report.

Models. A model is a factory ``factory(context: ModelContext) -> fn``; ``context`` carries the
checkpoint path, device, sensor size and ``fit_samples()``: cases of the same task to fit free
parameters on (the training split for synthetic data; the first half of a real recording, which
is then scored on its second half only — every method on the same frames). The factory is called
once per data source. Names resolve, in order: the built-in baselines below, models registered
with :func:`register_model`, a node family's ``evpipe.nodes.<task>.evaluation.MODELS`` dict (so a
model is published by its own package, e.g. ``MODELS = {"dessert-4step": factory}`` in
``nodes/predict/evaluation.py``), or ``package.module:factory``.

Baselines (always run with the model):

* predict ``copy-last``: the anchor frame. ``event-integration``: per pixel
  ``log(I_target + eps) = log(I_anchor + eps) + c * sum(p)``, with (c, eps) chosen by grid search
  (c in [0.02, 1.2], eps in {1e-3, 1e-2, 3e-2, 0.1, 0.3, 1}, then a finer c grid) minimising the MSE to
  the targets of up to ``--fit-samples`` fitting pairs (k = 1 pairs for the dataset).
* deblur ``blurry``: the input. ``edi``: the EDI double integral (``evpipe.kernels.edi_integral``,
  32 midpoint samples over the exposure), sharp = blurry / E, c by grid search on the fitting cases.
* upsample ``blend``: (frame0 + frame1) / 2. ``cubic``: cubic convolution in time (Keys, a = -0.5,
  the kernel bicubic image resizing applies per axis) through before, frame0, frame1, after:
  (-before + 9 frame0 + 9 frame1 - after) / 16. The HiFI paper compares against learned
  interpolators only; "bicubic" in our design is read as this per-pixel temporal cubic, the
  classical non-learned interpolator beyond linear blending. ``aligned-blend``: the blend after both
  frames are moved halfway along their global translation (phase correlation, kept where it explains
  the frames' difference: ``evpipe.nodes.upsample.alignment.motion_shift``) — what HiFI's network
  starts from, so its own gain shows.
* restore ``degraded``: the measurement itself (CG and ADMM-TV come from the DDS package).

Metrics (``evpipe.kernels.quality``): PSNR (capped at 100 dB when an output equals the target),
SSIM (Gaussian window, = scikit-image's), and for predict (k = 1, the frame-by-frame prediction
of a sequence) and restore the flicker error ``temporal_consistency_error`` ×100, averaged over
sequences; ``ms/call`` is the median wall time of one model call.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import json
import platform
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from evpipe.kernels import edi_integral
from evpipe.kernels.quality import Stopwatch, psnr, ssim, temporal_consistency_error
from evpipe.nodes.predict.integration import (
    context_event_integration,
    expand_map,
    integrate_events,
    polarity_sum,
)
from evpipe.nodes.restore.psf import BOUNDARIES, DEFAULT_BOUNDARY, degrade_clip, temporal_psf
from evpipe.runtime.events import Events
from evpipe.tools import command_line
from evpipe.tools.dataset import (
    ClipView,
    DeblurView,
    EventDataset,
    InterpolationView,
    PredictionView,
    default_dataset_path,
)

TASKS = ("predict", "deblur", "upsample", "restore")
BASELINES: dict[str, tuple[str, ...]] = {
    "predict": ("copy-last", "event-integration"),
    "deblur": ("blurry", "edi"),
    "upsample": ("blend", "cubic", "aligned-blend"),
    "restore": ("degraded",),
}
DEFAULT_REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PSNR_CAP_DB = 100.0
CLIP_LENGTH = 16
EDI_SAMPLES = 32

Case = dict[str, Any]
ModelFn = Callable[..., np.ndarray]


@dataclass
class ModelContext:
    """What a model factory gets: see the module docstring."""

    task: str
    height: int
    width: int
    channels: int
    fit_samples: Callable[[], list[Case]]
    checkpoint: Path | None = None
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)


Factory = Callable[[ModelContext], ModelFn]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Factory
    description: str = ""


_REGISTRY: dict[str, dict[str, ModelSpec]] = {task: {} for task in TASKS}


def register_model(task: str, name: str, factory: Factory, description: str = "") -> None:
    """Make ``name`` available to ``--model`` for ``task``."""
    if task not in TASKS:
        raise ValueError(f"register_model: unknown task {task!r}; expected one of {TASKS}")
    _REGISTRY[task][name] = ModelSpec(name, factory, description)


def _plugin_models(task: str) -> dict[str, Factory]:
    """``MODELS`` of ``evpipe.nodes.<task>.evaluation`` if that module exists (import errors propagate)."""
    module_name = f"evpipe.nodes.{task}.evaluation"
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return {}
    models = getattr(importlib.import_module(module_name), "MODELS", None)
    if not isinstance(models, dict):
        raise TypeError(f"{module_name}.MODELS: expected a dict name -> factory, got {type(models).__name__}")
    return models


def available_models(task: str) -> dict[str, ModelSpec]:
    """Registered models of ``task`` (baselines first), including the node family's plugin models."""
    specs = dict(_REGISTRY[task])
    for name, factory in _plugin_models(task).items():
        specs.setdefault(name, ModelSpec(name, factory, f"evpipe.nodes.{task}.evaluation"))
    return specs


def resolve_model(task: str, name: str) -> ModelSpec:
    """A model by registered name or ``package.module:factory``; a clear error otherwise."""
    specs = available_models(task)
    if name in specs:
        return specs[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"--model {name}: cannot load {attr!r} from {module_name!r} ({error})") from error
        return ModelSpec(name, factory, name)
    raise ValueError(f"--model {name!r}: unknown for task {task!r}; available: {sorted(specs)} "
                     "(or give package.module:factory)")


# ----------------------------------------------------------------------------------------------
# Baselines


def _copy_last(context: ModelContext) -> ModelFn:
    return lambda anchor, events, t_anchor, t_target: anchor.copy()


def _event_integration(context: ModelContext) -> ModelFn:
    c, eps, fit_mse = context_event_integration(context)
    context.options["fitted"] = {"c": c, "eps": eps, "fit_mse": fit_mse}

    def predict(anchor: np.ndarray, events: Events, t_anchor: int, t_target: int) -> np.ndarray:
        return integrate_events(anchor, polarity_sum(events, context.height, context.width), c, eps)

    return predict


def edi_deblur(blurry: np.ndarray, events: Events, start: int, end: int, t_ref: int, c: float) -> np.ndarray:
    """EDI sharp frame: blurry / E(t_ref), clipped to [0, 1]."""
    height, width = blurry.shape[:2]
    denominator = edi_integral(events.t, events.x, events.y, events.p, c, start, end, EDI_SAMPLES, height, width,
                               t_ref)
    return np.clip(blurry / expand_map(denominator, blurry), 0.0, 1.0).astype(np.float32)


def fit_edi(cases: list[Case]) -> tuple[float, float]:
    """(c, fit MSE) for :func:`edi_deblur` by a coarse then fine grid search."""
    if not cases:
        raise ValueError("edi: no fitting samples")

    def mse(c: float) -> float:
        return float(np.mean([np.mean((edi_deblur(*_deblur_args(case), c) - case["target"]) ** 2) for case in cases]))

    coarse = np.linspace(0.05, 1.0, 20)
    best = min((mse(c), c) for c in coarse)
    step = coarse[1] - coarse[0]
    best = min(best, *((mse(c), c) for c in np.linspace(max(best[1] - step, 0.01), best[1] + step, 11)))
    return float(best[1]), best[0]


def _blurry(context: ModelContext) -> ModelFn:
    return lambda blurry, events, exposure_start, exposure_end, t_ref: blurry.copy()


def _edi(context: ModelContext) -> ModelFn:
    c, fit_mse = fit_edi(context.fit_samples())
    context.options["fitted"] = {"c": c, "fit_mse": fit_mse}
    return lambda blurry, events, exposure_start, exposure_end, t_ref: edi_deblur(
        blurry, events, exposure_start, exposure_end, t_ref, c
    )


def _blend(context: ModelContext) -> ModelFn:
    return lambda frame0, frame1, before, after: (0.5 * (frame0 + frame1)).astype(np.float32)


def _cubic(context: ModelContext) -> ModelFn:
    return lambda frame0, frame1, before, after: np.clip(
        (9.0 * (frame0 + frame1) - before - after) / 16.0, 0.0, 1.0
    ).astype(np.float32)


def _aligned_blend(context: ModelContext) -> ModelFn:
    import torch

    from evpipe.nodes.upsample.alignment import align_to_middle

    def middle(frame0: np.ndarray, frame1: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        pair = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.atleast_3d(f), -1, 0))) for f in (frame0, frame1)]
        aligned0, aligned1 = align_to_middle(*pair)
        return _hwc((0.5 * (aligned0 + aligned1)).numpy().astype(np.float32))

    return middle


def _degraded(context: ModelContext) -> ModelFn:
    def measurement(degraded: np.ndarray, psf: np.ndarray, spatial: dict[str, Any] | None, boundary: str
                    ) -> np.ndarray:
        if spatial and spatial["kind"] == "sr4":  # nearest-neighbour back to the clip's size
            return degraded.repeat(4, axis=1).repeat(4, axis=2)
        return degraded.copy()

    return measurement


for _task, _name, _factory, _text in (
    ("predict", "copy-last", _copy_last, "the anchor frame"),
    ("predict", "event-integration", _event_integration, "log I + c * sum(p), (c, eps) fitted"),
    ("deblur", "blurry", _blurry, "the blurry input"),
    ("deblur", "edi", _edi, "EDI double integral, c fitted"),
    ("upsample", "blend", _blend, "mean of the two frames"),
    ("upsample", "cubic", _cubic, "temporal cubic convolution through four frames"),
    ("upsample", "aligned-blend", _aligned_blend, "mean of the two frames moved halfway along motion_shift"),
    ("restore", "degraded", _degraded, "the degraded clip"),
):
    register_model(_task, _name, _factory, _text)


# ----------------------------------------------------------------------------------------------
# Cases: what each task feeds a model, from the dataset views or real recordings


def _hwc(chw: np.ndarray) -> np.ndarray:
    """float32 (C, H, W) -> (H, W) gray or (H, W, 3)."""
    return chw[0] if chw.shape[-3] == 1 else np.ascontiguousarray(np.moveaxis(chw, -3, -1))


def _model_args(task: str, case: Case) -> tuple:
    if task == "predict":
        return case["anchor"], case["events"], case["t_anchor"], case["t_target"]
    if task == "deblur":
        return _deblur_args(case)
    if task == "upsample":
        return case["frame0"], case["frame1"], case["before"], case["after"]
    return case["degraded"], case["psf"], case["spatial"], case["boundary"]


def _deblur_args(case: Case) -> tuple:
    return case["blurry"], case["events"], case["exposure_start"], case["exposure_end"], case["t_ref"]


SPATIAL_DEGRADATIONS = ("blur", "sr4", "inpaint")


def parse_degradation(name: str) -> tuple[np.ndarray, str | None]:
    """(temporal PSF, spatial kind or None) of a restore degradation such as ``uniform7`` or ``uniform7+sr4``."""
    temporal, plus, spatial = name.partition("+")
    psf = temporal_psf(temporal)
    if plus and spatial not in SPATIAL_DEGRADATIONS:
        raise ValueError(f"--degradation {name!r}: the spatial part must be one of {', '.join(SPATIAL_DEGRADATIONS)}")
    return psf, spatial or None


def degrade_spatially(clip: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """A clip (L, H, W[, 3]) through ``spatial_operator(kind, ..., seed)``; float32, (L, h, w[, 3])."""
    import torch

    from evpipe.nodes.restore.operators import spatial_operator

    tensor = torch.from_numpy(clip[:, None] if clip.ndim == 3 else np.moveaxis(clip, -1, 1).copy())
    out = spatial_operator(kind, tuple(tensor.shape), seed).forward(tensor).numpy()
    return out[:, 0] if clip.ndim == 3 else np.ascontiguousarray(np.moveaxis(out, 1, -1))


@dataclass(frozen=True)
class Measurement:
    """How a restore case's degraded clip is measured: the temporal PSF with ``boundary`` edges
    (:func:`degrade_clip`), ``noise`` std of additive Gaussian noise, then, when ``bits`` is set,
    clipping to [0, 1] and rounding to ``2**bits - 1`` levels."""

    noise: float = 0.0
    bits: int | None = None
    boundary: str = DEFAULT_BOUNDARY

    def __post_init__(self) -> None:
        if not self.noise >= 0:
            raise ValueError(f"Measurement.noise must be >= 0, got {self.noise!r}")
        if self.bits is not None and not 1 <= self.bits <= 16:
            raise ValueError(f"Measurement.bits must be in 1..16, got {self.bits!r}")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"Measurement.boundary must be one of {', '.join(BOUNDARIES)}, got {self.boundary!r}")

    def apply(self, degraded: np.ndarray, seed: int) -> np.ndarray:
        """The measured clip (float32, ``degraded``'s shape); the noise is seeded by ``seed``."""
        out = np.asarray(degraded, dtype=np.float32)
        if self.noise:
            out = out + (self.noise * np.random.default_rng(seed).standard_normal(out.shape)).astype(np.float32)
        if self.bits is not None:
            levels = 2**self.bits - 1
            out = (np.round(np.clip(out, 0.0, 1.0) * levels) / levels).astype(np.float32)
        return out


def dataset_cases(
    task: str,
    dataset: EventDataset,
    k: int = 1,
    degradation: str = "uniform7",
    exposure_intervals: float | None = None,
    clip_length: int = CLIP_LENGTH,
    measurement: Measurement = Measurement(),
) -> Iterator[Case]:
    """Cases of ``task`` from a dataset split, ordered by sequence then time.

    ``k``: predict gap in APS frames; ``degradation``/``clip_length``: restore PSF and clip length;
    ``exposure_intervals``: deblur exposure (None: the stored blurry frames; see ``DeblurView``)."""
    names = [seq.name for seq in dataset.sequences]
    if task == "predict":
        view = PredictionView(dataset, k_min=k, k_max=k, with_events=True, bins=1)
        for i in range(len(view)):  # ordered by sequence, then anchor
            sample = view[i]
            yield {"anchor": _hwc(sample["anchor"]), "target": _hwc(sample["target"]), "events": sample["events"],
                   "t_anchor": int(sample["t_anchor"]), "t_target": int(sample["t_target"]),
                   "sequence": names[int(sample["sequence"])], "index": int(sample["aps"])}
    elif task == "deblur":
        view = DeblurView(dataset, with_events=True, bins=1, exposure_intervals=exposure_intervals)
        for i in range(len(view)):
            sample = view[i]
            yield {"blurry": _hwc(sample["blurry"]), "target": _hwc(sample["sharp"]), "events": sample["events"],
                   "exposure_start": int(sample["exposure_start"]), "exposure_end": int(sample["exposure_end"]),
                   "t_ref": int(sample["t"]), "sequence": names[int(sample["sequence"])], "index": int(sample["aps"])}
    elif task == "upsample":
        view = InterpolationView(dataset, spacing=1, context=True)
        for i in range(len(view)):
            sample = view[i]
            yield {"frame0": _hwc(sample["frame0"]), "frame1": _hwc(sample["frame1"]),
                   "before": _hwc(sample["before"]), "after": _hwc(sample["after"]), "target": _hwc(sample["middle"]),
                   "sequence": names[int(sample["sequence"])], "index": int(sample["aps"])}
    else:
        psf, spatial = parse_degradation(degradation)
        view = ClipView(dataset, length=clip_length)
        for i in range(len(view)):
            sample = view[i]
            clip = np.stack([_hwc(frame) for frame in sample["frames"]])
            degraded = degrade_clip(clip, psf, measurement.boundary)
            if spatial:
                degraded = degrade_spatially(degraded, spatial, seed=i)
            degraded = measurement.apply(degraded, seed=i)
            yield {"degraded": degraded, "psf": psf, "target": clip,
                   "spatial": {"kind": spatial, "seed": i} if spatial else None, "boundary": measurement.boundary,
                   "sequence": names[int(sample["sequence"])], "index": int(sample["aps"])}


@dataclass
class RealRecording:
    """A real recording with APS frames: frames float32 (N, H, W) in [0, 1], cropped to multiples of 16."""

    name: str
    frames: np.ndarray
    frames_t: np.ndarray
    events: Events

    def cases(self) -> list[Case]:
        """Predict cases: frame i+1 from frame i and the events in (t_i, t_i+1]."""
        cases = []
        for i in range(len(self.frames) - 1):
            t0, t1 = int(self.frames_t[i]), int(self.frames_t[i + 1])
            cases.append({"anchor": self.frames[i], "target": self.frames[i + 1], "t_anchor": t0, "t_target": t1,
                          "events": self.events.time_slice(t0 + 1, t1 + 1), "sequence": self.name, "index": i})
        return cases


def _crop_recording(name: str, frames: np.ndarray, frames_t: np.ndarray, t, x, y, p) -> RealRecording:
    """Centre-crop frames (N, H, W) uint8 and events to multiples of 16 (models downsample by up to 16)."""
    height, width = frames.shape[1:]
    new_h, new_w = height // 16 * 16, width // 16 * 16
    top, left = (height - new_h) // 2, (width - new_w) // 2
    keep = (y >= top) & (y < top + new_h) & (x >= left) & (x < left + new_w)
    order = np.argsort(t[keep], kind="stable")
    events = Events.from_arrays(t[keep][order], (x[keep] - left)[order], (y[keep] - top)[order], p[keep][order])
    cropped = frames[:, top : top + new_h, left : left + new_w].astype(np.float32) / 255.0
    return RealRecording(name, cropped, np.asarray(frames_t, np.int64), events)


def _read_events(group: h5py.Group, path: Path) -> tuple[np.ndarray, ...]:
    try:
        return tuple(group[name][()] for name in ("t", "x", "y", "p"))
    except KeyError as error:
        raise ValueError(f"{path}: missing events field {error}") from error


def load_real_recordings(data_dir: Path) -> list[RealRecording]:
    """The real recordings with APS frames in ``data_dir`` (those present): DAVIS346 street, ECD slider_depth."""
    recordings = []
    street = data_dir / "davis346_street" / "davis346_street_first1.8s.h5"
    if street.is_file():
        with h5py.File(street, "r") as f:
            t, x, y, p = _read_events(f["events"], street)
            recordings.append(_crop_recording("davis346_street", f["frames/images"][()], f["frames/t"][()], t, x, y, p))
    slider = data_dir / "ecd_slider_depth" / "events.h5"
    if slider.is_file():
        with h5py.File(slider, "r") as f:
            t, x, y, p = _read_events(f["events"], slider)
            files = [slider.parent / name.decode() for name in f["frames/files"][()]]
            frames_t = f["frames/t"][()]
        frames = []
        for file in files:
            with Image.open(file) as im:
                frames.append(np.asarray(im.convert("L")))
        recordings.append(_crop_recording("ecd_slider_depth", np.stack(frames), frames_t, t, x, y, p))
    return recordings


# ----------------------------------------------------------------------------------------------
# Running and reporting


@dataclass
class EvalSource:
    """One block of evaluation data: the cases to score, the cases to fit on, and a label."""

    label: str
    k: int | None
    cases: Callable[[], list[Case]]
    fit_cases: Callable[[], list[Case]]
    height: int
    width: int
    channels: int


def subsample(cases: list[Case], limit: int | None) -> list[Case]:
    """At most ``limit`` cases, evenly spaced (deterministic)."""
    if limit is None or len(cases) <= limit:
        return cases
    return [cases[int(i)] for i in np.linspace(0, len(cases) - 1, limit).round().astype(int)]


def _image_ssim(reference: np.ndarray, estimate: np.ndarray) -> float:
    if reference.ndim == 3 and reference.shape[-1] == 3:
        return ssim(reference, estimate, channel_axis=-1)
    return ssim(reference, estimate)


def _score(reference: np.ndarray, estimate: np.ndarray, task: str) -> tuple[float, float]:
    """(PSNR capped at PSNR_CAP_DB, SSIM); a restore clip's SSIM is the mean over its frames."""
    value_psnr = min(psnr(reference, estimate), PSNR_CAP_DB)
    if task == "restore":
        return value_psnr, float(np.mean([_image_ssim(r, e) for r, e in zip(reference, estimate, strict=True)]))
    return value_psnr, _image_ssim(reference, estimate)


class _Flicker:
    """Flicker error ×100 per (method, sequence): over chains of consecutive predictions, or per clip."""

    def __init__(self) -> None:
        self.total: dict[tuple[str, str], float] = defaultdict(float)
        self.count: dict[tuple[str, str], int] = defaultdict(int)
        self.last: dict[tuple[str, str], tuple[int, np.ndarray, np.ndarray]] = {}

    def add_step(self, method: str, sequence: str, index: int, output: np.ndarray, target: np.ndarray) -> None:
        key = (method, sequence)
        previous = self.last.get(key)
        if previous is not None and previous[0] == index - 1:
            self.total[key] += temporal_consistency_error(np.stack([previous[2], target]),
                                                          np.stack([previous[1], output]))
            self.count[key] += 1
        self.last[key] = (index, output, target)

    def add_clip(self, method: str, sequence: str, output: np.ndarray, target: np.ndarray) -> None:
        self.total[(method, sequence)] += temporal_consistency_error(target, output)
        self.count[(method, sequence)] += 1

    def per_sequence(self, method: str) -> dict[str, float]:
        return {seq: 100 * self.total[(m, seq)] / n for (m, seq), n in self.count.items() if m == method and n}


def evaluate_source(
    task: str,
    source: EvalSource,
    methods: list[ModelSpec],
    checkpoint: Path | None = None,
    device: str = "cpu",
    n_examples: int = 3,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every method on one source: summary per method, per-sequence rows, examples, fitted values."""
    from tqdm import tqdm

    cases = source.cases()
    if not cases:
        raise ValueError(f"{source.label}: no {task} samples to evaluate (empty split?)")
    fit_cache: list[list[Case]] = []

    def fit_cases() -> list[Case]:  # built once, only if a model asks for it
        if not fit_cache:
            fit_cache.append(source.fit_cases())
        return fit_cache[0]

    fns, fitted, watches = {}, {}, {}
    for spec in methods:
        context = ModelContext(task, source.height, source.width, source.channels, fit_cases, checkpoint, device)
        fns[spec.name] = spec.factory(context)
        fitted[spec.name] = context.options.get("fitted")
        watches[spec.name] = Stopwatch()
    # Examples at the centres of n equal slices of the (sequence-ordered) cases: different sequences.
    example_ids = {int((j + 0.5) * len(cases) / n_examples) for j in range(n_examples)}
    scores: dict[str, list[tuple[float, float]]] = {spec.name: [] for spec in methods}
    per_sequence: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    flicker = _Flicker()
    track_steps = task == "predict" and source.k == 1
    examples = []
    for i, case in enumerate(tqdm(cases, desc=f"{task} {source.label}", unit="sample", disable=not progress)):
        outputs = {}
        for spec in methods:
            args = _model_args(task, case)
            with watches[spec.name]:
                output = np.asarray(fns[spec.name](*args), dtype=np.float32)
            if output.shape != case["target"].shape:
                raise ValueError(f"model {spec.name!r} returned shape {output.shape}; expected {case['target'].shape}")
            score = _score(case["target"], output, task)
            scores[spec.name].append(score)
            per_sequence[(spec.name, case["sequence"])].append(score)
            if track_steps:
                flicker.add_step(spec.name, case["sequence"], case["index"], output, case["target"])
            elif task == "restore":
                flicker.add_clip(spec.name, case["sequence"], output, case["target"])
            if i in example_ids:
                outputs[spec.name] = output
        if i in example_ids:
            examples.append({"case": case, "outputs": outputs})
    summary = {}
    for spec in methods:
        values = np.array(scores[spec.name])
        by_sequence = flicker.per_sequence(spec.name)
        summary[spec.name] = {
            "psnr_mean": float(values[:, 0].mean()), "psnr_std": float(values[:, 0].std()),
            "ssim_mean": float(values[:, 1].mean()), "ssim_std": float(values[:, 1].std()),
            "flicker_x100_mean": float(np.mean(list(by_sequence.values()))) if by_sequence else None,
            "n": len(values), "timing_ms": watches[spec.name].summary().as_dict(), "fitted": fitted[spec.name],
        }
    rows = []
    for (method, sequence), values in sorted(per_sequence.items()):
        array = np.array(values)
        rows.append({"data": source.label, "k": source.k, "method": method, "sequence": sequence, "n": len(array),
                     "psnr": float(array[:, 0].mean()), "ssim": float(array[:, 1].mean()),
                     "flicker_x100": flicker.per_sequence(method).get(sequence)})
    return {"label": source.label, "k": source.k, "summary": summary, "rows": rows, "examples": examples}


def markdown_table(results: list[dict[str, Any]], models: list[str]) -> str:
    """Markdown table of every source's summaries: mean ± std over samples; ``models`` are shown in bold."""
    has_flicker = any(s["flicker_x100_mean"] is not None for r in results for s in r["summary"].values())
    columns = ["data", "k", "method", "PSNR (dB)", "SSIM", *(["flicker ×100"] if has_flicker else []), "ms/call", "n"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for result in results:
        for method, s in result["summary"].items():
            cells = [
                result["label"],
                "–" if result["k"] is None else str(result["k"]),
                f"**{method}** (model)" if method in models and method not in _BASELINE_NAMES else method,
                f"{s['psnr_mean']:.2f} ± {s['psnr_std']:.2f}",
                f"{s['ssim_mean']:.3f} ± {s['ssim_std']:.3f}",
            ]
            if has_flicker:
                cells.append("–" if s["flicker_x100_mean"] is None else f"{s['flicker_x100_mean']:.2f}")
            cells += [f"{s['timing_ms']['median_ms']:.2f}", str(s["n"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_BASELINE_NAMES = {name for names in BASELINES.values() for name in names}


def _panel_image(image: np.ndarray) -> np.ndarray:
    """An (H, W) or (H, W, 3) image for display; the middle frame of a clip."""
    return image[len(image) // 2] if image.ndim == 4 or (image.ndim == 3 and image.shape[-1] != 3) else image


def save_examples_png(path: Path, task: str, results: list[dict[str, Any]], methods: list[str]) -> None:
    """Grid: one row per example; columns input(s), events (predict/deblur), every method, ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(result["label"], example) for result in results for example in result["examples"]]
    inputs = {"predict": ["anchor"], "deblur": ["blurry"], "upsample": ["frame0", "frame1"], "restore": ["degraded"]}
    show_events = task in ("predict", "deblur")
    n_cols = len(inputs[task]) + show_events + len(methods) + 1
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.1 * n_cols, 2.3 * len(rows)), squeeze=False)
    for r, (label, example) in enumerate(rows):
        case, panels = example["case"], []
        panels += [(name, _panel_image(case[name]), "gray") for name in inputs[task]]
        if show_events:
            height, width = case["target"].shape[:2]
            panels.append((f"events ({len(case['events'])})", polarity_sum(case["events"], height, width), "events"))
        for method in methods:
            output = example["outputs"][method]
            value = min(psnr(case["target"], output), PSNR_CAP_DB)
            panels.append((f"{method}\n{value:.2f} dB", _panel_image(output), "gray"))
        panels.append(("ground truth", _panel_image(case["target"]), "gray"))
        for c, (title, image, kind) in enumerate(panels):
            ax = axes[r, c]
            if kind == "events":
                limit = max(1.0, float(np.percentile(np.abs(image), 99)))
                ax.imshow(image, cmap="bwr", vmin=-limit, vmax=limit)
            else:
                ax.imshow(np.clip(image, 0, 1), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"{label}\n{case['sequence'][:22]} #{case['index']}", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_reports(out: Path, name: str, task: str, models: list[str], results: list[dict[str, Any]],
                  settings: dict[str, Any]) -> dict[str, Path]:
    """Write <name>.md, .json, _per_sequence.csv and .png under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / f"{name}.md", "json": out / f"{name}.json", "csv": out / f"{name}_per_sequence.csv",
             "png": out / f"{name}.png"}
    methods = list(results[0]["summary"])
    table = markdown_table(results, models)
    model = ", ".join(models)
    fitted = list(dict.fromkeys(  # one line per source and method (the k blocks share their fit)
        f"- {r['label']} {m}: " + ", ".join(f"{k}={v:.4g}" for k, v in s["fitted"].items())
        for r in results for m, s in r["summary"].items() if s["fitted"]))
    paths["md"].write_text(
        f"# {task}: {model} vs baselines\n\n"
        f"Written by `{settings['command']}` "
        f"(dataset `{settings['dataset_name']}`, split `{settings['split']}`: sources never seen in training; "
        "free baseline parameters fitted on the training split).\n"
        + ("Real recordings: scored on the second half of their consecutive APS frame pairs, baseline parameters "
           "fitted on the first half; frames centre-cropped to multiples of 16.\n" if settings["real_recordings"]
           else "")
        + f"\n{table}\n\nMean ± std over samples; flicker ×100 = 100 × temporal_consistency_error (predict: chains of "
        "consecutive k = 1 predictions; restore: per clip), averaged over sequences; ms/call = median model call.\n"
        + ("\nFitted parameters:\n" + "\n".join(fitted) + "\n" if fitted else "")
        + f"\nExamples: `{paths['png'].name}`; per-sequence results: `{paths['csv'].name}`.\n"
    )
    report = {"task": task, "model": model, "settings": settings,
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "processor": platform.processor()},
              "results": [{"data": r["label"], "k": r["k"], "summary": r["summary"]} for r in results],
              "per_sequence": [row for r in results for row in r["rows"]]}
    paths["json"].write_text(json.dumps(report, indent=1))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["data", "k", "method", "sequence", "n", "psnr", "ssim", "flicker_x100"])
        writer.writeheader()
        writer.writerows(report["per_sequence"])
    save_examples_png(paths["png"], task, results, methods)
    return paths


def build_sources(
    task: str,
    dataset: EventDataset,
    train: EventDataset | None,
    ks: list[int],
    real: list[RealRecording],
    fit_samples: int,
    max_samples: int | None,
    degradation: str | list[str] = "uniform7",
    exposure_intervals: float | None = None,
    clip_length: int = CLIP_LENGTH,
    measurement: Measurement = Measurement(),
) -> list[EvalSource]:
    """The evaluation blocks: the dataset split (one per k for predict, one per degradation for restore),
    then each real recording."""
    sizes = (dataset.height, dataset.width, dataset.channels)

    degradations = [degradation] if isinstance(degradation, str) else list(degradation)

    def train_cases(degradation: str) -> list[Case]:
        if train is None or not train.sequences:
            raise ValueError("no training split to fit baseline parameters on")
        return subsample(list(dataset_cases(task, train, 1, degradation, exposure_intervals, clip_length, measurement)),
                         fit_samples)

    sources = []
    for k in ks if task == "predict" else [None]:
        for kind in degradations if task == "restore" else degradations[:1]:
            sources.append(EvalSource(
                dataset.meta["name"] + f"/{dataset.split}" + (f" {kind}" if task == "restore" else ""), k,
                lambda k=k, kind=kind: subsample(
                    list(dataset_cases(task, dataset, k or 1, kind, exposure_intervals, clip_length, measurement)),
                    max_samples),
                lambda kind=kind: train_cases(kind), *sizes))
    for recording in real:
        cases = recording.cases()
        half = len(cases) // 2
        height, width = recording.frames.shape[1:]
        sources.append(EvalSource(f"{recording.name} (real, 2nd half)", 1,
                                  lambda cases=cases, half=half: subsample(cases[half:], max_samples),
                                  lambda cases=cases, half=half: cases[:half], height, width, 1))
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evpipe.tools.evaluate",
        description="Evaluate a model and its task's baselines; writes Markdown, JSON, CSV and a PNG of examples. "
        "Protocols and baselines: see the module docstring (python -c 'import evpipe.tools.evaluate as e; "
        "help(e)').",
    )
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--model", required=True, nargs="+",
                        help="one or more: a baseline, a registered/plugin model, or module:factory")
    parser.add_argument("--checkpoint", type=Path, help="passed to the model factory")
    parser.add_argument("--device", default="cpu", help="passed to the model factory")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--dataset", type=Path, help=f"dataset folder (default {default_dataset_path()})")
    parser.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder (default ./evaluation)")
    parser.add_argument("--name", help="file stem of the outputs (default TASK_MODEL_SPLIT)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4], help="predict: gaps in APS frames (default 1 4)")
    parser.add_argument("--degradation", default=["uniform7"], nargs="+",
                        help="restore: one or more of uniform7, uniform13, gaussian1, each optionally followed by "
                        "+blur, +sr4 or +inpaint (one block each)")
    parser.add_argument("--clip-length", type=int, default=CLIP_LENGTH, help="restore: APS frames per clip")
    parser.add_argument("--boundary", default=DEFAULT_BOUNDARY, choices=BOUNDARIES,
                        help="restore: frames beyond a clip in the temporal PSF (default circular, the paper's code)")
    parser.add_argument("--noise", type=float, default=0.0, help="restore: std of Gaussian noise on the measurement")
    parser.add_argument("--bits", type=int, help="restore: quantise the measurement to this many bits (8: a video "
                        "file's levels; default: float)")
    parser.add_argument("--exposure-intervals", type=float,
                        help="deblur: exposure in APS intervals, < 2 (default: the stored blurry frames)")
    parser.add_argument("--max-samples", type=int, help="evaluate at most this many samples per block (evenly spaced)")
    parser.add_argument("--fit-samples", type=int, default=256, help="training samples for fitting baselines")
    parser.add_argument("--real-data", type=Path, default=DEFAULT_REAL_DATA,
                        help="folder with the real recordings (predict only; skipped when absent)")
    parser.add_argument("--no-real", action="store_true", help="skip the real recordings")
    parser.add_argument("--examples", type=int, default=3, help="example rows per block in the PNG")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.k):
        parser.error(f"--k: gaps must be >= 1, got {args.k}")
    try:
        measurement = Measurement(args.noise, args.bits, args.boundary)
    except ValueError as error:
        parser.error(str(error).replace("Measurement.", "--"))
    if args.max_samples is not None and args.max_samples < 1:
        parser.error("--max-samples must be >= 1")
    try:
        for kind in args.degradation:
            parse_degradation(kind)
        specs = [resolve_model(args.task, name) for name in args.model]
        dataset = EventDataset(args.dataset, args.split)
        train = EventDataset(args.dataset, "train") if args.split != "train" else dataset
        real = []
        if args.task == "predict" and not args.no_real:
            if args.real_data.is_dir():
                real = load_real_recordings(args.real_data)
            else:
                print(f"note: {args.real_data} not found; skipping the real recordings", file=sys.stderr)
        methods = [resolve_model(args.task, name) for name in BASELINES[args.task]]
        methods += [spec for spec in specs if spec.name not in BASELINES[args.task]]
        sources = build_sources(args.task, dataset, train, args.k, real, args.fit_samples, args.max_samples,
                                args.degradation, args.exposure_intervals, args.clip_length, measurement)
        results = [evaluate_source(args.task, source, methods, args.checkpoint, args.device, args.examples)
                   for source in sources]
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    model_names = "+".join(args.model).replace(":", "_").replace("/", "_")
    name = args.name or f"{args.task}_{model_names}_{args.split}"
    settings = {
        "command": command_line("evpipe.tools.evaluate", argv),
        "dataset": str(dataset.root),
        "dataset_name": dataset.meta["name"],
        "split": args.split,
        "k": args.k if args.task == "predict" else None,
        "degradation": args.degradation if args.task == "restore" else None,
        "clip_length": args.clip_length if args.task == "restore" else None,
        "boundary": args.boundary if args.task == "restore" else None,
        "noise": args.noise if args.task == "restore" else None,
        "bits": args.bits if args.task == "restore" else None,
        "exposure_intervals": args.exposure_intervals if args.task == "deblur" else None,
        "fit_samples": args.fit_samples,
        "max_samples": args.max_samples,
        "real_recordings": [r.name for r in real],
        "checkpoint": str(args.checkpoint or ""),
    }
    paths = write_reports(args.out, name, args.task, args.model, results, settings)
    print(markdown_table(results, args.model))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
