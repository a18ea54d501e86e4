"""``python -m evpipe.tools.evaluate``: the command line (see the package docstring)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evpipe.nodes.restore.psf import BOUNDARIES, DEFAULT_BOUNDARY
from evpipe.tools import command_line
from evpipe.tools.dataset import EventDataset, default_dataset_path
from evpipe.tools.evaluate.cases import CLIP_LENGTH
from evpipe.tools.evaluate.degradations import Measurement, parse_degradation
from evpipe.tools.evaluate.real import DEFAULT_REAL_DATA, load_real_recordings
from evpipe.tools.evaluate.registry import BASELINES, TASKS, resolve_model
from evpipe.tools.evaluate.reports import markdown_table, write_reports
from evpipe.tools.evaluate.scoring import evaluate_source
from evpipe.tools.evaluate.sources import build_sources
from evpipe.tools.evaluate.videos import video_sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evpipe.tools.evaluate",
        description="Evaluate a model and its task's baselines; writes Markdown, JSON, CSV and a PNG of examples. "
        "Protocols and baselines: see the package docstring (python -c 'import evpipe.tools.evaluate as e; "
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
    parser.add_argument("--videos", type=Path, help="upsample/restore on real colour clips in this folder (video "
                        "files, or folders of image frames) instead of the dataset: upsample drops every other frame "
                        "and scores the dropped ones; restore degrades windows of --clip-length frames (--bits 8 "
                        "unless given); baselines are fitted on the other clips")
    parser.add_argument("--width", type=int, default=640, help="--videos: frames scaled to this width (default 640)")
    parser.add_argument("--max-frames", type=int, help="--videos: read at most this many frames of each clip")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.k):
        parser.error(f"--k: gaps must be >= 1, got {args.k}")
    try:
        measurement = Measurement(args.noise, args.bits, args.boundary)
    except ValueError as error:
        parser.error(str(error).replace("Measurement.", "--"))
    if args.max_samples is not None and args.max_samples < 1:
        parser.error("--max-samples must be >= 1")
    if args.videos is not None:
        return _videos(args, argv, measurement if args.bits is not None else Measurement(args.noise, 8, args.boundary))
    try:
        methods = _methods(args)
        dataset = EventDataset(args.dataset, args.split)
        train = EventDataset(args.dataset, "train") if args.split != "train" else dataset
        real = []
        if args.task == "predict" and not args.no_real:
            if args.real_data.is_dir():
                real = load_real_recordings(args.real_data)
            else:
                print(f"note: {args.real_data} not found; skipping the real recordings", file=sys.stderr)
        sources = build_sources(args.task, dataset, train, args.k, real, args.fit_samples, args.max_samples,
                                args.degradation, args.exposure_intervals, args.clip_length, measurement)
        results = _score(args, methods, sources)
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    settings = {
        "command": command_line("evpipe.tools.evaluate", argv),
        "dataset": str(dataset.root),
        "dataset_name": dataset.meta["name"],
        "split": args.split,
        "k": args.k if args.task == "predict" else None,
        **_restore_settings(args, measurement),
        "exposure_intervals": args.exposure_intervals if args.task == "deblur" else None,
        "fit_samples": args.fit_samples,
        "max_samples": args.max_samples,
        "real_recordings": [r.name for r in real],
        "checkpoint": str(args.checkpoint or ""),
    }
    return _report(args, args.split, results, settings)


def _methods(args: argparse.Namespace) -> list:
    """The task's baselines, then the models asked for that are not among them (``--degradation`` checked
    first); raises ValueError naming an unknown model or degradation."""
    for kind in args.degradation:
        parse_degradation(kind)
    specs = [resolve_model(args.task, name) for name in args.model]
    methods = [resolve_model(args.task, name) for name in BASELINES[args.task]]
    return methods + [spec for spec in specs if spec.name not in BASELINES[args.task]]


def _restore_settings(args: argparse.Namespace, measurement: Measurement) -> dict:
    """The report's restore settings (degradations, clip length and how the clips were measured); None for
    the other tasks."""
    restore = args.task == "restore"
    return {"degradation": args.degradation if restore else None,
            "clip_length": args.clip_length if restore else None,
            "boundary": measurement.boundary if restore else None,
            "noise": measurement.noise if restore else None,
            "bits": measurement.bits if restore else None}


def _score(args: argparse.Namespace, methods: list, sources: list) -> list:
    return [evaluate_source(args.task, source, methods, args.checkpoint, args.device, args.examples)
            for source in sources]


def _report(args: argparse.Namespace, suffix: str, results: list, settings: dict) -> int:
    """Write the JSON/Markdown/PNG reports as ``TASK_MODELS_SUFFIX`` (or ``--name``) and print the table."""
    model_names = "+".join(args.model).replace(":", "_").replace("/", "_")
    name = args.name or f"{args.task}_{model_names}_{suffix}"
    paths = write_reports(args.out, name, args.task, args.model, results, settings)
    print(markdown_table(results, args.model))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _videos(args: argparse.Namespace, argv: list[str] | None, measurement: Measurement) -> int:
    """The ``--videos`` mode: every clip in the folder, scored in colour and luma."""
    if args.width is not None and args.width < 8:
        print(f"error: --width must be >= 8, got {args.width}", file=sys.stderr)
        return 1
    try:
        methods = _methods(args)
        sources = video_sources(args.task, args.videos, args.width, args.max_frames, args.degradation,
                                args.clip_length, measurement, args.max_samples)
        results = _score(args, methods, sources)
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    settings = {
        "command": command_line("evpipe.tools.evaluate", argv),
        "videos": str(args.videos),
        "width": args.width,
        "max_frames": args.max_frames,
        **_restore_settings(args, measurement),
        "max_samples": args.max_samples,
        "checkpoint": str(args.checkpoint or ""),
    }
    return _report(args, "videos", results, settings)
