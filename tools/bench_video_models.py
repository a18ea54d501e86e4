"""CPU cost of the offline video models on real 640×360 colour frames: HiFI per interpolated frame (the
shipped default, the paper's sampler and a few other cascade settings, with their colour PSNR), DDS per 16-frame
window, each beside its non-learned reference measured the same way in the same run.

    python -m evpipe.tools.bench_video_models --out benchmarks --name video_models

HiFI: the dropped frames 1 and 3 of ``video_cockatoo`` and 1 of ``video_bedroom`` (frames scaled to
``--width``), each interpolated from its two neighbours through ``Upsampler.middle`` (colour: the luma
through the network, the chroma of the aligned blend); ``--hifi-runs`` passes over the three for the
shipped default and the paper's sampler, one for the others; reference: the aligned blend. DDS: the first 16
frames of ``video_cockatoo`` through uniform7, 8-bit, restored by ``restore_colour_window`` (20 NFE,
the node's default) ``--dds-runs`` times; reference: CG-only on all three channels (the same 20 × 5 CG
steps). One torch thread (``--threads``): the machine is shared; its load average is recorded at the
start and the end. Writes ``<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from evpipe.kernels.quality import Stopwatch, psnr
from evpipe.nodes.upsample import DEFAULT_CHECKPOINT
from evpipe.nodes.upsample.cascade import PAPER_SAMPLER, CascadeSettings, Upsampler
from evpipe.tools import command_line

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT = CascadeSettings()
OTHERS = (CascadeSettings(steps=2, samples=1), CascadeSettings(steps=4, samples=1), CascadeSettings(levels=2, steps=2,
          samples=1), CascadeSettings(steps=2, samples=2))


def _label(settings: CascadeSettings) -> str:
    return f"levels {settings.levels}, {settings.steps} steps, {settings.samples} samples"


def _timing(watch: Stopwatch) -> dict[str, float]:
    seconds = np.asarray(watch.durations_s)
    return {"n": len(seconds), "median_s": float(np.median(seconds)), "p99_s": float(np.percentile(seconds, 99)),
            "max_s": float(seconds.max()), "min_s": float(seconds.min())}


def _triplets(data: Path, width: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    from evpipe.tools.evaluate.videos import read_clip

    cockatoo = read_clip(data / "video_cockatoo" / "cockatoo.mp4", width, 5)
    bedroom = read_clip(data / "video_bedroom" / "frames", width, 3)
    return [("cockatoo #1", *cockatoo[0:3]), ("cockatoo #3", *cockatoo[2:5]), ("bedroom #1", *bedroom[0:3])]


def _hifi_row(name: str, middle: Callable[[np.ndarray, np.ndarray], np.ndarray], triplets: list, runs: int) -> dict:
    watch, scores = Stopwatch(), []
    for _ in range(runs):
        for _, frame0, target, frame1 in triplets:
            with watch:
                out = middle(frame0, frame1)
            scores.append(psnr(target, out))
    return {"setting": name, "psnr_mean": float(np.mean(scores[:len(triplets)])),
            "psnr": scores[:len(triplets)], **_timing(watch)}


def bench_hifi(data: Path, width: int, runs: int) -> list[dict]:
    from evpipe.nodes.upsample.alignment import align_to_middle, motion_shift

    triplets = _triplets(data, width)

    def aligned_blend(frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
        pair = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(f, -1, 0))) for f in (frame0, frame1)]
        moved = align_to_middle(*pair, motion_shift(pair[0].mean(0, keepdim=True), pair[1].mean(0, keepdim=True)))
        return np.moveaxis((0.5 * (moved[0] + moved[1])).numpy(), 0, -1)

    rows = [_hifi_row("aligned blend (reference)", aligned_blend, triplets, max(runs, 3))]
    Upsampler(DEFAULT_CHECKPOINT, DEFAULT).middle(triplets[0][1], triplets[0][3])  # warm-up, untimed
    for settings, name, n in ((DEFAULT, "default", runs), (PAPER_SAMPLER, "paper sampler", runs),
                              *((s, "", 1) for s in OTHERS)):
        upsampler = Upsampler(DEFAULT_CHECKPOINT, settings)
        row = _hifi_row(_label(settings), upsampler.middle, triplets, n)
        rows.append({**row, "role": name})
        print(f"hifi {row['setting']}: {row['median_s']:.1f} s median, {row['psnr_mean']:.2f} dB", flush=True)
    return rows


def bench_dds(data: Path, width: int, runs: int) -> list[dict]:
    from evpipe.nodes.restore.model import load_prior
    from evpipe.nodes.restore.psf import degrade_clip, temporal_psf
    from evpipe.nodes.restore.sampler import PAPER_TEMPORAL
    from evpipe.nodes.restore.windows import cg_window, chroma_method, restore_colour_window
    from evpipe.tools.evaluate.videos import read_clip

    clip = np.stack(read_clip(data / "video_cockatoo" / "cockatoo.mp4", width, 16))
    psf = temporal_psf("uniform7")
    measured = (np.round(np.clip(degrade_clip(clip, psf), 0, 1) * 255) / 255).astype(np.float32)
    model, _ = load_prior("tiny", "cpu")
    common = {"spatial": "none", "boundary": "circular", "device": "cpu"}

    def dds() -> np.ndarray:
        return restore_colour_window(model, psf, measured, PAPER_TEMPORAL, chroma=chroma_method(psf, "none"),
                                     **common)

    def cg() -> np.ndarray:
        return np.moveaxis(cg_window(psf, np.ascontiguousarray(np.moveaxis(measured, -1, 1)), PAPER_TEMPORAL,
                                     **common), 1, -1)

    rows = []
    for name, restore, n in (("CG-only (reference)", cg, max(runs, 3)), ("DDS, 20 NFE", dds, runs)):
        watch = Stopwatch()
        for _ in range(n):
            with watch:
                out = restore()
        rows.append({"setting": name, "psnr": psnr(clip, out), "frames": len(clip),
                     "size": f"{clip.shape[2]}x{clip.shape[1]}", **_timing(watch)})
        print(f"dds {name}: {rows[-1]['median_s']:.1f} s median per window", flush=True)
    return rows


def _markdown(report: dict) -> str:
    lines = ["# Offline video models on this CPU (640×360 colour, one torch thread)", "",
             f"`{report['command']}`", "",
             f"Load average (1, 5, 15 min) at start {report['load_start']}, at end {report['load_end']}: the machine "
             f"is shared ({os.cpu_count()} cores) and was loaded by other engineers' jobs; absolute times are "
             "upper bounds for a quiet machine.", "",
             "## HiFI ×2, per interpolated frame (3 real frames, colour PSNR of the first pass)", "",
             "| setting | role | median s | p99 s | max s | n | colour PSNR dB (cockatoo #1, #3, bedroom #1) | mean |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["hifi"]:
        scores = ", ".join(f"{v:.2f}" for v in row["psnr"])
        lines.append(f"| {row['setting']} | {row.get('role', '')} | {row['median_s']:.2f} | {row['p99_s']:.2f} | "
                     f"{row['max_s']:.2f} | {row['n']} | {scores} | {row['psnr_mean']:.2f} |")
    lines += ["", "## DDS, per 16-frame window (cockatoo, uniform7, 8-bit)", "",
              "| method | median s | p99 s | max s | n | colour PSNR dB |", "|---|---|---|---|---|---|"]
    for row in report["dds"]:
        lines.append(f"| {row['setting']} | {row['median_s']:.1f} | {row['p99_s']:.1f} | {row['max_s']:.1f} | "
                     f"{row['n']} | {row['psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evpipe.tools.bench_video_models",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--hifi-runs", type=int, default=1, help="passes over the 3 frames, default and paper sampler")
    parser.add_argument("--dds-runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument("--name", default="video_models")
    args = parser.parse_args(argv)
    if min(args.hifi_runs, args.dds_runs, args.threads) < 1:
        parser.error("--hifi-runs, --dds-runs and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    report = {"command": command_line("evpipe.tools.bench_video_models", argv), "threads": args.threads,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "load_start": [round(v, 2) for v in os.getloadavg()]}
    report["hifi"] = bench_hifi(args.data, args.width, args.hifi_runs)
    report["dds"] = bench_dds(args.data, args.width, args.dds_runs)
    report["load_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
