"""Real multi-process graphs: lossless delivery proven by counts and checksums, restarts, bad input, Ctrl-C,
and the latest policy under a slow consumer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from evpipe.runtime.counters import Counters
from evpipe.runtime.events import Events
from evpipe.runtime.graph import ConfigError, load_graph
from evpipe.runtime.wire import Message, encode
from tests.conftest import TESTS, evpipe, run_graph, start_evpipe
from tests.live_support import process_environ, record

THREE_NODES = """\
name: three
settings: {{transport: {transport}}}
nodes:
  src: {{type: event_generator, params: {{packets: {packets}, packet_events: {events}, pace: {pace},
        event_rate: {rate}}}}}
  filt: {{type: event_filter}}
  sink: {{type: metrics, params: {{warmup: 0}}}}
edges:
  - src.events -> filt.events
  - filt.events -> sink.in
"""


def _graph(transport="ipc", packets=60, events=5000, pace="fast", rate=1e7) -> str:
    return THREE_NODES.format(transport=transport, packets=packets, events=events, pace=pace, rate=rate)


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_lossless_three_node_graph_delivers_every_event(tmp_path, transport):
    proc, report = run_graph(tmp_path, _graph(transport))
    assert proc.returncode == 0, proc.stderr
    produced = report["reports"]["src"][0]["produced"]
    ledger = report["reports"]["sink"][0]["streams"]["filt.events"]
    assert produced["events"] == 60 * 5000
    assert (ledger["events"], ledger["checksum"], ledger["messages"]) == (
        produced["events"], produced["checksum"], produced["messages"])
    for edge in report["edges"]:
        assert (edge["sent"], edge["processed"], edge["lost"], edge["dropped"]) == (60, 60, 0, 0)
    assert report["latency"]["paths"]["src -> filt -> sink"]["count"] == 60
    assert "End-to-end latency" in proc.stdout and "src -> filt -> sink" in proc.stdout


def _pids_of(node: str, parent: int | None = None) -> list[int]:
    """Worker processes of ``node``; with ``parent``, only the children of that supervisor (other graphs may run
    on the machine with nodes of the same name)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                status = (entry / "status").read_text() if parent is not None else ""
            except OSError:
                continue
            if b"evpipe.runtime.worker" in cmd and node.encode() in cmd and (
                    parent is None or f"PPid:\t{parent}\n" in status):
                pids.append(int(entry.name))
    return pids


def _run_and_kill(tmp_path: Path, text: str, victim: str) -> tuple[subprocess.CompletedProcess, str, dict]:
    config = tmp_path / "graph.yaml"
    config.write_text(text)
    report_path = tmp_path / "report.json"
    run = start_evpipe("run", str(config), "--report", str(report_path))
    deadline = time.monotonic() + 30
    while not _pids_of(victim, run.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # mid-stream
    (pid,) = _pids_of(victim, run.pid)
    # OpenMP waits passively in workers unless the user's environment chose otherwise (runtime/supervisor.py)
    assert process_environ(pid)["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    os.kill(pid, signal.SIGKILL)
    _, err = run.communicate(timeout=90)
    assert run.returncode == 0, err
    return run, err, json.loads(report_path.read_text())


def test_killed_transform_is_restarted_and_every_message_is_delivered_or_counted_lost(tmp_path):
    _, err, report = _run_and_kill(tmp_path, _graph(packets=300, events=2000, pace="realtime", rate=2e5), "filt")
    assert report["completed"] and report["nodes"]["filt"]["restarts"] == 1
    assert -9 in report["nodes"]["filt"]["exit_codes"]
    produced = report["reports"]["src"][0]["produced"]["messages"]
    delivered = report["reports"]["sink"][0]["streams"]["filt.events"]["messages"]
    assert delivered + sum(e["lost"] for e in report["edges"]) == produced
    assert "restart 1/3" in err


def test_loss_in_a_killed_nodes_queue_is_counted_exactly(tmp_path):
    text = """\
nodes:
  src: {type: event_generator, params: {packets: 300, packet_events: 100, pace: realtime, event_rate: 2.0e+4}}
  slow: {type: "graph_nodes:SlowSink", params: {delay_ms: 15}}
edges:
  - src.events -> slow.in
"""
    _, _, report = _run_and_kill(tmp_path, text, "slow")
    (edge,) = report["edges"]
    assert report["completed"] and report["nodes"]["slow"]["restarts"] == 1
    assert edge["sent"] == 300
    # The dead incarnation's counters survive kill -9: what it processed is counted, what it held is lost.
    after_restart = len(report["reports"]["slow"][0]["seqs"])
    assert edge["processed"] > after_restart
    assert edge["lost"] > 0 and edge["processed"] + edge["lost"] == 300


def _start_worker(tmp: str, node_type: str, params: dict, limits: dict | None = None):
    """A real node process wired by hand: one input edge we can write garbage into."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp}/control")
    spec = {"name": "victim", "type": node_type, "params": params, "incarnation": 0, "control": f"ipc://{tmp}/control",
            "limits": {"max_message_bytes": 1 << 20, "max_header_bytes": 4096, "max_arrays": 16, "max_ndim": 5,
                       "max_events": 50_000, "max_hops": 64, "max_control_per_s": 20, **(limits or {})},
            "inputs": [{"id": "in-edge", "dst_port": "in", "policy": "lossless", "capacity": 16,
                        "endpoint": f"ipc://{tmp}/in"}],
            "outputs": [], "closed_edges": [], "counters": f"{tmp}/counters"}
    proc = subprocess.Popen([sys.executable, "-m", "evpipe.runtime.worker"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    return ctx, router, proc


def _recv(router, timeout_s=30.0) -> dict:
    assert router.poll(int(timeout_s * 1000)), "node did not report"
    _, payload = router.recv_multipart()
    return msgpack.unpackb(payload, raw=False)


def test_malformed_and_oversized_messages_are_rejected_and_the_node_keeps_running():
    with tempfile.TemporaryDirectory(prefix="evp-") as tmp:
        ctx, router, proc = _start_worker(tmp, "metrics", {"warmup": 0})
        assert _recv(router)["type"] == "ready"
        router.send_multipart([b"victim#0", msgpack.packb({"cmd": "start"})])
        push = ctx.socket(zmq.PUSH)
        push.connect(f"ipc://{tmp}/in")
        ev = Events.from_arrays(np.arange(100), np.zeros(100), np.zeros(100), np.ones(100))
        good = encode(Message.from_events(ev))
        bad = [
            [b"\x00not msgpack"],
            good[:-1],                                               # a buffer missing
            encode(Message.from_events(Events.from_arrays(*(np.zeros(60_000),) * 4))),   # > max_events
            [good[0], *good[1:3], b"x" * 10, good[4]],               # buffer size disagrees with header
        ]
        for frames in bad[:2]:
            push.send_multipart(frames)
        push.send_multipart(good)
        for frames in bad[2:]:
            push.send_multipart(frames)
        for _ in range(100):  # a control flood: at most max_control_per_s=20 pass, the rest are rejected
            push.send_multipart(encode(Message.control("ping")))
        push.send_multipart(good)
        time.sleep(1.0)  # let the bucket refill so the end of stream passes
        push.send_multipart(encode(Message.control("eos")))
        report = _recv(router)
        while report["type"] == "eos" or "live_latency" in report.get("data", {}):  # notices before the report
            report = _recv(router)
        assert report["type"] == "report"
        assert report["data"]["streams"][""]["events"] == 200
        timings = _recv(router)  # the node's own queueing/compute measurements, before it says done
        assert timings["type"] == "timings" and timings["data"]["messages"] == len(timings["data"]["compute_ns"]) == 2
        assert _recv(router)["type"] == "done"
        assert proc.wait(30) == 0
        counters = Counters(f"{tmp}/counters", ["in-edge"], [], create=False).snapshot()["inputs"]["in-edge"]
        assert counters["processed"] == 2
        assert 4 + 75 <= counters["rejected"] <= 4 + 80  # 4 malformed + the flood beyond the bucket
        assert "rejected message" in proc.stderr.read()
        record("malformed_and_flood", {"bad_input": "4 malformed or oversized messages and 100 control messages at "
                                       "once (max_control_per_s 20) on a node's input edge",
                                       "processed": counters["processed"], "rejected": counters["rejected"],
                                       "node_exit": proc.returncode})
        push.close()
        router.close()


def test_ctrl_c_stops_sources_drains_and_exits_zero(tmp_path):
    config = tmp_path / "graph.yaml"
    config.write_text(_graph(packets=100000, events=1000, pace="realtime", rate=1e6))
    report_path = tmp_path / "report.json"
    run = start_evpipe("run", str(config), "--report", str(report_path))
    time.sleep(4)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    report = json.loads(report_path.read_text())
    assert report["interrupted"] and report["completed"]
    produced = report["reports"]["src"][0]["produced"]
    ledger = report["reports"]["sink"][0]["streams"]["filt.events"]
    assert 0 < produced["messages"] < 100000
    assert (ledger["messages"], ledger["checksum"]) == (produced["messages"], produced["checksum"])  # drained
    assert "interrupted, drained" in out


def test_latest_edge_keeps_the_newest_and_counts_drops_under_a_slow_consumer(tmp_path):
    text = """\
nodes:
  src: {type: event_generator, params: {packets: 400, packet_events: 1000, pace: realtime, event_rate: 2.0e+5}}
  slow: {type: "graph_nodes:SlowSink", params: {delay_ms: 30}}
edges:
  - {edge: src.events -> slow.in, policy: latest}
"""
    proc, report = run_graph(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    (edge,) = report["edges"]
    seqs = report["reports"]["slow"][0]["seqs"]
    assert edge["sent"] == 400 and edge["dropped"] > 200  # 5 ms apart, 30 ms to process: most are skipped
    assert edge["processed"] == len(seqs) and edge["lost"] == 0
    assert edge["sent"] == edge["processed"] + edge["dropped"]
    assert seqs[-1] == 399  # the newest window always reaches the consumer
    # Drain-to-newest: in steady state each processed window is the newest one (30 ms / 5 ms = 6 apart).
    assert np.median(np.diff(seqs)) <= 7


def test_every_node_measures_its_compute_and_queueing_without_a_metrics_sink(tmp_path):
    text = """\
nodes:
  src: {type: event_generator, params: {packets: 30, packet_events: 100, pace: fast}}
  slow: {type: "graph_nodes:SlowSink", params: {delay_ms: 10}}
edges:
  - src.events -> slow.in
"""
    proc, report = run_graph(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    slow = report["nodes"]["slow"]
    assert slow["processed"] == slow["compute"]["count"] == slow["queue"]["count"] == 30
    assert 9.5 <= slow["compute"]["p50"] <= slow["compute"]["max"] < 200  # time.sleep(10 ms) per message
    assert slow["queue"]["max"] >= 10 * 20  # the fast source queues the later packets behind the 10 ms sleeps
    assert 20 < slow["msgs_s"] <= 100
    assert report["nodes"]["src"]["compute"]["count"] == 30 and report["nodes"]["src"]["queue"] == {"count": 0}
    out = " ".join(proc.stdout.split())  # the console wraps long lines
    assert "End-to-end latency: not measured — it needs a `metrics` sink" in out
    assert "End-to-end latency (ms)" not in out and "measured by each node" in out


def test_kind_mismatch_between_ports_is_rejected(tmp_path):
    text = """\
nodes:
  frames: {type: "graph_nodes:FrameSource"}
  filt: {type: event_filter}
edges:
  - frames.frames -> filt.events
"""
    path = tmp_path / "g.yaml"
    path.write_text(text)
    sys.path.insert(0, str(TESTS))
    try:
        with pytest.raises(ConfigError, match=r":5: edge .* kind mismatch, frames.frames sends 'frame' but "
                                              r"filt.events takes 'events'"):
            load_graph(path)
    finally:
        sys.path.remove(str(TESTS))


def test_default_graph_runs_to_completion():
    proc = evpipe("run", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "End-to-end latency" in proc.stdout and "graph completed" in proc.stdout


def test_live_status_snapshot_is_written_while_running(tmp_path):
    """The supervisor's status.json (what dashboards read) shows the graph, counters and live latency."""
    from evpipe.runtime.status import read_status

    config = tmp_path / "graph.yaml"
    config.write_text(_graph(packets=600, events=1000, pace="realtime", rate=2e5))
    run = start_evpipe("run", str(config))
    status = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and run.poll() is None:
        run_dirs = [p for p in Path(tempfile.gettempdir()).glob("evp-*") if (p / "status.json").exists()]
        snaps = [s for s in (read_status(d) for d in run_dirs) if s and s["graph"]["name"] == "three"]
        if snaps and snaps[0]["latency"]:
            status = snaps[0]
            break
        time.sleep(0.2)
    run.communicate(timeout=60)
    assert status is not None, "no live status with latency seen"
    assert status["state"] == "running" and set(status["nodes"]) == {"src", "filt", "sink"}
    assert {e["edge"] for e in status["edges"]} == {"src.events->filt.events", "filt.events->sink.in"}
    path = status["latency"]["paths"]["src -> filt -> sink"]
    assert path["count"] > 0 and path["p50"] > 0 and path["msgs_s"] > 0


def test_workers_exit_when_the_supervisor_is_killed(tmp_path):
    config = tmp_path / "graph.yaml"
    config.write_text(_graph(packets=100000, events=1000, pace="realtime", rate=1e6))
    run = start_evpipe("run", str(config))

    def children() -> list[int]:
        return _pids_of("src", run.pid) + _pids_of("filt", run.pid) + _pids_of("sink", run.pid)

    deadline = time.monotonic() + 30
    while len(children()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = children()
    assert len(workers) == 3
    os.kill(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    assert alive == [], "workers outlived their supervisor"


def test_lossless_ipc_edge_keeps_its_tail_when_the_consumer_is_behind_at_the_end(tmp_path):
    """libzmq drops what an ipc pipe holds when the sender closes while the receiver is at its high-water
    mark; the end-of-stream acknowledgement keeps the producer's sockets open until it all arrived."""
    text = """\
nodes:
  src: {type: event_generator, params: {packets: 800, packet_events: 500, pace: fast}}
  slow: {type: "graph_nodes:SlowSink", params: {delay_ms: 2}}
  sink: {type: metrics, params: {warmup: 0}}
edges:
  - src.events -> slow.in
  - src.events -> sink.in
"""
    proc, report = run_graph(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    produced = report["reports"]["src"][0]["produced"]
    assert len(report["reports"]["slow"][0]["seqs"]) == 800
    ledger = report["reports"]["sink"][0]["streams"]["src.events"]
    assert (ledger["messages"], ledger["checksum"]) == (800, produced["checksum"])
    assert all(e["lost"] == 0 and e["processed"] == 800 for e in report["edges"])
