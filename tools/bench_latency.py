"""End-to-end latency of the real prediction graph, per backend and replay rate, against a naive loop.

The graph: ``replay`` (a real recording cropped to ``--roi``, by default the centre 128×128 of the
DAVIS346 street scene, paced in real time × speed) -> ``voxelizer`` (frame-synchronous windows)
-> ``predictor`` (the distilled student) -> ``metrics``, with a ``latest`` edge into the predictor
so a predictor that falls behind skips stale windows (counted) instead of queueing them. Source,
voxelizer, predictor and sink are separate processes, so the stages overlap (the graph is the
asynchronous pipeline on the CPU). For each available backend and each speed it records, from the
runtime's tracing, end-to-end p50/p99 (newest event available -> prediction delivered), the
predictor's compute p50, predictions per second, and windows dropped.

The naive baseline, measured in the same run: the same windows predicted one after another in a plain
Python loop — voxel grid, then the teacher sampler in eager torch (one thread, its fastest setting
here) — with no graph and no overlap.
Ratios: naive latency / graph p50 latency, and graph throughput / naive throughput.

Also in the same run, the engine's asynchronous mode on ONNX Runtime (``Engine.submit``/``collect``
with N requests in flight, the mode the GPU backends overlap upload, compute and download with)
against the same engine called synchronously, on the same windows: predictions per second.

Writes JSON, Markdown and a PNG (latency histograms, latency and throughput against speed):

    python -m evpipe.tools.bench_latency --out benchmarks/latency.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from tqdm import tqdm

from evpipe.runtime.graph import build_graph
from evpipe.runtime.supervisor import Supervisor
from evpipe.tools import command_line

DEFAULT_RECORDING = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis346_street" / \
    "davis346_street_first1.8s_zstd.aedat4"
DEFAULT_ROI = [109, 66, 237, 194]  # the centre 128x128 of the DAVIS346's 346x260
PATH = "src -> vox -> pred -> metrics"
TARGET_P50_MS = 40.0  # issue #6: predictor node, ONNX Runtime, 128x128, 4-step student, on this CPU


def run_traced(doc: dict, origin: str) -> dict:
    """Run the graph ``doc`` (``origin`` names it in errors) quietly; its report, with the runtime's latency
    tracing under ``report["latency"]``. RuntimeError when the graph fails."""
    result = Supervisor(build_graph(doc, origin), console=Console(stderr=True, quiet=True)).run()
    if result.exit_code != 0:
        raise RuntimeError(f"graph {doc['name']} failed: {result.report['nodes']}")
    return result.report


def graph_run(recording: str, roi: list[int] | None, backend: str, speed: float, loops: int, variant: str,
              per_frame: int) -> dict:
    doc = {
        "name": f"latency-{backend}-x{speed:g}",
        "nodes": {
            "src": {"type": "replay", "params": {"path": recording, "roi": roi, "pace": "realtime", "speed": speed,
                                                 "loops": loops, "imu": False, "checksum": False}},
            "vox": {"type": "voxelizer", "params": {"mode": "frame_sync", "bins": 5,
                                                    "predictions_per_frame": per_frame}},
            # torch gets one thread: its default two stall each other on a busy 2-core machine
            "pred": {"type": "predictor", "params": {"backend": backend, "variant": variant,
                                                     "threads": 1 if backend == "torch" else 0}},
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
    report = run_traced(doc, "<bench_latency>")
    path = report["latency"]["paths"].get(PATH, {})
    windows = next(e for e in report["edges"] if e["edge"] == "vox.voxels->pred.voxels")
    return {"backend": backend, "speed": speed, "p50_ms": path.get("p50"), "p99_ms": path.get("p99"),
            "max_ms": path.get("max"), "predictions": path.get("count", 0),
            "predictions_s": report["latency"]["throughput_msgs_s"], "windows_sent": windows["sent"],
            "windows_dropped": windows["dropped"], "lost": sum(e["lost"] or 0 for e in report["edges"]),
            "pred_compute_p50_ms": report["latency"]["nodes"].get("pred", {}).get("compute", {}).get("p50"),
            "series_ms": path.get("series_ms", [])}


def load_windows(recording: str, roi: list[int] | None, per_frame: int, count: int) -> list[tuple]:
    """The first ``count`` frame-synchronous windows of the (cropped) recording, as the graph cuts them:
    (anchor frame float32 (H, W) in [0, 1], its events (``Events``), t_anchor, t_target), µs."""
    from evpipe.nodes.colour import gray_unit
    from evpipe.nodes.sources.readers import open_recording
    from evpipe.runtime.events import Events

    with open_recording(recording) as rec:
        events = Events.concatenate(list(rec.events()))
        frames = list(rec.frames())
    if roi is not None:
        x0, y0, x1, y1 = roi
        keep = (events.x >= x0) & (events.x < x1) & (events.y >= y0) & (events.y < y1)
        events = Events.from_arrays(events.t[keep], events.x[keep] - x0, events.y[keep] - y0, events.p[keep])
    windows = []
    for f0, f1 in itertools.pairwise(frames):
        anchor = gray_unit(f0.image if roi is None else f0.image[roi[1]:roi[3], roi[0]:roi[2]])
        for k in range(1, per_frame + 1):
            windows.append((anchor, events, f0.t, f0.t + (f1.t - f0.t) * k // per_frame))
            if len(windows) == count:
                return windows
    raise ValueError(f"{recording} has fewer than {count} windows")


def naive_loop(windows: list[tuple]) -> dict:
    """The windows predicted one by one with the teacher in eager torch, no graph: voxel grid + sampler."""
    from evpipe.nodes.predict.sampler import FramePredictor, events_voxel

    teacher = FramePredictor("teacher", backend="torch", threads=1)  # see FramePredictor: 2 threads stall here
    first = windows[0]
    teacher.predict_events(*first)  # warm-up: torch's first call allocates and picks kernels
    times = []
    for anchor, events, t_anchor, t_target in tqdm(windows, desc="naive teacher loop", unit="window"):
        start = time.perf_counter()
        height, width = anchor.shape
        teacher.predict(anchor, events_voxel(events, t_anchor, t_target, teacher.bins, height, width))
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1e3
    return {"windows": len(times), "teacher_steps": teacher.steps, "p50_ms": float(np.median(ms)),
            "mean_ms": float(ms.mean()), "predictions_s": float(1e3 / ms.mean())}


def engine_async(windows: list[tuple], variant: str, configs: list[tuple[int, int]]) -> list[dict]:
    """Predictions/s of the fused ONNX graph on ONNX Runtime over the same windows: ``run`` one at a time
    (all cores), then ``submit``/``collect`` with (in flight, intra-op threads) of each config."""
    from evpipe.nodes.predict.checkpoint import load_model
    from evpipe.nodes.predict.export import INPUT_NAMES, cached_fused_onnx
    from evpipe.nodes.predict.sampler import events_voxel
    from evpipe.runtime.engines import open_engine

    model, _ = load_model(variant)
    bins = model.config.bins
    feeds = []
    for anchor, events, t_anchor, t_target in windows:
        h, w = anchor.shape
        if h % model.multiple or w % model.multiple:
            raise ValueError(f"--roi: the engine benchmark needs H and W that are multiples of {model.multiple}, "
                             f"got {w}x{h}")
        voxel = events_voxel(events, t_anchor, t_target, bins, h, w)
        noise = np.zeros((1, *model.noise_shape(h, w)), np.float32)  # temperature 0, as the node runs
        feeds.append(dict(zip(INPUT_NAMES, (anchor[None, None], voxel[None], noise), strict=True)))
    onnx = cached_fused_onnx(variant)
    rows = []
    for in_flight, threads in [(0, 0), *configs]:  # (0, 0): synchronous run() on all cores
        options = {"threads": threads} if threads else None
        with open_engine(onnx, backend="onnxruntime", device="cpu", max_in_flight=max(in_flight, 1),
                         onnxruntime=options) as engine:
            engine.run(feeds[0])  # warm-up: first-run allocations are not part of the rate
            start = time.perf_counter()
            if in_flight == 0:
                for feed in feeds:
                    engine.run(feed)
            else:
                for feed in feeds:
                    engine.submit(feed)
                done = engine.collect(block=True)
                if len(done) != len(feeds):
                    raise RuntimeError(f"async engine returned {len(done)} of {len(feeds)} results")
            seconds = time.perf_counter() - start
        rows.append({"mode": "sync run()" if in_flight == 0 else "async submit/collect", "in_flight": in_flight,
                     "threads": threads or os.cpu_count(), "windows": len(feeds),
                     "predictions_s": len(feeds) / seconds, "ms_per_prediction": seconds / len(feeds) * 1e3})
    for row in rows:
        row["ratio_to_sync"] = row["predictions_s"] / rows[0]["predictions_s"]
    return rows


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    backends = sorted({r["backend"] for r in result["graph"]})
    for backend in backends:
        rows = [r for r in result["graph"] if r["backend"] == backend]
        slowest = min(rows, key=lambda r: r["speed"])
        if slowest["series_ms"]:
            axes[0].hist(slowest["series_ms"], bins=40, alpha=0.6,
                         label=f"{backend} {slowest['speed']:g}× (p50 {slowest['p50_ms']:.0f} ms)")
        speeds = [r["speed"] for r in rows]
        axes[1].plot(speeds, [r["p50_ms"] or np.nan for r in rows], "o-", label=f"{backend} p50")
        axes[1].plot(speeds, [r["p99_ms"] or np.nan for r in rows], "o--", label=f"{backend} p99")
        axes[2].plot(speeds, [r["predictions_s"] for r in rows], "o-", label=f"{backend} delivered")
        axes[2].plot(speeds, [r["windows_dropped"] / max(1, r["windows_sent"]) * 100 for r in rows], "x:",
                     label=f"{backend} windows dropped (%)")
    naive = result["naive"]
    axes[0].axvline(TARGET_P50_MS, color="g", ls="--", label=f"target p50 {TARGET_P50_MS:g} ms")
    axes[1].axhline(naive["p50_ms"], color="k", ls=":", label=f"naive teacher loop ({naive['p50_ms']:.0f} ms)")
    axes[2].axhline(naive["predictions_s"], color="k", ls=":", label="naive teacher loop")
    axes[0].set(xlabel="end-to-end latency (ms)", ylabel="predictions", title="Latency histogram (slowest speed)")
    axes[1].set(xlabel="replay speed (× real time)", ylabel="end-to-end latency (ms)", yscale="log")
    axes[2].set(xlabel="replay speed (× real time)", ylabel="predictions/s  |  % dropped")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"predictor graph on {Path(result['recording']).name}, {result['size']} ({result['machine']})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _num(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:.1f}{unit}"


def markdown(result: dict) -> str:
    naive, rows = result["naive"], result["graph"]
    lines = [f"# Predictor graph latency ({result['variant']} student, {result['size']})", "",
             f"Written by `{result['command']}` on {result['machine']} ({result['cores']} cores shared with other "
             f"jobs; load average {result['load_start']:.1f} at the start, {result['load_end']:.1f} at the end). "
             f"Recording `{Path(result['recording']).name}`, roi {result['roi']}, {result['per_frame']} predictions "
             "per APS frame interval; latencies from the runtime's tracing (newest event available -> prediction "
             "delivered at the sink). Naive baseline (same run): the teacher "
             f"({naive['teacher_steps']} steps, eager torch, one thread), one window at a time in a Python loop: p50 "
             f"{naive['p50_ms']:.1f} ms per prediction, {naive['predictions_s']:.2f} predictions/s.", "",
             "| backend | speed | e2e p50 (ms) | e2e p99 (ms) | predictor compute p50 (ms) | predictions/s "
             "| windows dropped | naive/graph latency | graph/naive throughput |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:  # a backend too slow to deliver anything past the sink's warm-up has no latency: "–"
        lines.append(f"| {r['backend']} | {r['speed']:g}× | {_num(r['p50_ms'])} | {_num(r['p99_ms'])} "
                     f"| {_num(r['pred_compute_p50_ms'])} | {r['predictions_s']:.1f} "
                     f"| {r['windows_dropped']}/{r['windows_sent']} | {_num(r['latency_ratio_naive_over_graph'], '×')} "
                     f"| {r['throughput_ratio_graph_over_naive']:.1f}× |")
    lines += ["", "Windows dropped: stale windows the `latest` edge skipped while the predictor was busy."]
    if any(r["p50_ms"] is None for r in rows):
        lines[-1] += (" –: no prediction reached the sink after its 3-message warm-up (the backend is too slow for "
                      "the run's length).")
    lines += ["", f"## Engine asynchronous mode (ONNX Runtime, {result['variant']}, same windows)", "",
              "| mode | in flight | intra-op threads | predictions/s | ms/prediction | vs sync run() | vs naive |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["engine"]:
        lines.append(f"| {r['mode']} | {r['in_flight'] or '–'} | {r['threads']} | {r['predictions_s']:.1f} "
                     f"| {r['ms_per_prediction']:.1f} | {r['ratio_to_sync']:.2f}× "
                     f"| {r['predictions_s'] / naive['predictions_s']:.1f}× |")
    lines += ["", "## Target", "", f"- {result['target']}", "", "Histogram and curves: `latency.png`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recording", default=str(DEFAULT_RECORDING), help="a recording with APS frames")
    parser.add_argument("--roi", type=int, nargs=4, default=DEFAULT_ROI, metavar=("X0", "Y0", "X1", "Y1"),
                        help="crop box (half-open; default the centre 128x128 of the DAVIS346)")
    parser.add_argument("--full-sensor", action="store_true", help="no crop: the whole sensor")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    parser.add_argument("--speeds", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--loops", type=int, default=2, help="plays of the recording per run")
    parser.add_argument("--variant", default="4step")
    parser.add_argument("--per-frame", type=int, default=8, help="predictions per APS frame interval")
    parser.add_argument("--naive-windows", type=int, default=6, help="windows of the naive teacher loop")
    parser.add_argument("--engine-windows", type=int, default=48, help="windows of the engine async measurement")
    parser.add_argument("--out", default="benchmarks/latency.json")
    parser.add_argument("--render", action="store_true", help="measure nothing: rewrite the Markdown and PNG "
                        "of --out from its JSON")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render:
        result = json.loads(out.read_text())
        plot(result, out.with_suffix(".png"))
        out.with_suffix(".md").write_text(markdown(result))
        print(out.with_suffix(".md").read_text())
        return 0
    if not Path(args.recording).exists():
        parser.error(f"recording {args.recording} not found (give --recording)")
    roi = None if args.full_sensor else list(args.roi)

    load_start = os.getloadavg()[0]
    windows = load_windows(args.recording, roi, args.per_frame, max(args.naive_windows, args.engine_windows))
    naive = naive_loop(windows[:args.naive_windows])
    engine = engine_async(windows[:args.engine_windows], args.variant, [(2, 1), (2, 0)])
    rows = [graph_run(args.recording, roi, backend, speed, args.loops, args.variant, args.per_frame)
            for backend in tqdm(args.backends, desc="backends") for speed in args.speeds]
    for row in rows:
        row["latency_ratio_naive_over_graph"] = naive["p50_ms"] / row["p50_ms"] if row["p50_ms"] else None
        row["throughput_ratio_graph_over_naive"] = row["predictions_s"] / naive["predictions_s"]
    height, width = windows[0][0].shape
    ort = [r for r in rows if r["backend"] == "onnxruntime" and r["speed"] == 1.0]
    if ort:
        met = ort[0]["p50_ms"] <= TARGET_P50_MS
        target = (f"onnxruntime at 1× real time: end-to-end p50 {ort[0]['p50_ms']:.1f} ms per predicted frame "
                  f"(predictor compute p50 {ort[0]['pred_compute_p50_ms']:.1f} ms); target p50 <= "
                  f"{TARGET_P50_MS:g} ms: {'met' if met else 'missed'}")
    else:
        target = "onnxruntime at 1× was not measured in this run"
    result = {"benchmark": "latency", "recording": args.recording, "roi": roi, "size": f"{width}x{height}",
              "variant": args.variant, "per_frame": args.per_frame, "cores": os.cpu_count(),
              "machine": f"{platform.machine()} CPU, no GPU", "naive": naive, "engine": engine, "graph": rows,
              "target": target, "load_start": load_start, "load_end": os.getloadavg()[0],
              "command": command_line("evpipe.tools.bench_latency", argv)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(markdown(result))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
