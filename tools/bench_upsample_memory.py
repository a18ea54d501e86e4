"""Peak memory of HiFI interpolation against input size, with and without the patch-based cascade.

    python -m evpipe.tools.bench_upsample_memory --out benchmarks --name upsample_memory

For each side in ``--sizes`` (default 256 512 1024 2048; square gray frames) and each mode, a fresh
Python process loads the model, makes two random frames and interpolates their middle frame once:

* ``cascade``: 3-level patch-based cascade, patches of the training size (32), MultiDiffusion merging,
  ``--patch-batch`` patches per network call;
* ``non-patched``: the same network on the whole frame at full resolution (HiFI's base model).

Peak memory is the process's peak resident set (``ru_maxrss``) — this machine has no GPU, so RSS plays
the part of the paper's GPU memory: it includes the Python/torch runtime and the model (``idle``:
RSS after loading them, before the frames exist) — and ``working`` = peak − idle, the headline: the
memory the interpolation itself needs, also given against the size of one input frame (float32, its
channels). ``--steps`` and
``--samples`` default to 1: every DDIM step allocates the same buffers and samples run one after
another, so the peak does not depend on them (the time does). Ratios are against the smallest size
of the same mode, measured in the same run. Writes ``<name>.json``, ``<name>.md`` and ``<name>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from evpipe.tools import command_line

MODES = ("cascade", "non-patched")


def _rss_mib() -> float:
    """Current resident set of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(side: int, mode: str, checkpoint: str, steps: int, samples: int, patch_batch: int) -> dict:
    """Run one interpolation in this process and return its memory and time (call in a fresh process)."""
    import torch

    from evpipe.nodes.upsample.cascade import CascadeSettings, interpolate
    from evpipe.nodes.upsample.model import load_checkpoint

    torch.set_num_threads(1)
    model = load_checkpoint(checkpoint)
    idle = _rss_mib()
    generator = torch.Generator().manual_seed(0)
    frame0 = torch.rand(model.config.channels, side, side, generator=generator)
    frame1 = torch.rand(model.config.channels, side, side, generator=generator)
    settings = CascadeSettings(levels=3 if mode == "cascade" else 1, steps=steps, samples=samples,
                               patch=model.config.patch if mode == "cascade" else None, patch_batch=patch_batch)
    start = time.perf_counter()
    out = interpolate(model, frame0, frame1, settings)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    frame_mib = frame0.numel() * frame0.element_size() / 2**20
    return {"side": side, "mode": mode, "pixels": side * side, "frame_mib": frame_mib, "idle_mib": idle,
            "peak_mib": peak, "working_mib": peak - idle, "working_over_frame": (peak - idle) / frame_mib,
            "seconds": seconds, "output_mean": float(out.mean())}


def run_child(side: int, mode: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "evpipe.tools.bench_upsample_memory", "--child", str(side), mode,
               "--checkpoint", args.checkpoint, "--steps", str(args.steps), "--samples", str(args.samples),
               "--patch-batch", str(args.patch_batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side}² {mode} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_reports(rows: list[dict], out: Path, name: str, settings: dict, load_start: list[float]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": out / f"{name}.png"}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        for r in mine:
            r["peak_ratio_to_smallest"] = r["peak_mib"] / mine[0]["peak_mib"]
            r["working_ratio_to_smallest"] = r["working_mib"] / max(mine[0]["working_mib"], 1e-9)
    summary = {mode: max(r["peak_ratio_to_smallest"] for r in rows if r["mode"] == mode) for mode in MODES}
    working = {mode: max(r["working_ratio_to_smallest"] for r in rows if r["mode"] == mode) for mode in MODES}
    load_end = os.getloadavg()
    report = {"settings": settings, "rows": rows, "working_ratio_largest_to_smallest": working,
              "peak_ratio_largest_to_smallest": summary,
              "machine": {"python": platform.python_version(), "platform": platform.platform()},
              "load_average_at_start": load_start, "load_average_at_end": load_end}
    paths["json"].write_text(json.dumps(report, indent=1))
    lines = ["| input | mode | frame (MiB) | working (MiB) | × smallest | × frame | peak RSS (MiB) | × smallest "
             "| idle RSS (MiB) | time (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['side']}² | {r['mode']} | {r['frame_mib']:.2f} | {r['working_mib']:.0f} "
                     f"| {r['working_ratio_to_smallest']:.2f} | {r['working_over_frame']:.1f} | {r['peak_mib']:.0f} "
                     f"| {r['peak_ratio_to_smallest']:.2f} | {r['idle_mib']:.0f} | {r['seconds']:.1f} |")
    paths["md"].write_text(
        f"# HiFI peak memory against input size\n\nWritten by `{settings['command']}` "
        f"(checkpoint `{settings['checkpoint']}`, {settings['steps']} DDIM step(s), "
        f"{settings['samples']} sample(s), {settings['patch_batch']} patches per network call, one torch thread; "
        f"load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end).\n\n" + "\n".join(lines)
        + "\n\nWorking = peak − idle RSS: the memory the interpolation needs (peak RSS = the process's peak resident "
        "set on this CPU, which includes Python, torch and the model = idle RSS). × frame: working memory over one "
        "input frame (float32). × smallest: against the smallest input of the same mode, measured in this run.\n\n"
        "Largest/smallest working memory: " + ", ".join(f"{m} {working[m]:.2f}×" for m in working)
        + f" (pixels grow {rows[-1]['pixels'] / rows[0]['pixels']:.0f}×); whole-process peak: "
        + ", ".join(f"{m} {summary[m]:.2f}×" for m in summary) + ".\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, marker in zip(MODES, "os", strict=True):
        mine = [r for r in rows if r["mode"] == mode]
        ax.plot([r["side"] for r in mine], [r["working_mib"] for r in mine], marker=marker,
                label=f"{mode} working (peak − idle)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input side (pixels, square)")
    ax.set_ylabel("working memory (MiB)")
    ax.set_title("HiFI interpolation: peak memory vs input size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evpipe.tools.bench_upsample_memory",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--checkpoint", default="tiny")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--patch-batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument("--name", default="upsample_memory")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1], args.checkpoint, args.steps, args.samples,
                                 args.patch_batch)))
        return 0
    from tqdm import tqdm

    load_start = os.getloadavg()
    jobs = [(side, mode) for mode in args.modes for side in sorted(args.sizes)]
    rows = []
    try:
        for side, mode in tqdm(jobs, desc="memory", unit="run"):
            rows.append(run_child(side, mode, args))
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    settings = {"command": command_line("evpipe.tools.bench_upsample_memory", argv), "checkpoint": args.checkpoint,
                "steps": args.steps, "samples": args.samples, "patch_batch": args.patch_batch}
    paths = write_reports(rows, args.out, args.name, settings, load_start)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
