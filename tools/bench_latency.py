"""End-to-end latency of the real prediction graph, per backend and replay rate, against a naive loop.

The graph: ``replay`` (a real recording, paced in real time × speed) -> ``voxelizer`` (frame-synchronous
windows) -> ``predictor`` (the distilled student) -> ``metrics``, with a ``latest`` edge into the
predictor so a predictor that falls behind skips stale windows (counted) instead of queueing them.
For each available backend and each speed it records end-to-end p50/p99 (newest event available ->
prediction delivered), predictions per second, and windows dropped.

The naive baseline, measured in the same run: the same windows predicted one after another in a plain
Python loop — voxel grid, then the teacher sampler in eager torch — with no graph and no overlap.
Ratios: naive latency / graph p50 latency, and graph throughput / naive throughput.

Writes JSON and a PNG next to it:

    python -m evpipe.tools.bench_latency --out benchmarks/latency.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from tqdm import tqdm

from evpipe.runtime.graph import build_graph
from evpipe.runtime.supervisor import Supervisor

DEFAULT_RECORDING = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis346_street" / \
    "davis346_street_first1.8s_zstd.aedat4"
PATH = "src -> vox -> pred -> metrics"


def graph_run(recording: str, backend: str, speed: float, loops: int, variant: str, per_frame: int) -> dict:
    doc = {
        "name": f"latency-{backend}-x{speed:g}",
        "nodes": {
            "src": {"type": "replay", "params": {"path": recording, "pace": "realtime", "speed": speed,
                                                 "loops": loops, "imu": False, "checksum": False}},
            "vox": {"type": "voxelizer", "params": {"mode": "frame_sync", "bins": 5,
                                                    "predictions_per_frame": per_frame}},
            "pred": {"type": "predictor", "params": {"backend": backend, "variant": variant}},
            "metrics": {"type": "metrics", "params": {"warmup": 3, "checksum": False}},
        },
        "edges": [
            "src.events -> vox.events",
            "src.frames -> vox.frames",
            "src.frames -> pred.frames",
            {"edge": "vox.voxels -> pred.voxels", "policy": "latest"},
            "pred.predictions -> metrics.in",
        ],
    }
    result = Supervisor(build_graph(doc, "<bench_latency>"), console=Console(stderr=True, quiet=True)).run()
    if result.exit_code != 0:
        raise RuntimeError(f"graph {doc['name']} failed: {result.report['nodes']}")
    report = result.report
    path = report["latency"]["paths"].get(PATH, {})
    windows = next(e for e in report["edges"] if e["edge"] == "vox.voxels->pred.voxels")
    return {"backend": backend, "speed": speed, "p50_ms": path.get("p50"), "p99_ms": path.get("p99"),
            "max_ms": path.get("max"), "predictions": path.get("count", 0),
            "predictions_s": report["latency"]["throughput_msgs_s"], "windows_sent": windows["sent"],
            "windows_dropped": windows["dropped"], "lost": sum(e["lost"] or 0 for e in report["edges"]),
            "pred_compute_p50_ms": report["latency"]["nodes"].get("pred", {}).get("compute", {}).get("p50")}


def naive_loop(recording: str, windows: int, per_frame: int) -> dict:
    """The same kind of windows, predicted one by one with the teacher in eager torch, no graph."""
    from evpipe.nodes.predict.node import gray_unit
    from evpipe.nodes.predict.sampler import FramePredictor, events_voxel
    from evpipe.nodes.sources.readers import open_recording
    from evpipe.runtime.events import Events

    with open_recording(recording) as rec:
        events = Events.concatenate(list(rec.events()))
        frames = list(rec.frames())
        width, height = rec.sensor_size
    teacher = FramePredictor("teacher", backend="torch")
    times = []
    for f0, f1 in itertools.pairwise(frames):
        anchor = gray_unit(f0.image)
        for k in range(1, per_frame + 1):
            target = f0.t + (f1.t - f0.t) * k // per_frame
            start = time.perf_counter()
            voxel = events_voxel(events, f0.t, target, teacher.bins, height, width)
            teacher.predict(anchor, voxel)
            times.append(time.perf_counter() - start)
            if len(times) >= windows:
                ms = np.asarray(times) * 1e3
                return {"windows": len(times), "teacher_steps": teacher.steps, "p50_ms": float(np.median(ms)),
                        "mean_ms": float(ms.mean()), "predictions_s": float(1e3 / ms.mean())}
    raise ValueError(f"{recording} has fewer than {windows} windows")


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for backend in sorted({r["backend"] for r in result["graph"]}):
        rows = [r for r in result["graph"] if r["backend"] == backend]
        speeds = [r["speed"] for r in rows]
        axes[0].plot(speeds, [r["p50_ms"] for r in rows], "o-", label=f"{backend} p50")
        axes[0].plot(speeds, [r["p99_ms"] for r in rows], "o--", label=f"{backend} p99")
        axes[1].plot(speeds, [r["predictions_s"] for r in rows], "o-", label=f"{backend} delivered")
        axes[1].plot(speeds, [r["windows_dropped"] / max(1, r["windows_sent"]) * 100 for r in rows], "x:",
                     label=f"{backend} windows dropped (%)")
    naive = result["naive"]
    axes[0].axhline(naive["p50_ms"], color="k", ls=":", label=f"naive teacher loop ({naive['p50_ms']:.0f} ms)")
    axes[1].axhline(naive["predictions_s"], color="k", ls=":", label="naive teacher loop")
    axes[0].set(xlabel="replay speed (× real time)", ylabel="end-to-end latency (ms)", yscale="log")
    axes[1].set(xlabel="replay speed (× real time)", ylabel="predictions/s  |  % dropped")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"predictor graph on {Path(result['recording']).name} ({result['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recording", default=str(DEFAULT_RECORDING), help="a recording with APS frames")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    parser.add_argument("--speeds", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--loops", type=int, default=2, help="plays of the recording per run")
    parser.add_argument("--variant", default="4step")
    parser.add_argument("--per-frame", type=int, default=8, help="predictions per APS frame interval")
    parser.add_argument("--naive-windows", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/latency.json")
    args = parser.parse_args(argv)
    if not Path(args.recording).exists():
        parser.error(f"recording {args.recording} not found (give --recording)")

    naive = naive_loop(args.recording, args.naive_windows, args.per_frame)
    rows = [graph_run(args.recording, backend, speed, args.loops, args.variant, args.per_frame)
            for backend in tqdm(args.backends, desc="backends") for speed in args.speeds]
    for row in rows:
        row["latency_ratio_naive_over_graph"] = naive["p50_ms"] / row["p50_ms"] if row["p50_ms"] else None
        row["throughput_ratio_graph_over_naive"] = row["predictions_s"] / naive["predictions_s"]
    result = {"benchmark": "latency", "recording": args.recording, "variant": args.variant,
              "machine": f"{platform.machine()} CPU, no GPU", "naive": naive, "graph": rows,
              "command": "python -m evpipe.tools.bench_latency " + " ".join(argv or [])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    lines = ["| backend | speed | p50 (ms) | p99 (ms) | predictions/s | windows dropped | naive/graph latency "
             "| graph/naive throughput |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['speed']:g}× | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                     f"| {r['predictions_s']:.1f} | {r['windows_dropped']}/{r['windows_sent']} "
                     f"| {r['latency_ratio_naive_over_graph']:.1f}× | {r['throughput_ratio_graph_over_naive']:.1f}× |")
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(
        f"# Predictor graph latency\n\n{result['machine']}; naive baseline: teacher ({naive['teacher_steps']} "
        f"steps, eager torch) one window at a time: p50 {naive['p50_ms']:.1f} ms per prediction.\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
