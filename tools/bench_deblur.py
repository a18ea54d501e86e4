"""Deblurrer benchmark: baselines, the EBRD ablation of the guided teacher and the distilled student,
every method on the same held-out frames, for the stored blur and a stronger synthesised blur.

    python -m evpipe.tools.bench_deblur --max-samples 32

Rows: ``blurry`` and ``edi`` (the harness's baselines, EDI's c fitted on the training split), the
guided teacher with the degradation model y = E x (``diffevent-teacher-Ex``), y = f(E) x
(``diffevent-teacher-fEx``) and y = f(E) x + r (``diffevent-teacher``), and the student on ONNX Runtime
(``diffevent``). Metrics and timing are those of :mod:`evpipe.tools.evaluate` (ms/call: median wall
time of one call, E of the exposure included). Writes ``benchmarks/deblur.{md,json,png}`` and
``deblur_per_sequence.csv`` (the harness's report writer), with the load average of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from evpipe.tools.dataset import EventDataset
from evpipe.tools.evaluate import build_sources, evaluate_source, resolve_model, write_reports

METHODS = ("blurry", "edi", "diffevent-teacher-Ex", "diffevent-teacher-fEx", "diffevent-teacher", "diffevent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, help="dataset folder (default: the tiny dataset)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--checkpoint", type=Path, help="deblur checkpoint directory (default: the shipped tiny)")
    parser.add_argument("--max-samples", type=int, default=32, help="frames per blur setting (evenly spaced)")
    parser.add_argument("--fit-samples", type=int, default=256, help="training frames for EDI's c")
    parser.add_argument("--exposures", type=float, nargs="+", default=[1.5],
                        help="synthesised blur settings in APS intervals, besides the stored blur")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument("--name", default="deblur")
    args = parser.parse_args(argv)
    if args.max_samples < 1:
        parser.error("--max-samples must be >= 1")
    try:
        dataset = EventDataset(args.dataset, args.split)
        train = EventDataset(args.dataset, "train")
        methods = [resolve_model("deblur", name) for name in METHODS]
        load_before = os.getloadavg()
        results = []
        for exposure in [None, *args.exposures]:
            source = build_sources("deblur", dataset, train, [1], [], args.fit_samples, args.max_samples,
                                   exposure_intervals=exposure)[0]
            blur = "stored blur" if exposure is None else f"blur over {exposure} APS intervals"
            source.label = f"{dataset.meta['name']}/{args.split}, {blur}"
            results.append(evaluate_source("deblur", source, methods, args.checkpoint, "cpu", n_examples=2))
        load_after = os.getloadavg()
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    settings = {"argv": "-m evpipe.tools.bench_deblur " + " ".join(sys.argv[1:] if argv is None else argv),
                "dataset": str(dataset.root), "dataset_name": dataset.meta["name"], "split": args.split,
                "exposures": args.exposures, "fit_samples": args.fit_samples, "max_samples": args.max_samples,
                "real_recordings": [], "checkpoint": str(args.checkpoint or "tiny"),
                "load_average_1_5_15": {"before": load_before, "after": load_after}}
    paths = write_reports(args.out, args.name, "deblur", ["diffevent"], results, settings)
    with paths["md"].open("a") as f:
        f.write(
            "\nRows: `diffevent-teacher-Ex` / `-fEx` / `diffevent-teacher` are the guided alternating sampler "
            "with the degradation model y = E·x, y = f(E)·x and y = f(E)·x + r in its guidance (same priors, same "
            "steps: the paper's EBRD ablation at this scale); `diffevent` is the distilled student on ONNX Runtime "
            "(what the node runs). ms/call includes computing E for the exposure.\n"
            f"\nLoad average (1, 5, 15 min) before/after the run: {load_before} / {load_after} "
            "(2 shared cores: timings are only comparable within this run).\n")
    print(json.dumps({r["label"]: {m: round(s["psnr_mean"], 2) for m, s in r["summary"].items()} for r in results}))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
