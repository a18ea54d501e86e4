"""Scoring: every method on one source's cases (PSNR, SSIM, flicker, time per call)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.kernels.quality import Stopwatch, psnr, ssim, temporal_consistency_error
from evpipe.nodes.colour import LUMA
from evpipe.tools.evaluate.cases import model_args
from evpipe.tools.evaluate.registry import Case, ModelContext, ModelSpec
from evpipe.tools.evaluate.sources import EvalSource

PSNR_CAP_DB = 100.0


def _image_ssim(reference: np.ndarray, estimate: np.ndarray) -> float:
    if reference.ndim == 3 and reference.shape[-1] == 3:
        return ssim(reference, estimate, channel_axis=-1)
    return ssim(reference, estimate)


def _luma(image: np.ndarray, colour: bool) -> np.ndarray:
    return image @ LUMA if colour else image


def _score(reference: np.ndarray, estimate: np.ndarray, task: str, colour: bool) -> tuple[float, float, float]:
    """(PSNR capped at PSNR_CAP_DB, SSIM, luma PSNR capped likewise — the PSNR itself for gray); a restore
    clip's SSIM is the mean over its frames. ``colour``: the images end in an RGB axis."""
    value_psnr = min(psnr(reference, estimate), PSNR_CAP_DB)
    luma_psnr = min(psnr(_luma(reference, colour), _luma(estimate, colour)), PSNR_CAP_DB) if colour else value_psnr
    if task == "restore":
        value_ssim = float(np.mean([_image_ssim(r, e) for r, e in zip(reference, estimate, strict=True)]))
    else:
        value_ssim = _image_ssim(reference, estimate)
    return value_psnr, value_ssim, luma_psnr


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
    scores: dict[str, list[tuple[float, float, float]]] = {spec.name: [] for spec in methods}
    per_sequence: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    flicker = _Flicker()
    track_steps = task == "predict" and source.k == 1
    examples = []
    for i, case in enumerate(tqdm(cases, desc=f"{task} {source.label}", unit="sample", disable=not progress)):
        outputs = {}
        for spec in methods:
            args = model_args(task, case)
            with watches[spec.name]:
                output = np.asarray(fns[spec.name](*args), dtype=np.float32)
            if output.shape != case["target"].shape:
                raise ValueError(f"model {spec.name!r} returned shape {output.shape}; expected {case['target'].shape}")
            score = _score(case["target"], output, task, source.channels == 3)
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
            "luma_psnr_mean": float(values[:, 2].mean()), "luma_psnr_std": float(values[:, 2].std()),
            "flicker_x100_mean": float(np.mean(list(by_sequence.values()))) if by_sequence else None,
            "n": len(values), "timing_ms": watches[spec.name].summary().as_dict(), "fitted": fitted[spec.name],
        }
    rows = []
    for (method, sequence), values in sorted(per_sequence.items()):
        array = np.array(values)
        rows.append({"data": source.label, "k": source.k, "method": method, "sequence": sequence, "n": len(array),
                     "psnr": float(array[:, 0].mean()), "ssim": float(array[:, 1].mean()),
                     "luma_psnr": float(array[:, 2].mean()),
                     "flicker_x100": flicker.per_sequence(method).get(sequence)})
    return {"label": source.label, "k": source.k, "colour": source.channels == 3, "summary": summary, "rows": rows,
            "examples": examples}
