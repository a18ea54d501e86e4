"""Benchmark: ``evpipe batch`` on a local Ray against the serial shell loop it replaces, and Ray's per-item cost.

    python -m evpipe.tools.bench_batch                   # 4 recordings (graph) + 4 video clips (restore), 3 rounds
    python -m evpipe.tools.bench_batch --repeats 5 --out benchmarks/batch.json

Workloads, on real data from ``../shared/data``:

* graph: ``replay_to_voxels.yaml`` over four recordings. Serial: ``evpipe run`` once per input, one after
  the other (what a shell loop does). Batch: ``evpipe batch replay_to_voxels.yaml --inputs ...``.
* restore: ``evpipe restore`` with a small DDS setting over four short, downscaled copies of real videos
  (:mod:`evpipe.tools.small_clips`) against ``evpipe batch restore``, which cuts each clip into its windows;
  and, as the reference without per-clip start-up, the same windows restored one after another in this
  process with the prior loaded once.

Both sides run as subprocesses from start to end: the batch figures include starting and stopping Ray.
Rounds alternate serial and batch so both see the same machine load. Engine overhead, measured in this
process on a local Ray: the round trip of an empty task and of an actor call carrying one restore window,
beside the same Python call made directly, and the time ``ray.init`` + ``ray.shutdown`` take.
Writes JSON and Markdown (``benchmarks/batch.json`` / ``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.tools import command_line
from evpipe.tools.small_clips import small_clip

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RECORDINGS = ("dvxplorer/dvxplorer_sample.aedat4", "davis346_street/davis346_street_first1.8s_zstd.aedat4",
              "davis346_street/davis346_street_first1.8s.h5", "atis_es/dvs.es")
VIDEOS = ("01_dog", "02_cups", "04_coffee", "06_pingpong")
CLIP = {"width": 64, "height": 48, "frames": 24}
RESTORE = ("--degradation", "uniform7", "--nfe", "4", "--cg-steps", "2", "--window", "8", "--overlap", "2")
GRAPH = "replay_to_voxels.yaml"


def stats(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples, np.float64)
    return {"n": len(values), "p50": float(np.median(values)), "p99": float(np.percentile(values, 99)),
            "min": float(values.min()), "max": float(values.max())}


def evpipe(*args: str) -> float:
    """Run the CLI to completion; its wall time in seconds (raises on failure)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "evpipe.runtime.cli", *args], capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"evpipe {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.perf_counter() - started


def serial_graph(inputs: list[Path], out: Path) -> float:
    return sum(evpipe("run", GRAPH, "--set", f"replay.path={path}", "--set", f"voxels.path={out / path.stem / 'v.npz'}",
                      "--set", f"recorder.path={out / path.stem / 'e.aedat4'}") for path in inputs)


def serial_restore(clips: list[Path], out: Path) -> float:
    return sum(evpipe("restore", str(clip), str(out / f"{clip.stem}.mp4"), *RESTORE) for clip in clips)


def inprocess_restore(clips: list[Path], out: Path) -> float:
    """The reference without any start-up per clip: the windows restored one after another in this process
    (the prior loaded once, torch's default threads), joined and written as the batch does."""
    from evpipe.nodes.restore.windows import window_spans
    from evpipe.tools.batch import build_parser
    from evpipe.tools.batch_jobs import RestoreModel, read_clip, restore_graph, write_restored

    args = build_parser("restore").parse_args([*RESTORE, "--inputs", "unused", "--out", str(out)])
    started = time.perf_counter()
    model = None
    for clip in clips:
        graph = restore_graph(args, clip, out / f"{clip.stem}.mp4")
        params = graph.nodes["restore"].params
        model = model or RestoreModel(dict(params))
        frames, times = read_clip(graph.nodes["clip"].params)
        windows = [model.restore(frames[a:b]) for a, b in window_spans(len(frames), params["window"],
                                                                          params["overlap"])]
        write_restored(graph.nodes["video"].params, windows, params["overlap"], times, params["degradation"])
    return time.perf_counter() - started


def batch_graph(inputs: list[Path], out: Path, cpus: int) -> float:
    return evpipe("batch", GRAPH, *[x for p in inputs for x in ("--inputs", str(p))], "--out", str(out),
                  "--num-cpus", str(cpus))


def batch_restore(clips: list[Path], out: Path, cpus: int) -> float:
    return evpipe("batch", "restore", *[x for p in clips for x in ("--inputs", str(p))], "--out", str(out),
                  *RESTORE, "--num-cpus", str(cpus))


def _noop(x: Any = None) -> Any:
    return x


class _Echo:
    def call(self, array: np.ndarray) -> np.ndarray:
        return array


def engine_overhead(cpus: int, calls: int) -> dict[str, Any]:
    """Per-item cost of Ray on this machine, with the direct call as the reference."""
    import ray

    window = np.zeros((8, CLIP["height"], CLIP["width"]), np.float32)
    cycles = []
    for _ in range(3):
        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        ray.shutdown()
        cycles.append(time.perf_counter() - t0)
    ray.init(num_cpus=cpus, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    try:
        task = ray.remote(_noop)
        actor = ray.remote(_Echo).remote()
        ray.get([task.remote() for _ in range(cpus * 2)])  # workers started before timing
        ray.get(actor.call.remote(window))
        rows: dict[str, list[float]] = {"direct call": [], "Ray task (empty)": [], "Ray actor call (one window)": []}
        echo = _Echo()
        for _ in range(calls):
            t0 = time.perf_counter()
            echo.call(window)
            rows["direct call"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ray.get(task.remote())
            rows["Ray task (empty)"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ray.get(actor.call.remote(window))
            rows["Ray actor call (one window)"].append(time.perf_counter() - t0)
    finally:
        ray.shutdown()
    return {"window_bytes": window.nbytes, "calls": calls,
            "round_trip_ms": {k: {s: v * 1e3 if s != "n" else v for s, v in stats(x).items()} for k, x in rows.items()},
            "init_and_shutdown_s": stats(cycles)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of serial then batch per workload")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs the local Ray may use")
    parser.add_argument("--calls", type=int, default=200, help="round trips per engine-overhead measurement")
    parser.add_argument("--out", default="benchmarks/batch.json")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        parser.error(f"{DATA} is absent: the benchmark runs on the real recordings and videos there")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    load_start = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        inputs = [DATA / name for name in RECORDINGS]
        clips = [small_clip(DATA / "video_gallery" / f"{name}.mp4", scratch / "clips" / f"{name}.mp4",
                            CLIP["width"], CLIP["height"], CLIP["frames"]) for name in VIDEOS]
        workloads = {"graph": {"serial": lambda o: serial_graph(inputs, o),
                               "batch": lambda o: batch_graph(inputs, o, args.cpus)},
                     "restore": {"serial": lambda o: serial_restore(clips, o),
                                 "in-process serial": lambda o: inprocess_restore(clips, o),
                                 "batch": lambda o: batch_restore(clips, o, args.cpus)}}
        results: dict[str, Any] = {}
        for name, sides in workloads.items():
            times: dict[str, list[float]] = {side: [] for side in sides}
            for round_ in range(args.repeats):
                for side, run in sides.items():
                    out = scratch / f"{name}-{side}-{round_}"
                    times[side].append(run(out))
                    shutil.rmtree(out, ignore_errors=True)
                    print(f"{name} {side} round {round_ + 1}: {times[side][-1]:.1f} s", flush=True)
            results[name] = {"seconds": {side: stats(t) for side, t in times.items()}, "runs": times,
                             "speedup": {side: stats([r / b for r, b in zip(t, times["batch"], strict=True)])
                                         for side, t in times.items() if side != "batch"}}
        overhead = engine_overhead(args.cpus, args.calls)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_end = os.getloadavg()
    result = {"benchmark": "batch", "command": command_line("evpipe.tools.bench_batch", argv),
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "load_average_start": load_start, "load_average_end": load_end},
              "inputs": {"graph": list(RECORDINGS), "restore": {"videos": list(VIDEOS), **CLIP,
                                                                "options": list(RESTORE)}},
              "workloads": results, "engine": overhead}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result, args))
    print(out.with_suffix(".md").read_text())
    return 0


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    machine = result["machine"]
    lines = ["# Batch jobs on Ray against the serial loop", "",
             f"Command: `{result['command']}`. Machine: {machine['platform']}, {machine['cpu_count']} CPUs, "
             f"load average {[round(x, 2) for x in machine['load_average_start']]} at the start, "
             f"{[round(x, 2) for x in machine['load_average_end']]} at the end (the machine is shared with other "
             f"engineers' work). {args.repeats} rounds per workload, serial and batch alternating; every time is a "
             "whole command from start to exit, the batch's including starting and stopping a local Ray.", "",
             f"- graph: `{GRAPH}` over {len(RECORDINGS)} real recordings ({', '.join(RECORDINGS)}); serial = "
             "`evpipe run` per input in turn.",
             f"- restore: {len(VIDEOS)} real videos cut to {CLIP['frames']} frames at {CLIP['width']}x{CLIP['height']} "
             f"(`{' '.join(RESTORE)}`); serial = `evpipe restore` per clip in turn; batch = `evpipe batch restore` "
             "(each clip's windows spread over the actors).",
             "- in-process serial (restore only): the same windows restored one after another in one process with "
             "the prior loaded once: the loop without any per-clip start-up, the reference for what the "
             "parallel workers themselves gain.", "",
             "| workload | run | p50 (s) | p99 (s) | max (s) | min (s) | batch speed-up over it: p50 | min | max |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, w in result["workloads"].items():
        for side, t in w["seconds"].items():
            x = w["speedup"].get(side)
            gain = f"{x['p50']:.2f}x | {x['min']:.2f}x | {x['max']:.2f}x" if x else "- | - | -"
            lines.append(f"| {name} | {side} | {t['p50']:.1f} | {t['p99']:.1f} | {t['max']:.1f} | {t['min']:.1f} | "
                         f"{gain} |")
    engine = result["engine"]
    lines += ["", f"Engine overhead per item (local Ray, {engine['calls']} sequential round trips each; the actor "
              f"call carries one restore window of {engine['window_bytes'] / 1024:.0f} KiB and returns it):", "",
              "| call | p50 (ms) | p99 (ms) | max (ms) |", "|---|---:|---:|---:|"]
    for name, r in engine["round_trip_ms"].items():
        lines.append(f"| {name} | {r['p50']:.3f} | {r['p99']:.3f} | {r['max']:.3f} |")
    init = engine["init_and_shutdown_s"]
    lines += ["", f"Starting and stopping a local Ray (`ray.init` + `ray.shutdown`): p50 {init['p50']:.1f} s, "
              f"p99 {init['p99']:.1f} s, max {init['max']:.1f} s ({init['n']} times)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
