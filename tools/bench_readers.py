"""Benchmark: how fast do the ROS bag readers deliver events, against the EVT 3.0 ``.raw`` reader on the same events?

    python -m evpipe.tools.bench_readers                 # the real bags in ../shared/data/ros_event_camera
    python -m evpipe.tools.bench_readers --repeats 9

The reference is the bag's own payload — the camera's EVT 3.0 words, concatenated — as a Prophesee ``.raw``
file, read by the ``.raw`` reader. Beside it: the real ROS 1 bag and ROS 2 sqlite3 bag (``EventPacket``,
``evt3``), and the same events written by the ``rosbag`` sink as a ROS 2 mcap bag in each ``events_as``
(``evt3`` re-encoded, ``mono``, ``dvs``) and a ROS 1 bag of ``dvs_msgs/EventArray``. Each run opens the file
and reads every event (``Recording.events()``, the checks included), as ``evpipe info`` and ``replay`` do;
the runs of all files are interleaved so load changes hit them alike. Reported per file: events/s at the
median run time (p99 and max of the run times beside it, their spread as min..max), and the ratio to the
reference. Writes ``benchmarks/readers.json`` and ``benchmarks/readers.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.nodes.sinks.rosbag import RosbagRecorder
from evpipe.nodes.sources.readers import open_recording
from evpipe.runtime.events import Events
from evpipe.runtime.wire import Message
from evpipe.tools import command_line

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ros_event_camera"
OUT = Path(__file__).resolve().parents[1] / "benchmarks"
REFERENCE = "EVT 3.0 .raw (the bag's payload)"


def raw_from_bag(bag: Path, out: Path) -> Path:
    """The bag's EventPacket payloads, concatenated, as an EVT 3.0 ``.raw`` file."""
    with open_recording(bag) as rec:
        topic = rec.selected["events"]
        width, height = rec.sensor_size
        payload = b"".join(bytes(np.asarray(m.events, np.uint8)) for _, _, m in rec._messages(topic) if m)
    out.write_bytes(f"% evt 3.0\n% geometry {width}x{height}\n".encode() + payload)
    return out


def sink_bag(events: Events, size: tuple[int, int], path: Path, params: dict) -> Path:
    node = RosbagRecorder("bag", {"path": str(path), **params})
    node.attach_reporter(lambda report: None)
    node.start()
    for i in range(0, len(events), 1000):  # about the real bags' packet size (664 events per message)
        node.process("events", Message.from_events(events[i:i + 1000], width=size[0], height=size[1]))
    node.stop()
    return path


def read_seconds(path: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    with open_recording(path) as rec:
        n = sum(len(packet) for packet in rec.events())
    return time.perf_counter() - t0, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with test_events_1.bag and test_events_1/")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per file (after one warm-up run)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    load_start = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        ros1 = args.data / "test_events_1.bag"
        with open_recording(ros1) as rec:
            events = Events.concatenate(list(rec.events()))
            size = rec.sensor_size
        shifted = Events(events.t - events.t[0], events.x, events.y, events.p)  # the sink's evt3 starts at 0
        files = {
            REFERENCE: raw_from_bag(ros1, tmp_path / "payload.raw"),
            "ROS 1 bag, EventPacket evt3 (real)": ros1,
            "ROS 2 bag sqlite3, EventPacket evt3 (real)": args.data / "test_events_1",
            "ROS 2 bag mcap, EventPacket evt3 (sink)": sink_bag(shifted, size, tmp_path / "evt3", {}),
            "ROS 2 bag mcap, EventPacket mono (sink)": sink_bag(events, size, tmp_path / "mono", {"events_as": "mono"}),
            "ROS 2 bag mcap, dvs_msgs/EventArray (sink)": sink_bag(events, size, tmp_path / "dvs2",
                                                                   {"events_as": "dvs"}),
            "ROS 1 bag, dvs_msgs/EventArray (sink)": sink_bag(events, size, tmp_path / "dvs1.bag",
                                                              {"format": "ros1", "events_as": "dvs"}),
        }
        times: dict[str, list[float]] = {name: [] for name in files}
        counts = {}
        for name, path in files.items():  # warm-up: Numba caches, the OS page cache
            counts[name] = read_seconds(path)[1]
        for _ in range(args.repeats):
            for name, path in files.items():
                times[name].append(read_seconds(path)[0])
    load_end = [round(v, 2) for v in os.getloadavg()]
    rows = {}
    for name, runs in times.items():
        runs_arr = np.asarray(runs)
        median = float(np.median(runs_arr))
        rows[name] = {"events": counts[name], "runs_s": runs, "median_s": median,
                      "p99_s": float(np.percentile(runs_arr, 99)), "max_s": float(runs_arr.max()),
                      "min_s": float(runs_arr.min()), "events_per_s_median": counts[name] / median}
    reference = rows[REFERENCE]["events_per_s_median"]
    for row in rows.values():
        row["speed_vs_reference"] = row["events_per_s_median"] / reference
    result = {"command": command_line("evpipe.tools.bench_readers", argv), "repeats": args.repeats,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_average": load_start,
              "load_average_end": load_end, "reference": REFERENCE, "files": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "readers.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "readers.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Reader throughput: ROS bags against the EVT 3.0 .raw reader",
        "",
        "The same 343,474 events (the real Prophesee bags of `ros_event_camera`, 2.08 s): open the file and read "
        "every event with `Recording.events()`, checks included. Reference: the bags' own EVT 3.0 payload as a "
        f".raw file. {result['repeats']} timed runs per file after a warm-up, all files interleaved. Machine: "
        f"{result['machine']}, load average {result['load_average']} at the start, {result['load_average_end']} "
        f"at the end (the machine is shared). Command: `{result['command']}`.",
        "",
        "| file | events | Mevents/s (median run) | p50 ms | p99 ms | max ms | spread (min..max) ms | vs .raw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["files"].items():
        lines.append(f"| {name} | {row['events']:,} | {row['events_per_s_median'] / 1e6:.2f} | "
                     f"{row['median_s'] * 1e3:.1f} | {row['p99_s'] * 1e3:.1f} | {row['max_s'] * 1e3:.1f} | "
                     f"{row['min_s'] * 1e3:.1f}..{row['max_s'] * 1e3:.1f} | {row['speed_vs_reference']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
