"""Evaluate a model and its task's baselines on held-out data: one harness for every model.

    python -m evpipe.tools.evaluate --task predict --model event-integration --split test
    python -m evpipe.tools.evaluate --task predict --model dessert-4step --checkpoint ckpt.pt
    python -m evpipe.tools.evaluate --task deblur --model edi --dataset ~/.cache/evpipe/datasets/tiny
    python -m evpipe.tools.evaluate --task restore --model dds cg --degradation uniform7 gaussian1

    python -m evpipe.tools.evaluate --task upsample --model hifi-cascade3 --videos ../shared/data/video_gallery
    python -m evpipe.tools.evaluate --task restore --model dds cg admm-tv --videos DIR --max-frames 16

``--videos DIR`` (upsample, restore) scores real colour clips instead of the dataset (``videos.py``): every
video file or folder of image frames in DIR, scaled to ``--width`` (640) px wide, at most ``--max-frames``
frames each; upsample drops every other frame and scores the dropped ones, restore degrades consecutive
windows of ``--clip-length`` frames by each PSF (8-bit unless ``--bits``); free baseline parameters
(ADMM-TV's λ) are fitted on the other clips in DIR. Colour PSNR/SSIM and luma PSNR (Rec. 709 Y) are reported.

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

Files: :mod:`.registry` (tasks, ``ModelContext``, model names), :mod:`.baselines`, :mod:`.degradations`
(restore measurements), :mod:`.cases` (dataset cases), :mod:`.real` (real recordings), :mod:`.sources`
(evaluation blocks), :mod:`.scoring`, :mod:`.reports`, :mod:`.cli`. The names below are the package's API.
"""

from evpipe.tools.evaluate import baselines  # noqa: F401 - registers the baselines under their names
from evpipe.tools.evaluate.baselines import EDI_SAMPLES, edi_deblur, fit_edi
from evpipe.tools.evaluate.cases import CLIP_LENGTH, dataset_cases
from evpipe.tools.evaluate.cli import main
from evpipe.tools.evaluate.degradations import SPATIAL_DEGRADATIONS, Measurement, degrade_spatially, parse_degradation
from evpipe.tools.evaluate.real import DEFAULT_REAL_DATA, RealRecording, load_real_recordings
from evpipe.tools.evaluate.registry import (
    BASELINES,
    TASKS,
    Case,
    Factory,
    ModelContext,
    ModelFn,
    ModelSpec,
    available_models,
    register_model,
    resolve_model,
)
from evpipe.tools.evaluate.reports import markdown_table, save_examples_png, write_reports
from evpipe.tools.evaluate.scoring import PSNR_CAP_DB, evaluate_source
from evpipe.tools.evaluate.sources import EvalSource, build_sources, subsample

__all__ = [
    "BASELINES", "CLIP_LENGTH", "DEFAULT_REAL_DATA", "EDI_SAMPLES", "PSNR_CAP_DB", "SPATIAL_DEGRADATIONS", "TASKS",
    "Case", "EvalSource", "Factory", "Measurement", "ModelContext", "ModelFn", "ModelSpec", "RealRecording",
    "available_models", "build_sources", "dataset_cases", "degrade_spatially", "edi_deblur", "evaluate_source",
    "fit_edi", "load_real_recordings", "main", "markdown_table", "parse_degradation", "register_model",
    "resolve_model", "save_examples_png", "subsample", "write_reports",
]
