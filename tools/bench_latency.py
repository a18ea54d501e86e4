"""End-to-end latency of the real prediction graph, per backend and replay rate, against a naive loop.

The graph: ``replay`` (a real recording cropped to ``--roi``, by default the centre 128×128 of the
DAVIS346 street scene, paced in real time × speed) -> ``voxelizer`` (frame-synchronous windows)
-> ``predictor`` (the distilled student) -> ``metrics``, with a ``latest`` edge into the predictor
so a predictor that falls behind skips stale windows (counted) instead of queueing them. Source,
voxelizer, predictor and sink are separate processes, so the stages overlap (the graph is the
asynchronous pipeline on the CPU). For each available backend and each speed it records, from the
runtime's tracing, end-to-end p50/p99/max (newest event available -> prediction delivered), the
predictor's compute p50, predictions per second, and windows dropped.

The naive baseline, measured in the same run for each backend: the same model (the deployed student
with its head, on the same backend and threads as the graph's predictor node) on the same windows,
called one after another in a plain Python loop — voxel grid, then the predictor — with no graph and
no overlap. Ratios: naive p50 / graph p50 latency, and graph throughput / naive throughput. The
distillation gain is stated separately: the 64-step teacher against the student in that loop (eager
torch, one thread each), per prediction, on the first ``--teacher-windows`` windows.

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
from evpipe.runtime.report import describe_ms
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
            "pred": {"type": "predictor", "params": {"backend": backend, "variant": variant,
                                                     "threads": node_threads(backend) or 0}},
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
    """``count`` frame-synchronous windows of the (cropped) recording, as the graph cuts them: (anchor frame
    float32 (H, W) in [0, 1], its events (``Events``), t_anchor, t_target), µs. Past the recording's end
    they start again from its first, as the graph's replay loops it."""
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
        windows += [(anchor, events, f0.t, f0.t + (f1.t - f0.t) * k // per_frame) for k in range(1, per_frame + 1)]
    if not windows:
        raise ValueError(f"{recording} has fewer than two APS frames: no prediction window")
    return list(itertools.islice(itertools.cycle(windows), count))


def node_threads(backend: str) -> int | None:
    """Intra-op threads the graph's predictor node gets: torch one (its default two stall each other on a
    busy 2-core machine, see FramePredictor), ONNX Runtime its default."""
    return 1 if backend == "torch" else None


def naive_loop(windows: list[tuple], variants: list[str], backend: str) -> list[dict]:
    """The windows predicted one after another in a plain loop, no graph: voxel grid, then the predictor
    (each of ``variants`` on ``backend`` with the node's threads; several take turns window by window,
    so they share the machine's load). Per variant: per-prediction latency p50/p99/max and rate."""
    from evpipe.nodes.predict.sampler import FramePredictor, events_voxel

    predictors = [FramePredictor(v, backend=backend, threads=node_threads(backend)) for v in variants]
    for predictor in predictors:
        predictor.predict_events(*windows[0])  # warm-up: the first call allocates and picks kernels
    times_ns: list[list[int]] = [[] for _ in predictors]
    for anchor, events, t_anchor, t_target in tqdm(windows, desc=f"naive loop {'/'.join(variants)} ({backend})",
                                                   unit="window"):
        height, width = anchor.shape
        for predictor, times in zip(predictors, times_ns, strict=True):
            start = time.perf_counter_ns()
            predictor.predict(anchor, events_voxel(events, t_anchor, t_target, predictor.bins, height, width))
            times.append(time.perf_counter_ns() - start)
    rows = []
    for variant, predictor, times in zip(variants, predictors, times_ns, strict=True):
        stats = describe_ms(times)
        rows.append({"variant": variant, "backend": backend, "steps": predictor.steps, "windows": stats["count"],
                     "p50_ms": stats["p50"], "p99_ms": stats["p99"], "max_ms": stats["max"],
                     "mean_ms": stats["mean"], "predictions_s": 1e3 / stats["mean"]})
    return rows


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
    axes[0].axvline(TARGET_P50_MS, color="g", ls="--", label=f"target p50 {TARGET_P50_MS:g} ms")
    for (backend, naive), style in zip(result["naive"].items(), (":", "-."), strict=False):
        axes[1].axhline(naive["p50_ms"], color="k", ls=style, label=f"naive loop, {backend} ({naive['p50_ms']:.0f} ms)")
        axes[2].axhline(naive["predictions_s"], color="k", ls=style, label=f"naive loop, {backend}")
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
    naive, rows, distill = result["naive"], result["graph"], result["distillation"]
    lines = [f"# Predictor graph latency ({result['variant']} student, {result['size']})", "",
             f"Written by `{result['command']}` on {result['machine']} ({result['cores']} cores shared with other "
             f"jobs; load average {result['load_start']:.1f} at the start, {result['load_end']:.1f} at the end). "
             f"Recording `{Path(result['recording']).name}`, roi {result['roi']}, {result['per_frame']} predictions "
             "per APS frame interval; latencies from the runtime's tracing (newest event available -> prediction "
             "delivered at the sink).", "",
             "## Naive loop (same run, same model, same windows, no graph)", "",
             f"The {result['variant']} student with its head on the graph's backend and threads, the windows called "
             "one after another in a Python loop (voxel grid, then the predictor):", "",
             "| backend | windows | p50 (ms) | p99 (ms) | max (ms) | predictions/s |", "|---|---:|---:|---:|---:|---:|"]
    for backend, n in naive.items():
        lines.append(f"| {backend} | {n['windows']} | {n['p50_ms']:.1f} | {n['p99_ms']:.1f} | {n['max_ms']:.1f} "
                     f"| {n['predictions_s']:.1f} |")
    teacher, student = distill["teacher"], distill["student"]
    lines += ["", f"Distillation gain (same loop, eager torch, one thread, first {teacher['windows']} windows, the two "
              "taking turns window by window): the "
              f"{teacher['steps']}-step teacher p50 {teacher['p50_ms']:.1f} ms (p99 {teacher['p99_ms']:.1f}, max "
              f"{teacher['max_ms']:.1f}) against the {student['steps']}-step student's {student['p50_ms']:.1f} ms "
              f"(p99 {student['p99_ms']:.1f}, max {student['max_ms']:.1f}): {distill['p50_ratio']:.1f}× per "
              "prediction.", "",
              "## Graph", "",
              "| backend | speed | predictions | e2e p50 (ms) | e2e p99 (ms) | e2e max (ms) "
              "| predictor compute p50 (ms) | predictions/s | windows dropped | naive/graph latency "
              "| graph/naive throughput |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:  # a backend too slow to deliver anything past the sink's warm-up has no latency: "–"
        lines.append(f"| {r['backend']} | {r['speed']:g}× | {r['predictions']} | {_num(r['p50_ms'])} "
                     f"| {_num(r['p99_ms'])} | {_num(r['max_ms'])} "
                     f"| {_num(r['pred_compute_p50_ms'])} | {r['predictions_s']:.1f} "
                     f"| {r['windows_dropped']}/{r['windows_sent']} | {_num(r['latency_ratio_naive_over_graph'], '×')} "
                     f"| {r['throughput_ratio_graph_over_naive']:.1f}× |")
    lines += ["", "Windows dropped: stale windows the `latest` edge skipped while the predictor was busy. The naive "
              "latency is compute only (its windows wait in memory), the graph's is end to end (replay, voxelizer, "
              "transport, queueing included); the graph's throughput is paced by the replay and its `latest` edge."]
    if any(r["p50_ms"] is None for r in rows):
        lines[-1] += (" –: no prediction reached the sink after its 3-message warm-up (the backend is too slow for "
                      "the run's length).")
    lines += ["", f"## Engine asynchronous mode (ONNX Runtime, {result['variant']}, same windows)", "",
              "| mode | in flight | intra-op threads | predictions/s | ms/prediction | vs sync run() "
              "| vs naive loop (onnxruntime) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    naive_ort = naive["onnxruntime"]
    for r in result["engine"]:
        lines.append(f"| {r['mode']} | {r['in_flight'] or '–'} | {r['threads']} | {r['predictions_s']:.1f} "
                     f"| {r['ms_per_prediction']:.1f} | {r['ratio_to_sync']:.2f}× "
                     f"| {r['predictions_s'] / naive_ort['predictions_s']:.2f}× |")
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
    parser.add_argument("--loops", type=int, default=6,
                        help="plays of the recording per run at 1× (times the speed at other speeds)")
    parser.add_argument("--variant", default="4step")
    parser.add_argument("--per-frame", type=int, default=8, help="predictions per APS frame interval")
    parser.add_argument("--naive-windows", type=int, default=300, help="windows of the naive loop, per backend")
    parser.add_argument("--teacher-windows", type=int, default=20,
                        help="windows of the teacher/student distillation comparison (the teacher is slow)")
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
    windows = load_windows(args.recording, roi, args.per_frame,
                           max(args.naive_windows, args.teacher_windows, args.engine_windows))
    naive = {backend: naive_loop(windows[:args.naive_windows], [args.variant], backend)[0]
             for backend in dict.fromkeys(["onnxruntime", *args.backends])}
    teacher, student = naive_loop(windows[:args.teacher_windows], ["teacher", args.variant], "torch")
    distillation = {"teacher": teacher, "student": student, "p50_ratio": teacher["p50_ms"] / student["p50_ms"]}
    engine = engine_async(windows[:args.engine_windows], args.variant, [(2, 1), (2, 0)])
    # loops scale with the speed, so every run lasts as long and delivers about as many predictions
    rows = [graph_run(args.recording, roi, backend, speed, max(1, round(args.loops * speed)), args.variant,
                      args.per_frame)
            for backend in tqdm(args.backends, desc="backends") for speed in args.speeds]
    for row in rows:
        same = naive[row["backend"]]
        row["latency_ratio_naive_over_graph"] = same["p50_ms"] / row["p50_ms"] if row["p50_ms"] else None
        row["throughput_ratio_graph_over_naive"] = row["predictions_s"] / same["predictions_s"]
    height, width = windows[0][0].shape
    ort = [r for r in rows if r["backend"] == "onnxruntime" and r["speed"] == 1.0]
    if ort:
        met = ort[0]["p50_ms"] <= TARGET_P50_MS
        target = (f"onnxruntime at 1× real time: end-to-end p50 {ort[0]['p50_ms']:.1f} ms per predicted frame, p99 "
                  f"{ort[0]['p99_ms']:.1f}, max {ort[0]['max_ms']:.1f} over {ort[0]['predictions']} predictions "
                  f"(predictor compute p50 {ort[0]['pred_compute_p50_ms']:.1f} ms); target p50 <= "
                  f"{TARGET_P50_MS:g} ms: {'met' if met else 'missed'}")
    else:
        target = "onnxruntime at 1× was not measured in this run"
    result = {"benchmark": "latency", "recording": args.recording, "roi": roi, "size": f"{width}x{height}",
              "variant": args.variant, "per_frame": args.per_frame, "cores": os.cpu_count(),
              "machine": f"{platform.machine()} CPU, no GPU", "naive": naive, "distillation": distillation,
              "engine": engine, "graph": rows,
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
