"""Which simple chroma the gray video models carry, measured on real colour frames (no network runs).

``python -m evpipe.tools.measure_chroma --out benchmarks`` scores, in Cb/Cr PSNR against the true
chroma, the two candidates of each model (RESULTS.md, "Colour"):

- upsample (every other frame dropped, the dropped frame scored): the chroma of the aligned blend the
  HiFI cascade starts from (``alignment.align_to_middle`` with the luma's ``motion_shift``) vs the
  plain blend of the two frames' chroma;
- restore (a 16-frame window through a temporal PSF, 8-bit): the chroma restored by the CG-only solve
  of the same operator (``sampler.cg_only``, the paper's 20 × 5 CG steps) vs the degraded chroma as it is.

Clips: ``video_cockatoo`` (the first frames of the MP4) and ``video_bedroom`` (the first JPEG frames),
scaled to ``--width`` pixels wide. Writes ``chroma_choice.json`` and ``chroma_choice.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from evpipe.kernels.quality import psnr
from evpipe.nodes.colour import rgb_to_ycbcr
from evpipe.nodes.restore.operators import make_operator
from evpipe.nodes.restore.psf import degrade_clip, temporal_psf
from evpipe.nodes.restore.sampler import cg_only
from evpipe.nodes.upsample.alignment import align_to_middle, motion_shift
from evpipe.tools import command_line
from evpipe.tools.evaluate.videos import read_clip

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIPS = ("video_cockatoo/cockatoo.mp4", "video_bedroom/frames")


def upsample_rows(ycbcr: np.ndarray, pairs: int) -> list[dict]:
    rows = []
    for i in range(0, 2 * pairs, 2):
        frame0, middle, frame1 = (torch.from_numpy(np.moveaxis(ycbcr[j], -1, 0).copy()) for j in (i, i + 1, i + 2))
        shift = motion_shift(frame0[:1], frame1[:1])
        aligned0, aligned1 = align_to_middle(frame0[1:], frame1[1:], shift)
        truth = middle[1:].numpy()
        rows.append({"index": i + 1, "shift": shift,
                     "aligned_blend": psnr(truth, (0.5 * (aligned0 + aligned1)).numpy()),
                     "blend": psnr(truth, (0.5 * (frame0[1:] + frame1[1:])).numpy())})
    return rows


def restore_rows(rgb: np.ndarray, window: int) -> list[dict]:
    """The clip's first ``window`` frames through each PSF in RGB, rounded to 8 bits, then split."""
    clip = rgb[:window]
    chroma = np.moveaxis(rgb_to_ycbcr(clip)[..., 1:], -1, 1).copy()  # (L, 2, H, W)
    rows = []
    for kind in ("uniform7", "uniform13", "gaussian1"):
        psf = temporal_psf(kind)
        measured = np.round(np.clip(degrade_clip(clip, psf), 0, 1) * 255) / 255
        degraded = np.moveaxis(rgb_to_ycbcr(measured)[..., 1:], -1, 1).copy()
        op = make_operator(psf, chroma.shape)
        restored = cg_only(op, torch.from_numpy(degraded), chroma.shape).numpy()
        rows.append({"degradation": kind, "cg_only": psnr(chroma, restored), "degraded": psnr(chroma, degraded)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evpipe.tools.measure_chroma", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    parser.add_argument("--width", type=int, default=640, help="frames scaled to this width (default 640)")
    parser.add_argument("--pairs", type=int, default=4, help="upsample: dropped frames scored per clip (default 4)")
    parser.add_argument("--window", type=int, default=16, help="restore: frames in the window (default 16)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {"command": command_line("evpipe.tools.measure_chroma", argv), "width": args.width, "clips": {}}
    for clip in CLIPS:
        frames = read_clip(args.data / clip, args.width, max(args.window, 2 * args.pairs + 1))
        rgb = np.stack(frames)
        result["clips"][clip] = {"upsample": upsample_rows(rgb_to_ycbcr(rgb), args.pairs),
                                 "restore": restore_rows(rgb, args.window)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chroma_choice.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Chroma carried by the gray video models (Cb/Cr PSNR, dB)", "", f"`{result['command']}`", "",
             "| clip | upsample: aligned blend | upsample: blend | restore PSF | CG-only | degraded as-is |",
             "|---|---|---|---|---|---|"]
    for clip, rows in result["clips"].items():
        up = rows["upsample"]
        aligned, blend = np.mean([r["aligned_blend"] for r in up]), np.mean([r["blend"] for r in up])
        for j, row in enumerate(rows["restore"]):
            head = f"| {clip} | {aligned:.2f} | {blend:.2f} " if j == 0 else "| | | "
            lines.append(head + f"| {row['degradation']} | {row['cg_only']:.2f} | {row['degraded']:.2f} |")
    (args.out / "chroma_choice.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
