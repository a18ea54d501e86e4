"""Cases: what each task feeds a model (see the package docstring), from a dataset split."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from evpipe.nodes.restore.psf import degrade_clip
from evpipe.tools.dataset import ClipView, DeblurView, EventDataset, InterpolationView, PredictionView
from evpipe.tools.evaluate.degradations import DEFAULT_MEASUREMENT, Measurement, degrade_spatially, parse_degradation
from evpipe.tools.evaluate.registry import Case

CLIP_LENGTH = 16


def hwc(chw: np.ndarray) -> np.ndarray:
    """float32 (C, H, W) -> (H, W) gray or (H, W, 3)."""
    return chw[0] if chw.shape[-3] == 1 else np.ascontiguousarray(np.moveaxis(chw, -3, -1))


def model_args(task: str, case: Case) -> tuple:
    if task == "predict":
        return case["anchor"], case["events"], case["t_anchor"], case["t_target"]
    if task == "deblur":
        return deblur_args(case)
    if task == "upsample":
        return case["frame0"], case["frame1"], case["before"], case["after"]
    return case["degraded"], case["psf"], case["spatial"], case["boundary"]


def deblur_args(case: Case) -> tuple:
    return case["blurry"], case["events"], case["exposure_start"], case["exposure_end"], case["t_ref"]


def dataset_cases(
    task: str,
    dataset: EventDataset,
    k: int = 1,
    degradation: str = "uniform7",
    exposure_intervals: float | None = None,
    clip_length: int = CLIP_LENGTH,
    measurement: Measurement = DEFAULT_MEASUREMENT,
) -> Iterator[Case]:
    """Cases of ``task`` from a dataset split, ordered by sequence then time.

    ``k``: predict gap in APS frames; ``degradation``/``clip_length``: restore PSF and clip length;
    ``exposure_intervals``: deblur exposure (None: the stored blurry frames; see ``DeblurView``)."""
    names = [seq.name for seq in dataset.sequences]
    if task == "predict":
        view = PredictionView(dataset, k_min=k, k_max=k, with_events=True, bins=1)
        for i in range(len(view)):  # ordered by sequence, then anchor
            sample = view[i]
            yield {"anchor": hwc(sample["anchor"]), "target": hwc(sample["target"]), "events": sample["events"],
                   "t_anchor": int(sample["t_anchor"]), "t_target": int(sample["t_target"]),
                   "sequence": names[int(sample["sequence"])], "index": int(sample["aps"])}
    elif task == "deblur":
        view = DeblurView(dataset, with_events=True, bins=1, exposure_intervals=exposure_intervals)
        for i in range(len(view)):
            sample = view[i]
            yield {"blurry": hwc(sample["blurry"]), "target": hwc(sample["sharp"]), "events": sample["events"],
                   "exposure_start": int(sample["exposure_start"]), "exposure_end": int(sample["exposure_end"]),
                   "t_ref": int(sample["t"]), "sequence": names[int(sample["sequence"])], "index": int(sample["aps"])}
    elif task == "upsample":
        view = InterpolationView(dataset, spacing=1, context=True)
        for i in range(len(view)):
            sample = view[i]
            yield {"frame0": hwc(sample["frame0"]), "frame1": hwc(sample["frame1"]),
                   "before": hwc(sample["before"]), "after": hwc(sample["after"]), "target": hwc(sample["middle"]),
                   "sequence": names[int(sample["sequence"])], "index": int(sample["aps"])}
    else:
        psf, spatial = parse_degradation(degradation)
        view = ClipView(dataset, length=clip_length)
        for i in range(len(view)):
            sample = view[i]
            clip = np.stack([hwc(frame) for frame in sample["frames"]])
            degraded = degrade_clip(clip, psf, measurement.boundary)
            if spatial:
                degraded = degrade_spatially(degraded, spatial, seed=i)
            degraded = measurement.apply(degraded, seed=i)
            yield {"degraded": degraded, "psf": psf, "target": clip,
                   "spatial": {"kind": spatial, "seed": i} if spatial else None, "boundary": measurement.boundary,
                   "sequence": names[int(sample["sequence"])], "index": int(sample["aps"])}
