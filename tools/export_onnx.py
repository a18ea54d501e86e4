"""Export evpipe models to ONNX and check every export against torch on the CPU.

    python tools/export_onnx.py predictor                                # tiny checkpoint, all students
    python tools/export_onnx.py predictor --variants 4step teacher --out exports/ --height 260 --width 346

predictor: one fused graph per variant (encoders, unrolled few-step sampler, decoder; see
:mod:`evpipe.nodes.predict.export`) with dynamic height and width. For each graph it reports the
largest absolute difference between ONNX Runtime (CPU) and torch on random inputs at two sizes,
and the time per frame of both at ``--height`` x ``--width`` (padded to the model's stride).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def time_per_call(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def export_predictor(args: argparse.Namespace) -> list[dict]:
    import torch

    from evpipe.nodes.predict.checkpoint import load_model
    from evpipe.nodes.predict.export import INPUT_NAMES, OUTPUT_NAME, example_inputs, export_fused, parity
    from evpipe.nodes.predict.models import FusedPredictor
    from evpipe.runtime.engines import open_engine

    rows = []
    for variant in args.variants:
        model, steps = load_model(variant, args.checkpoint, args.compose)
        path = args.out / f"predictor-{variant}.onnx"
        start = time.perf_counter()
        export_fused(model, steps, path)
        export_s = time.perf_counter() - start
        err = parity(model, steps, path)
        mult = model.multiple
        h, w = -(-args.height // mult) * mult, -(-args.width // mult) * mult
        inputs = example_inputs(model, h, w)
        feeds = dict(zip(INPUT_NAMES, (x.numpy() for x in inputs), strict=True))
        engine = open_engine(path, backend="onnxruntime", device="cpu")
        ort_ms = time_per_call(lambda engine=engine, feeds=feeds: engine.run(feeds)[OUTPUT_NAME], args.repeats)
        engine.close()
        fused = FusedPredictor(model, steps).eval()
        with torch.inference_mode():
            torch_ms = time_per_call(lambda fused=fused, inputs=inputs: fused(*inputs), args.repeats)
        row = {"variant": variant, "steps": steps, "file": str(path), "bytes": path.stat().st_size,
               "max_abs_err": err, "size": [h, w], "ort_ms": ort_ms, "torch_ms": torch_ms, "export_s": export_s}
        print(f"{variant:>8}  {steps:3d} steps  max|ort - torch| = {err:.2e}  onnxruntime {ort_ms:7.1f} ms  "
              f"torch {torch_ms:7.1f} ms  at {h}x{w}  -> {path}", file=sys.stderr)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="model", required=True)
    pred = sub.add_parser("predictor", help="DESSERT next-frame predictor: fused graph per variant")
    pred.add_argument("--checkpoint", default="tiny", help="shipped checkpoint name or directory (default tiny)")
    pred.add_argument("--variants", nargs="+", default=["4step", "2step", "1step"])
    pred.add_argument("--compose", choices=["latent", "pixel"], default=None,
                      help="override how the prediction is formed from the residual")
    pred.add_argument("--out", type=Path, default=Path("exports"), help="output directory (default exports/)")
    pred.add_argument("--height", type=int, default=128)
    pred.add_argument("--width", type=int, default=128)
    pred.add_argument("--repeats", type=int, default=10, help="timed runs per backend")
    pred.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    from evpipe.nodes.predict.checkpoint import VARIANTS, CheckpointError

    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    try:
        rows = export_predictor(args)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
