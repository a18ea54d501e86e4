"""A DV network server for the live tests and benchmarks: plays a real recording through dv-processing's
``io.NetworkWriter``.

This is the path a camera stream takes through DV: one ``NetworkWriter`` per stream (events, frames,
IMU), packets written as their sensor time comes due on the wall clock (``--speed`` × real time).
The recording is looped with its timestamps shifted so time keeps increasing, and re-based onto the
Unix clock (DV's convention), so a client on this host can measure its arrival lag. It is a
separate program, independent of evpipe's sink, like DV software would be.

    python -m evpipe.tools.dv_server REC --events tcp://127.0.0.1:7000 --frames unix:///tmp/f.sock \\
        --duration-s 30 --wait-clients --summary out.json

:class:`DvServer` runs it as a subprocess (the live tests, ``tools/bench_realtime.py``).

``--idle-io`` runs dv-processing's I/O threads under Linux's ``SCHED_IDLE`` policy: in dv-processing
2.0.4 each ``NetworkWriter`` keeps a thread busy-polling while a client is connected (measured here: the
two writers of a 1x DAVIS346 stream took 1.96 cores of an idle 2-core machine, the pacing thread 0.08),
CPU that a camera's stream does not need and that would otherwise be taken from the graph under test.
Under ``SCHED_IDLE`` those threads run only on CPU nothing else wants and yield as soon as another thread
wakes; the pacing thread keeps its priority, and the clients' arrival lag (``dv_network_source``'s
report) shows whether packets still leave on time. ``--cpus`` confines the whole server to some CPUs:
with its spinning threads on one core of two, the other core idles whenever the graph leaves it idle
(``tools/bench_realtime.py`` measured what that does to a live graph's latency tail).

Prints ``ready`` once every writer listens; writes a JSON summary (what was sent, with an
order-independent checksum of the events) and exits (with ``--hold``, once stdin closes) with
``os._exit`` — destroying a writer with a connected client deadlocks dv-processing 2.0.4 (see
`evpipe.nodes.dv_io`).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import dv_processing as dv

from evpipe.nodes.dv_io import events_to_dv, frame_to_dv, free_stale_socket, imu_message, imu_to_dv, parse_address
from evpipe.nodes.sources.readers import open_recording
from evpipe.runtime.events import Events


class DvServer:
    """This program in a subprocess: started, waited for (``ready``), its JSON summary read at the end.

    With ``--hold`` among the arguments the server stays connected after its stream until `release`:
    `summary` then returns as soon as the stream has been written.
    """

    def __init__(self, recording: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "evpipe.tools.dv_server", str(recording), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.hold = "--hold" in args
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"dv_server did not start: {line!r} {self.proc.stderr.read()}")

    def summary(self, timeout: float = 120) -> dict:
        if self.hold:
            if not select.select([self.proc.stdout], [], [], timeout)[0]:
                raise AssertionError(f"dv_server wrote no summary in {timeout} s")
            return json.loads(self.proc.stdout.readline())
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def release(self) -> None:
        """Let a ``--hold`` server go: it disconnects its clients and exits."""
        self.proc.stdin.close()
        self.proc.wait(30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def make_writer(address: str, stream: dv.io.Stream, tls: list[str] | None) -> dv.io.NetworkWriter:
    where = parse_address(address)
    if where.scheme == "unix":
        free_stale_socket(where.path)
        return dv.io.NetworkWriter(dv.Path(where.path), stream)
    if tls:
        return dv.io.NetworkWriter(where.host, where.port, stream, *(dv.Path(p) for p in tls))
    return dv.io.NetworkWriter(where.host, where.port, stream)


def load(path: str, packet_us: int) -> tuple[list[tuple[int, str, object]], int, int, tuple[int, int], str]:
    """The recording as (due µs from its start, stream, evpipe item) sorted by due time; its first timestamp
    and span (µs); sensor size; camera name."""
    items: list[tuple[int, str, object]] = []
    with open_recording(path) as rec:
        t0, t1 = rec.time_range()
        events = Events.concatenate(list(rec.events()))
        bounds = range(t0, t1, packet_us)
        cuts = [int(i) for i in events.t.searchsorted(list(bounds), side="left")] + [len(events)]
        for start, lo, hi in zip(bounds, cuts[:-1], cuts[1:], strict=True):
            if hi > lo:
                items.append((min(start + packet_us, t1) - t0, "events", events[lo:hi]))
        for frame in rec.frames():
            items.append((frame.exposure_end - t0, "frames", frame))
        for imu in rec.imu():
            items.append((int(imu.t[-1]) - t0, "imu", imu))
        camera = getattr(rec, "camera", "") or "evpipe-test"
        size = rec.sensor_size
    items.sort(key=lambda item: item[0])
    return items, t0, t1 - t0, size, camera


def shifted(stream: str, item: object, shift: int) -> object:
    if stream == "events":
        return Events(item.t + shift, item.x, item.y, item.p)
    if stream == "frames":
        return type(item)(item.image, item.t + shift, item.exposure_us)
    return type(item)(item.t + shift, item.accel, item.gyro)


def idle_io_threads() -> int:
    """Put every thread of this process but the calling one under ``SCHED_IDLE``; returns how many (Linux)."""
    own = threading.get_native_id()
    lowered = 0
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) != own:
            os.sched_setscheduler(int(task.name), os.SCHED_IDLE, os.sched_param(0))
            lowered += 1
    return lowered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recording")
    for stream in ("events", "frames", "imu"):
        parser.add_argument(f"--{stream}", metavar="ADDRESS", help=f"serve the {stream} here")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--duration-s", type=float, default=0.0, help="sensor seconds to serve (0: one pass)")
    parser.add_argument("--packet-us", type=int, default=2000, help="events per packet, as a time slice")
    parser.add_argument("--wait-clients", action="store_true", help="start only when every writer has a client")
    parser.add_argument("--tls", nargs=3, metavar=("CERT", "KEY", "CA"), help="serve TCP streams over TLS")
    parser.add_argument("--summary", help="write what was sent here (JSON)")
    parser.add_argument("--idle-io", action="store_true",
                        help="run the writers' busy-polling I/O threads under SCHED_IDLE (see the module docstring)")
    parser.add_argument("--cpus", help="run the whole server on these CPUs only, e.g. 1 or 0,1 (Linux; default: "
                        "wherever the scheduler puts it)")
    parser.add_argument("--hold", action="store_true",
                        help="after the stream, print the summary and stay connected until stdin closes: "
                             "dv-processing discards what a reader has not yet taken when its server goes away")
    args = parser.parse_args()
    if args.cpus:
        try:
            cpus = {int(cpu) for cpu in args.cpus.split(",")}
            os.sched_setaffinity(0, cpus)  # before any writer exists: its threads inherit the mask
        except (ValueError, OSError) as error:
            parser.error(f"--cpus {args.cpus!r}: {error}")

    items, t0, span, size, camera = load(args.recording, args.packet_us)
    streams = {"events": dv.io.Stream.EventStream(0, "events", camera, size),
               "frames": dv.io.Stream.FrameStream(0, "frames", camera, size),
               "imu": dv.io.Stream.IMUStream(0, "imu", camera)}
    writers = {name: make_writer(getattr(args, name), streams[name], args.tls)
               for name in streams if getattr(args, name)}
    print("ready", flush=True)
    if args.wait_clients:
        # A client that stays connected for a while: evpipe's source first probes the server with a short
        # connection of its own, and packets written while no client is connected are discarded.
        deadline = time.monotonic() + 60
        connected_since = None
        while time.monotonic() < deadline:
            if all(w.getClientCount() for w in writers.values()):
                connected_since = connected_since or time.monotonic()
                if time.monotonic() - connected_since > 0.3:
                    break
            else:
                connected_since = None
            time.sleep(0.005)
    io_threads_lowered = idle_io_threads() if args.idle_io else 0
    duration_us = int(args.duration_s * 1e6) or span
    unix_shift = time.time_ns() // 1000 - t0  # the recording starts now on the Unix clock
    sent = {"event_packets": 0, "events": 0, "events_checksum": 0, "frames": 0, "imu_samples": 0}
    peak_queue = 0
    origin = time.monotonic_ns()
    loop = 0
    while loop * span < duration_us:
        for due, stream, item in items:
            due_loop = loop * span + due
            if due_loop > duration_us:
                break
            if stream not in writers:
                continue
            delay = origin + due_loop * 1000 / args.speed - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            item = shifted(stream, item, unix_shift + loop * span)
            if stream == "events":
                writers[stream].writeEvents(events_to_dv(item))
                sent["event_packets"] += 1
                sent["events"] += len(item)
                sent["events_checksum"] = (sent["events_checksum"] + item.checksum()) % (1 << 64)
            elif stream == "frames":
                writers[stream].writeFrame(frame_to_dv(item, dv.FrameSource.SENSOR))
                sent["frames"] += 1
            else:
                writers[stream].writeImu(imu_to_dv(imu_message(item.t, item.accel, item.gyro)))
                sent["imu_samples"] += len(item.t)
            peak_queue = max(peak_queue, writers[stream].getQueuedPacketCount())
        loop += 1
    wall_s = (time.monotonic_ns() - origin) / 1e9
    deadline = time.monotonic() + 10
    while any(w.getQueuedPacketCount() for w in writers.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the last packets leave the socket buffers
    summary = {"sent": sent, "wall_s": wall_s, "sensor_s": duration_us / 1e6, "speed": args.speed,
               "peak_writer_queue": peak_queue, "io_threads_sched_idle": io_threads_lowered,
               # Packets not yet handed to the socket now (its clients read too slowly to drain it in 10 s).
               "still_queued": {n: w.getQueuedPacketCount() for n, w in writers.items()},
               "clients": {n: w.getClientCount() for n, w in writers.items()}}
    if args.summary:
        with open(args.summary, "w") as file:
            json.dump(summary, file)
    print(json.dumps(summary), flush=True)
    sys.stdout.flush()
    if args.hold:
        sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
