"""Transport benchmark: events/s through a two-node lossless ipc graph vs raw ZeroMQ, same run, same bytes.

For each packet size (1k, 10k, 100k, 1M events) it measures, alternating raw, graph, raw, graph, ...
(``--repeats`` pairs, so both sides see the same machine load):

* raw ZeroMQ, the ceiling: a sender process PUSHes a pool of distinct packets drawn up front (the four
  event buffers t, x, y, p, 13 bytes/event, zero-copy, plus a 200-byte header frame) over ipc to a
  PULL socket in a receiver process laid out as the runtime's: a socket thread hands each message over
  a 16-deep queue to the consuming thread, which does nothing but stamp its arrival. (A single thread
  receiving and stamping was no ceiling: on this 2-core machine under load it measured about half the
  graph's rate at 100k-event packets, where the graph's socket thread keeps receiving while its
  consuming thread works.)
* the graph: ``event_generator`` -> ``metrics`` (fast, lossless, checksums off, the same pool of
  packets drawn up front) run by the real supervisor.

Both sides are measured identically: two spawned processes besides the parent, a high-water mark of
16 messages at each end (the runtime's default edge capacity), the first message skipped as warm-up,
and the rate taken at the receiving end as (messages - 1) / (last arrival - first arrival) on the same
monotonic clock (``runtime.wire.now_ns``). It reports the median and the spread (min-max) of each side,
graph/raw from the medians and per alternating pair, and the runtime's per-message overhead
(1/graph_rate - 1/raw_rate, from the medians, µs). Machine load is recorded at the start and the end.
Writes JSON and a Markdown table to --out:

    python -m evpipe.tools.bench_transport --out benchmarks/transport.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import tempfile
import threading
from pathlib import Path

import numpy as np
import zmq
from rich.console import Console
from tqdm import tqdm

from evpipe.runtime.graph import build_graph
from evpipe.runtime.supervisor import Supervisor
from evpipe.runtime.wire import now_ns
from evpipe.tools import command_line

SIZES = (1_000, 10_000, 100_000, 1_000_000)
HWM = 16  # the runtime's default edge capacity: its Outlet's SNDHWM and its Inbox's RCVHWM
WARMUP = 1  # messages skipped at the receiving end before timing, as the metrics sink is configured
END = b"end"


def _raw_sender(endpoint: str, n_events: int, messages: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.connect(endpoint)
    rng = np.random.default_rng(0)
    pool = [[np.sort(rng.integers(0, 1 << 40, n_events)).astype(np.int64),
             rng.integers(0, 346, n_events, dtype=np.uint16), rng.integers(0, 260, n_events, dtype=np.uint16),
             rng.choice(np.array([-1, 1], dtype=np.int8), n_events)] for _ in range(messages)]
    header = b"h" * 200  # about the size of a real msgpack header
    for bufs in pool:
        sock.send_multipart([header, *bufs], copy=False)
    sock.send(END)
    sock.close(linger=-1)
    ctx.term()


def _is_end(frames: list[zmq.Frame]) -> bool:
    return len(frames) == 1 and frames[0].bytes == END


def _raw_receiver(endpoint: str, result: mp.connection.Connection) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.bind(endpoint)
    result.send("bound")
    handoff: queue.Queue = queue.Queue(HWM)  # the runtime's mailbox holds up to the edge capacity too

    def receive() -> None:
        while True:
            frames = sock.recv_multipart(copy=False)
            handoff.put(frames)
            if _is_end(frames):
                return

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    arrivals = []
    while not _is_end(handoff.get()):
        arrivals.append(now_ns())
    receiver.join()
    sock.close()
    ctx.term()
    result.send(arrivals[WARMUP:])


def raw_zmq(n_events: int, messages: int) -> float:
    """Events/s of raw ZeroMQ over ipc, sender and receiver each in a process of their own."""
    spawn = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="evp-bench-") as tmp:
        endpoint = f"ipc://{tmp}/raw"
        parent_end, child_end = spawn.Pipe(duplex=False)
        receiver = spawn.Process(target=_raw_receiver, args=(endpoint, child_end))
        receiver.start()
        if parent_end.recv() != "bound":
            raise RuntimeError("raw receiver did not bind")
        sender = spawn.Process(target=_raw_sender, args=(endpoint, n_events, messages))
        sender.start()
        arrivals = parent_end.recv()
        sender.join()
        receiver.join()
    if sender.exitcode or receiver.exitcode or len(arrivals) != messages - WARMUP:
        raise RuntimeError(f"raw run failed: exit codes {sender.exitcode}/{receiver.exitcode}, "
                           f"{len(arrivals)} of {messages - WARMUP} timed messages")
    return (len(arrivals) - 1) * n_events / ((arrivals[-1] - arrivals[0]) / 1e9)


def graph_rate(n_events: int, messages: int) -> float:
    """Events/s through event_generator -> metrics under the real supervisor, timed at the sink."""
    doc = {
        "name": f"bench-{n_events}",
        "nodes": {
            "src": {"type": "event_generator", "params": {
                "packets": messages, "packet_events": n_events, "pace": "fast", "checksum": False,
                "pool_size": messages}},  # every packet drawn up front: the source costs nothing per message
            "sink": {"type": "metrics", "params": {"warmup": WARMUP, "checksum": False}},
        },
        "edges": [{"edge": "src.events -> sink.in", "capacity": HWM}],
    }
    result = Supervisor(build_graph(doc, "<bench_transport>"), console=Console(stderr=True, quiet=True)).run()
    if result.exit_code != 0:
        raise RuntimeError(f"graph run failed: {result.report}")
    latency = result.report["latency"]
    count = latency["messages"]
    if count != messages - WARMUP:
        raise RuntimeError(f"graph run delivered {count} of {messages - WARMUP} timed messages")
    # The sink's throughput is count / (last - first arrival); (count - 1) intervals span that time,
    # which is the raw side's formula.
    return latency["throughput_msgs_s"] * (count - 1) / count * n_events


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def measure(n_events: int, messages: int, repeats: int) -> dict:
    raw, graph = [], []
    for _ in range(repeats):  # alternate so both see the same machine load
        raw.append(raw_zmq(n_events, messages))
        graph.append(graph_rate(n_events, messages))
    raw_s, graph_s = spread(raw), spread(graph)
    pair_ratios = [g / r for g, r in zip(graph, raw, strict=True)]
    overhead_us = (n_events / graph_s["median"] - n_events / raw_s["median"]) * 1e6
    return {"packet_events": n_events, "messages": messages, "raw_zmq_events_s": raw_s, "graph_events_s": graph_s,
            "ratio_of_medians": graph_s["median"] / raw_s["median"], "ratio_per_pair": spread(pair_ratios),
            "overhead_us_per_message": overhead_us, "raw_runs": raw, "graph_runs": graph}


def markdown(result: dict) -> str:
    lines = ["# Transport benchmark", "",
             f"Written by `{result['command']}` on {result['machine']['cpu_count']} cores shared with other jobs "
             f"(load average {result['load_average_at_start'][0]:.1f} at the start, "
             f"{result['load_average_at_end'][0]:.1f} at the end). Each cell: median over "
             f"{result['repeats']} runs [min–max]; raw and graph runs alternate, both timed the same way at the "
             "receiving end (see the tool's docstring). graph/raw: ratio of the medians, and the median "
             "[min–max] of the ratio within each alternating pair.", "",
             "| events/packet | messages | raw ZeroMQ (M ev/s) | evpipe graph (M ev/s) | graph / raw (medians) "
             "| graph / raw per pair | runtime overhead (µs/msg) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(s: dict, scale: float = 1e6, fmt: str = ".1f") -> str:
        return f"{s['median'] / scale:{fmt}} [{s['min'] / scale:{fmt}}–{s['max'] / scale:{fmt}}]"

    for r in result["rows"]:
        lines.append(f"| {r['packet_events']:,} | {r['messages']:,} | {cell(r['raw_zmq_events_s'])} "
                     f"| {cell(r['graph_events_s'])} | {r['ratio_of_medians']:.2f} "
                     f"| {cell(r['ratio_per_pair'], 1, '.2f')} | {r['overhead_us_per_message']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="events per packet")
    parser.add_argument("--events", type=float, default=1e8,
                        help="events per measurement (per size); both senders hold them all in memory")
    parser.add_argument("--max-messages", type=int, default=20_000, help="cap on messages per measurement")
    parser.add_argument("--min-messages", type=int, default=100, help="floor on messages per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="alternating raw/graph pairs per size")
    parser.add_argument("--out", default="benchmarks/transport.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    load_start = os.getloadavg()
    rows = []
    for n in tqdm(args.sizes, desc="packet sizes"):
        rows.append(measure(n, int(max(args.min_messages, min(args.max_messages, args.events // n))), args.repeats))
    result = {"benchmark": "transport", "machine": {"cpu_count": mp.cpu_count(), "platform": platform.platform()},
              "command": command_line("evpipe.tools.bench_transport", argv), "repeats": args.repeats,
              "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
