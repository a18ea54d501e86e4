"""Benchmark the CPU kernels in events per second, against references measured in the same run.

For each event count (``--sizes``) and sensor (``--resolutions``), on the same events:

- evpipe: ``voxel_grid`` (B bins), ``event_frame``, ``time_surface``, ``edi_integral`` (the whole
  packet as one exposure, K samples);
- references for the voxel grid: E2VID's NumPy implementation (``np.add.at``, from an (N, 4)
  float64 event array as E2VID keeps them), tonic's ``to_voxel_grid_numpy`` (if tonic is
  installed; note it spreads t over B rather than B-1 bin widths), and a straightforward parallel
  Numba loop (one private planar grid per thread, float64 time division per event);
- references for event frames: dv-processing's ``Accumulator`` and ``EdgeMapAccumulator``
  (``accept`` + ``generateFrame``; their EventStore is built before timing).

The machine's memory-read bandwidth is measured in the same run (NumPy single-thread sum and a
Numba parallel sum over a 1 GiB array); each result is also given as a fraction of the faster,
counting 13 bytes per event (t 8 + x 2 + y 2 + p 1) — the least any kernel must read.

Events: uniformly distributed over the sensor with 1 µs steps (dv-processing's generator, so
every implementation sees identical events): the worst case for the caches. After one warm-up call
each, the implementations are timed in ``--repeats`` interleaved rounds (each once per round, so they
share the machine's load); reported: the median with its min-max, and for the voxel grid the ratio to
the straightforward Numba loop within each round (median, min-max) — the headline, as absolute rates
on this shared machine vary from run to run. The bandwidth probe keeps its best run (a ceiling).
References are skipped above ``--max-reference-events``
(``np.add.at`` takes tens of seconds at 100M). Also measured: the event simulator (frames/s and
events/s on a moving 346x260 scene).

Writes ``benchmarks/<name>.json`` and ``benchmarks/<name>.md`` (``--name``, default kernels).

    python -m evpipe.tools.bench_kernels --sizes 1M,10M --resolutions 346x260
    python -m evpipe.tools.bench_kernels --sizes 10M --resolutions 346x260 --repeats 7 --name kernels_target_case
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np
from tqdm import tqdm

from evpipe.kernels import edi_integral, event_frame, simulate_events, time_surface, voxel_grid
from evpipe.tools import command_line

BYTES_PER_EVENT = 13
EDI_SAMPLES = 64
TAU_US = 50_000.0


def parse_count(text: str) -> int:
    """'1M' -> 1_000_000, '250k' -> 250_000, '5000' -> 5000."""
    text = text.strip().lower()
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an event count: {text!r} (use e.g. 1M, 250k, 5000)") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"event count must be >= 2, got {text!r}")
    return value


def parse_resolution(text: str) -> tuple[int, int]:
    """'346x260' -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a resolution: {text!r} (use WIDTHxHEIGHT, e.g. 346x260)") from None
    if not (0 < width <= 65536 and 0 < height <= 65536):
        raise argparse.ArgumentTypeError(f"resolution out of range: {text!r}")
    return width, height


def interleaved_times(fns: list[Callable[[], Any]], rounds: int) -> list[list[float]]:
    """Wall times (s) of each of ``fns``, one call each per round for ``rounds`` rounds after one warm-up
    call each (compilation, caches, page faults): result[i][r] is fns[i] in round r."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call (compilation, caches, page faults)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@nb.njit(parallel=True, cache=True)
def _parallel_sum(values: np.ndarray) -> int:
    total = 0
    for i in nb.prange(values.size):
        total += values[i]
    return total


def memory_bandwidth(gib: float = 1.0, repeats: int = 5) -> dict[str, float]:
    """Read bandwidth in bytes/s: NumPy sum (one thread) and a Numba parallel sum (all threads)."""
    values = np.ones(int(gib * 2**30) // 8, np.int64)
    numpy_s = best_time(lambda: values.sum(), repeats)
    numba_s = best_time(lambda: _parallel_sum(values), repeats)
    return {"numpy_sum_bytes_per_s": values.nbytes / numpy_s, "numba_parallel_sum_bytes_per_s": values.nbytes / numba_s}


def make_events(n: int, width: int, height: int) -> tuple[Any, dict[str, np.ndarray]]:
    """Uniform events from dv-processing's generator: (dv EventStore or None, SoA wire arrays)."""
    try:
        import dv_processing as dv
    except ImportError:
        dv = None
    if dv is not None:
        store = dv.data.generate.uniformEventsWithinTimeRange(
            0, datetime.timedelta(microseconds=n), (width, height), n, 0
        )
        packed = store.numpy()
        arrays = {
            "t": packed["timestamp"].astype(np.int64),
            "x": packed["x"].astype(np.uint16),
            "y": packed["y"].astype(np.uint16),
            "p": np.where(packed["polarity"] > 0, 1, -1).astype(np.int8),
        }
        del packed
        return store, arrays
    rng = np.random.default_rng(0)
    arrays = {
        "t": np.arange(n, dtype=np.int64),
        "x": rng.integers(0, width, n).astype(np.uint16),
        "y": rng.integers(0, height, n).astype(np.uint16),
        "p": np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8),
    }
    return None, arrays


def e2vid_voxel_grid(events: np.ndarray, num_bins: int, width: int, height: int) -> np.ndarray:
    """E2VID's ``events_to_voxel_grid`` (utils/inference_utils.py), events (N, 4) float64 [t, x, y, p]."""
    voxel = np.zeros((num_bins, height, width), np.float32).ravel()
    first_stamp, last_stamp = events[0, 0], events[-1, 0]
    delta = last_stamp - first_stamp
    if delta == 0:
        delta = 1.0
    ts = (num_bins - 1) * (events[:, 0] - first_stamp) / delta
    xs = events[:, 1].astype(np.int64)
    ys = events[:, 2].astype(np.int64)
    pols = events[:, 3].copy()
    pols[pols == 0] = -1
    tis = ts.astype(np.int64)
    dts = ts - tis
    vals_left = pols * (1.0 - dts)
    vals_right = pols * dts
    valid = tis < num_bins
    np.add.at(voxel, xs[valid] + ys[valid] * width + tis[valid] * width * height, vals_left[valid])
    valid = (tis + 1) < num_bins
    np.add.at(voxel, xs[valid] + ys[valid] * width + (tis[valid] + 1) * width * height, vals_right[valid])
    return voxel.reshape(num_bins, height, width)


@nb.njit(parallel=True, cache=True)
def straightforward_numba_voxel(t, x, y, p, bins, height, width):
    """The obvious parallel Numba loop: a private (B, H, W) grid per thread, float64 division per event."""
    n_threads = nb.get_num_threads()
    private = np.zeros((n_threads, bins, height, width), np.float32)
    n = len(t)
    t0 = t[0]
    span = max(t[-1] - t0, 1)
    for c in nb.prange(n_threads):
        for i in range(c * n // n_threads, (c + 1) * n // n_threads):
            tstar = (bins - 1) * (t[i] - t0) / span
            b = int(tstar)
            frac = tstar - b
            private[c, b, y[i], x[i]] += p[i] * (1.0 - frac)
            if b + 1 < bins:
                private[c, b + 1, y[i], x[i]] += p[i] * frac
    return private.sum(axis=0)


def candidates(store: Any, ev: dict[str, np.ndarray], bins: int, width: int, height: int, references: bool):
    """(kernel, implementation, callable) for everything measured on these events."""
    t, x, y, p = ev["t"], ev["x"], ev["y"], ev["p"]
    t_end = int(t[-1])
    runs: list[tuple[str, str, Callable[[], Any]]] = [
        ("voxel_grid", "evpipe", lambda: voxel_grid(t, x, y, p, bins, height, width)),
        ("event_frame", "evpipe", lambda: event_frame(x, y, p, height, width)),
        ("time_surface", "evpipe", lambda: time_surface(t, x, y, p, height, width, t_end, TAU_US)),
        (
            "edi_integral",
            "evpipe",
            lambda: edi_integral(t, x, y, p, 0.2, int(t[0]), t_end + 1, EDI_SAMPLES, height, width),
        ),
        ("voxel_grid", "straightforward numba", lambda: straightforward_numba_voxel(t, x, y, p, bins, height, width)),
    ]
    if store is not None:
        import dv_processing as dv

        def dv_frame(accumulator: Any) -> Callable[[], Any]:
            def run() -> Any:
                accumulator.accept(store)
                return accumulator.generateFrame()

            return run

        runs.append(("event_frame", "dv Accumulator", dv_frame(dv.Accumulator((width, height)))))
        runs.append(("event_frame", "dv EdgeMapAccumulator", dv_frame(dv.EdgeMapAccumulator((width, height)))))
    if references:
        as_e2vid = np.stack([t.astype(np.float64), x, y, (p > 0).astype(np.float64)], axis=1)
        runs.append(("voxel_grid", "E2VID numpy (np.add.at)", lambda: e2vid_voxel_grid(as_e2vid, bins, width, height)))
        try:
            import tonic.functional as tonic_functional
        except ImportError:
            tonic_functional = None
        if tonic_functional is not None:
            structured = np.empty(len(t), [("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
            structured["x"], structured["y"], structured["t"], structured["p"] = x, y, t, p
            runs.append(
                (
                    "voxel_grid",
                    "tonic to_voxel_grid_numpy",
                    lambda: tonic_functional.to_voxel_grid_numpy(structured, (width, height, 2), bins),
                )
            )
    return runs


def bench_simulator(repeats: int) -> dict[str, Any]:
    """ESIM-style simulator on a 346x260 textured scene moving 1 px per frame, 20 frames."""
    from skimage import data, transform

    scene = transform.resize(data.camera(), (300, 400), anti_aliasing=True)
    frames = np.stack([scene[20:280, k : k + 346] for k in range(21)])
    times = np.arange(21, dtype=np.int64) * 1000
    n_events = len(simulate_events(frames, times, seed=0))
    seconds = float(np.median(interleaved_times([lambda: simulate_events(frames, times, seed=0)], repeats)[0]))
    return {
        "kernel": "simulate_events",
        "implementation": "evpipe",
        "resolution": "346x260",
        "frames": 20,
        "events": n_events,
        "seconds": seconds,
        "frames_per_s": 20 / seconds,
        "events_per_s": n_events / seconds,
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "numba_threads": nb.get_num_threads(),
        "numba_threading_layer": None,  # filled after the first parallel call
        "python": platform.python_version(),
        "numba": nb.__version__,
        "numpy": np.__version__,
    }


def write_markdown(report: dict[str, Any], path: Path) -> None:
    bw = report["bandwidth"]
    limit = max(bw.values())
    lines = [
        "# Kernel benchmark (CPU)",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['logical_cpus']} logical CPUs, "
        f"Numba {report['machine']['numba']} with {report['machine']['numba_threads']} threads "
        f"({report['machine']['numba_threading_layer']}). Run: {report['date']}, "
        f"`{report['command']}`, total {report['total_seconds']:.0f} s.",
        "",
        f"Memory-read bandwidth, same run: NumPy sum {bw['numpy_sum_bytes_per_s'] / 1e9:.1f} GB/s (1 thread), "
        f"Numba parallel sum {bw['numba_parallel_sum_bytes_per_s'] / 1e9:.1f} GB/s. "
        f"'% of bandwidth' = events/s x {BYTES_PER_EVENT} B / {limit / 1e9:.1f} GB/s.",
        "",
        "Events are uniform over the sensor (worst case for caches), 1 µs apart; median [min–max] of "
        f"{report['repeats']} interleaved rounds after a warm-up; 'vs straightforward numba': the voxel grid's "
        "speed-up over the straightforward parallel Numba loop within each round, median [min–max]. The machine "
        "is shared with other jobs (1-minute load "
        f"average {report['load_average_at_start'][0]:.1f} at the start, {report['load_average_at_end'][0]:.1f} "
        f"at the end, on {report['machine']['logical_cpus']} CPUs), so figures vary between runs; ratios "
        "are within one run. " + report["notes"],
        "",
        "| events | sensor | kernel | implementation | time (ms) | M events/s | % of bandwidth "
        "| vs straightforward numba | vs E2VID numpy |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        ratio = f"{row['speedup_vs_e2vid']:.0f}x" if row.get("speedup_vs_e2vid") else ""
        vs_numba = row.get("ratio_to_straightforward_numba")
        vs_numba = f"{vs_numba['median']:.2f}x [{vs_numba['min']:.2f}–{vs_numba['max']:.2f}]" if vs_numba else ""
        rate = row["events_per_s_spread"]
        lines.append(
            f"| {row['events'] / 1e6:g}M | {row['resolution']} | {row['kernel']} | {row['implementation']} | "
            f"{row['seconds'] * 1e3:.1f} | "
            f"{rate['median'] / 1e6:.0f} [{rate['min'] / 1e6:.0f}–{rate['max'] / 1e6:.0f}] | "
            f"{100 * row['bandwidth_fraction']:.0f}% | {vs_numba} | {ratio} |"
        )
    sim = report["simulator"]
    lines += [
        "",
        f"Event simulator: {sim['frames']} frames at {sim['resolution']} -> {sim['events']} events in "
        f"{sim['seconds'] * 1e3:.0f} ms ({sim['frames_per_s']:.0f} frames/s, "
        f"{sim['events_per_s'] / 1e6:.1f} M events/s).",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M,100M", help="comma-separated event counts (default 1M,10M,100M)")
    parser.add_argument(
        "--resolutions", default="346x260,1280x720", help="comma-separated WIDTHxHEIGHT (default 346x260,1280x720)"
    )
    parser.add_argument("--bins", type=int, default=5, help="voxel grid bins (default 5)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved timed rounds per configuration, median reported (default 5)")
    parser.add_argument(
        "--max-reference-events",
        type=parse_count,
        default=parse_count("10M"),
        help="skip E2VID/tonic references above this many events (default 10M)",
    )
    parser.add_argument(
        "--evpipe-only-above",
        type=parse_count,
        default=parse_count("10M"),
        help="above this many events, measure only the evpipe voxel grid and event frame (default 10M)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks"), help="output folder (default benchmarks/)")
    parser.add_argument("--name", default="kernels", help="file stem of the JSON and Markdown (default kernels)")
    args = parser.parse_args(argv)
    try:
        sizes = [parse_count(s) for s in args.sizes.split(",")]
        resolutions = [parse_resolution(r) for r in args.resolutions.split(",")]
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    if args.bins < 1 or args.repeats < 1:
        parser.error("--bins and --repeats must be >= 1")

    started = time.perf_counter()
    report: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command_line("evpipe.tools.bench_kernels", argv),
        "machine": machine(),
        "bins": args.bins,
        "repeats": args.repeats,
        "bytes_per_event": BYTES_PER_EVENT,
        "results": [],
        "load_average_at_start": os.getloadavg(),
    }
    notes = []
    try:
        import tonic  # noqa: F401
    except ImportError:
        notes.append("tonic is NOT installed: its reference is missing (pip install tonic).")
    report["bandwidth"] = memory_bandwidth()
    report["machine"]["numba_threading_layer"] = nb.threading_layer()
    limit = max(report["bandwidth"].values())
    configs = [(n, res) for n in sizes for res in resolutions]
    for n, (width, height) in tqdm(configs, desc="configurations", unit="config"):
        store, events = make_events(n, width, height)
        runs = candidates(store, events, args.bins, width, height, references=n <= args.max_reference_events)
        if n > args.evpipe_only_above:
            keep = {("voxel_grid", "evpipe"), ("voxel_grid", "straightforward numba"), ("event_frame", "evpipe"),
                ("event_frame", "dv Accumulator")}
            runs = [r for r in runs if (r[0], r[1]) in keep]
        times = interleaved_times([fn for _, _, fn in runs], args.repeats)
        rows = []
        for (kernel, implementation, _), runs_s in zip(runs, times, strict=True):
            seconds = float(np.median(runs_s))
            rows.append(
                {
                    "kernel": kernel,
                    "implementation": implementation,
                    "events": n,
                    "resolution": f"{width}x{height}",
                    "seconds": seconds,
                    "runs_s": runs_s,
                    "events_per_s": n / seconds,
                    "events_per_s_spread": spread([n / s for s in runs_s]),
                    "bandwidth_fraction": n * BYTES_PER_EVENT / seconds / limit,
                }
            )
        e2vid = next((r for r in rows if r["implementation"].startswith("E2VID")), None)
        numba = next((r for r in rows if r["implementation"] == "straightforward numba"), None)
        for row in rows:
            if e2vid is not None and row["kernel"] == "voxel_grid":
                row["speedup_vs_e2vid"] = e2vid["seconds"] / row["seconds"]
            if numba is not None and row["kernel"] == "voxel_grid" and row is not numba:
                row["ratio_to_straightforward_numba"] = spread(
                    [b / a for a, b in zip(row["runs_s"], numba["runs_s"], strict=True)])
        report["results"] += rows
        del store, events, runs
        gc.collect()
    if any(n > args.max_reference_events for n in sizes):
        notes.append(f"E2VID/tonic references only up to {args.max_reference_events / 1e6:g}M events.")
    if any(n > args.evpipe_only_above for n in sizes):
        notes.append(
            f"Above {args.evpipe_only_above / 1e6:g}M events only the evpipe voxel grid and event frame, the "
            "straightforward Numba loop and the dv Accumulator are measured, to keep the run short."
        )
    report["simulator"] = bench_simulator(args.repeats)
    report["notes"] = " ".join(notes)
    report["total_seconds"] = time.perf_counter() - started
    report["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / f"{args.name}.md")
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
