"""Transport benchmark: events/s through a two-node lossless ipc graph vs raw ZeroMQ, same run, same bytes.

For each packet size (1k, 10k, 100k, 1M events) it measures

* raw ZeroMQ: one process PUSHes the same four buffers (t, x, y, p: 13 bytes/event) plus a header
  frame over ipc to a PULL socket in another process, zero-copy, as fast as it can;
* the graph: ``event_generator`` -> ``metrics`` (fast, lossless, checksums off) run by the real
  supervisor, with throughput taken from the sink's arrival times.

It reports events/s for both, their ratio, and the runtime's per-message overhead in µs
(1/graph_rate - 1/raw_rate). Writes JSON (and a Markdown table) to --out.

    python -m evpipe.tools.bench_transport --out benchmarks/transport.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
from rich.console import Console
from tqdm import tqdm

from evpipe.runtime.graph import build_graph
from evpipe.runtime.supervisor import Supervisor
from evpipe.tools import command_line

SIZES = (1_000, 10_000, 100_000, 1_000_000)


def _raw_sender(endpoint: str, n_events: int, messages: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 16)
    sock.connect(endpoint)
    rng = np.random.default_rng(0)
    bufs = [np.arange(n_events, dtype=np.int64), rng.integers(0, 346, n_events, dtype=np.uint16),
            rng.integers(0, 260, n_events, dtype=np.uint16), np.ones(n_events, np.int8)]
    header = b"h" * 200  # about the size of a real msgpack header
    for _ in range(messages):
        sock.send_multipart([header, *bufs], copy=False)
    sock.send(b"end")
    sock.close(linger=-1)
    ctx.term()


def raw_zmq(n_events: int, messages: int) -> float:
    """Events/s from first to last message received over ipc, sender in another process."""
    with tempfile.TemporaryDirectory(prefix="evp-bench-") as tmp:
        endpoint = f"ipc://{tmp}/raw"
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, 16)
        sock.bind(endpoint)
        sender = mp.get_context("spawn").Process(target=_raw_sender, args=(endpoint, n_events, messages))
        sender.start()
        frames = sock.recv_multipart(copy=False)
        t0 = time.perf_counter()
        received = 1
        while True:
            frames = sock.recv_multipart(copy=False)
            if len(frames) == 1:
                break
            received += 1
        elapsed = time.perf_counter() - t0
        sender.join()
        sock.close()
        ctx.term()
    return (received - 1) * n_events / elapsed


def graph_rate(n_events: int, messages: int) -> tuple[float, dict]:
    doc = {
        "name": f"bench-{n_events}",
        "nodes": {
            "src": {"type": "event_generator", "params": {
                "packets": messages, "packet_events": n_events, "pace": "fast", "checksum": False,
                "pool_size": messages}},  # every packet drawn up front: the source costs nothing per message
            "sink": {"type": "metrics", "params": {"warmup": 1, "checksum": False}},
        },
        "edges": ["src.events -> sink.in"],
    }
    graph = build_graph(doc, "<bench_transport>")
    result = Supervisor(graph, console=Console(stderr=True, quiet=True)).run()
    if result.exit_code != 0:
        raise RuntimeError(f"graph run failed: {result.report}")
    latency = result.report["latency"]
    return latency["throughput_msgs_s"] * n_events, latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="events per packet")
    parser.add_argument("--events", type=float, default=1e8,
                        help="events per measurement (per size); the generator holds them all in memory")
    parser.add_argument("--max-messages", type=int, default=20_000, help="cap on messages per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="alternating raw/graph rounds; the best is kept")
    parser.add_argument("--out", default="benchmarks/transport.json")
    args = parser.parse_args(argv)

    rows = []
    for n in tqdm(args.sizes, desc="packet sizes"):
        messages = int(max(50, min(args.max_messages, args.events // n)))
        raw, graph = [], []
        for _ in range(args.repeats):  # alternate so both see the same machine load
            raw.append(raw_zmq(n, messages))
            graph.append(graph_rate(n, messages)[0])
        raw_best, graph_best = max(raw), max(graph)
        overhead_us = (1 / (graph_best / n) - 1 / (raw_best / n)) * 1e6
        rows.append({"packet_events": n, "messages": messages, "raw_zmq_events_s": raw_best,
                     "graph_events_s": graph_best, "ratio": graph_best / raw_best,
                     "overhead_us_per_message": overhead_us, "raw_runs": raw, "graph_runs": graph})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "transport", "machine": {"cpu_count": mp.cpu_count(), "platform": platform.platform()},
              "command": command_line("evpipe.tools.bench_transport", argv), "rows": rows}
    out.write_text(json.dumps(result, indent=1))
    lines = ["| events/packet | raw ZeroMQ (M ev/s) | evpipe graph (M ev/s) | graph / raw "
             "| runtime overhead (µs/msg) |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['packet_events']:,} | {r['raw_zmq_events_s'] / 1e6:.1f} | {r['graph_events_s'] / 1e6:.1f} "
                     f"| {r['ratio']:.2f} | {r['overhead_us_per_message']:.1f} |")
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(f"# Transport benchmark\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
