"""Evaluation blocks: the dataset split (per k or degradation) and each real recording, with their fitting cases."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from evpipe.tools.dataset import EventDataset
from evpipe.tools.evaluate.cases import CLIP_LENGTH, dataset_cases
from evpipe.tools.evaluate.degradations import DEFAULT_MEASUREMENT, Measurement
from evpipe.tools.evaluate.real import RealRecording
from evpipe.tools.evaluate.registry import Case


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
    measurement: Measurement = DEFAULT_MEASUREMENT,
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


