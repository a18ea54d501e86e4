"""HiFI base vs patch-based cascade ×2 vs ×3 against blend and cubic (the paper's Table 3 at this scale).

    python -m evpipe.tools.bench_upsample --max-samples 40 --large-motion 20 --out benchmarks --name upsample

Runs ``evpipe.tools.evaluate``'s upsample protocol (``InterpolationView(context=True)`` triplets of
the test split, the middle frame is the ground truth) with every method in one pass — the baselines
``blend``, ``cubic`` and ``aligned-blend``, and the models ``hifi-base`` (the network on the whole
frame, no cascade), ``hifi-cascade2`` and ``hifi-cascade3`` of ``evpipe.nodes.upsample.evaluation`` —
on two blocks:

* ``all``: ``--max-samples`` triplets evenly spaced over the split;
* ``large motion``: the ``--large-motion`` triplets of the split with the largest global motion
  between frame0 and frame1, measured by phase correlation
  (``evpipe.nodes.upsample.alignment.global_shift``, pixels).

Writes ``<name>.md``, ``.json``, ``_per_sequence.csv`` and ``.png`` through the harness's reports
(plus the motion threshold in the Markdown and JSON).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from evpipe.tools import command_line
from evpipe.tools import evaluate as ev
from evpipe.tools.dataset import EventDataset, default_dataset_path

METHODS = ("blend", "cubic", "aligned-blend", "hifi-base", "hifi-cascade2", "hifi-cascade3")


def global_motion(frame0: np.ndarray, frame1: np.ndarray) -> float:
    """Magnitude in pixels of the global translation between two (H, W) frames (the phase correlation
    HiFI's alignment uses)."""
    import torch

    from evpipe.nodes.upsample.alignment import global_shift

    return float(np.hypot(*global_shift(torch.from_numpy(frame0)[None], torch.from_numpy(frame1)[None])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evpipe.tools.bench_upsample", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, help=f"dataset folder (default {default_dataset_path()})")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--checkpoint", type=Path, help="HiFI checkpoint file (default: the shipped tiny)")
    parser.add_argument("--max-samples", type=int, default=40)
    parser.add_argument("--large-motion", type=int, default=20, help="triplets in the large-motion block")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument("--name", default="upsample")
    parser.add_argument("--examples", type=int, default=3)
    args = parser.parse_args(argv)
    if args.max_samples < 1 or args.large_motion < 1:
        parser.error("--max-samples and --large-motion must be >= 1")
    try:
        dataset = EventDataset(args.dataset, args.split)
        methods = [ev.resolve_model("upsample", name) for name in METHODS]
        cases = list(ev.dataset_cases("upsample", dataset))
        motion = np.array([global_motion(c["frame0"], c["frame1"]) for c in cases])
        order = np.argsort(-motion, kind="stable")[:args.large_motion]
        threshold = float(motion[order[-1]])
        large = [cases[i] for i in sorted(order)]
        sizes = (dataset.height, dataset.width, dataset.channels)
        label = f"{dataset.meta['name']}/{dataset.split}"
        sources = [
            ev.EvalSource(f"{label} all", None, lambda: ev.subsample(cases, args.max_samples), list, *sizes),
            ev.EvalSource(f"{label} large motion (≥ {threshold:.1f} px)", None, lambda: large, list, *sizes),
        ]
        results = [ev.evaluate_source("upsample", source, methods, args.checkpoint, "cpu", args.examples)
                   for source in sources]
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    settings = {"command": command_line("evpipe.tools.bench_upsample", argv),
                "dataset": str(dataset.root),
                "dataset_name": dataset.meta["name"], "split": args.split, "max_samples": args.max_samples,
                "large_motion": args.large_motion, "large_motion_threshold_px": threshold,
                "motion_px_median": float(np.median(motion)), "real_recordings": [],
                "checkpoint": str(args.checkpoint or "tiny")}
    paths = ev.write_reports(args.out, args.name, "upsample", [m for m in METHODS if m.startswith("hifi")], results,
                             settings)
    with paths["md"].open("a") as f:
        f.write(f"\nLarge motion: the {args.large_motion} triplets of the split with the largest global shift "
                f"between frame0 and frame1 (phase correlation; ≥ {threshold:.1f} px; median over the split "
                f"{settings['motion_px_median']:.1f} px). HiFI: 8 DDIM steps, mean of 4 samples; hifi-base runs the "
                "network on the whole 128² frame; the cascades use 32² patches (the training size), overlap 0.25.\n")
    print(ev.markdown_table(results, "hifi"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
