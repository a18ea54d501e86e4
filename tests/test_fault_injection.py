"""Fault injection on live graphs: each fault with its expected outcome asserted.

Faults: kill -9 of a source, a transform, a sink and a recorder mid-stream (restarted, counted, nothing
already accepted lost); a stalled consumer (acquisition goes on, overflow counted, memory bounded); a source
whose server dies (reported, reconnected with backoff); a recorder whose disk fills up (the failure is
reported, the file stays readable); a corrupt packet in a recording (counted and skipped, or one clear error).
tests/test_runtime_graphs.py has the runtime-level cases (transform kill with exact queue loss, malformed
messages, the latest policy); these are the live-pipeline ones. Each outcome is recorded for
benchmarks/RELIABILITY.md when EVPIPE_RELIABILITY_OUT is set.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from evpipe.nodes.sources.readers import open_recording
from evpipe.nodes.sources.replay import Replay
from evpipe.runtime.node import NodeError
from evpipe.tools.dv_server import DvServer
from tests.conftest import TESTS, run_graph
from tests.live_support import davis_recording, free_port, record, wait_until_processed, worker_pid


def run_killing(tmp_path: Path, text: str, victim: str, flowing: tuple[str, int]) -> tuple[dict, str]:
    """Run a graph, kill -9 ``victim``'s worker once node ``flowing[0]`` has processed ``flowing[1]`` messages;
    return (report, stderr)."""
    config = tmp_path / "graph.yaml"
    config.write_text(text)
    report_path = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.Popen([sys.executable, "-m", "evpipe.runtime.cli", "run", str(config), "--report",
                            str(report_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    pid = worker_pid(run, victim)
    wait_until_processed(pid, *flowing)
    os.kill(pid, signal.SIGKILL)
    _, err = run.communicate(timeout=180)
    assert run.returncode == 0, err[-3000:]
    return json.loads(report_path.read_text()), err


def final(report: dict, node: str, key: str) -> list[dict]:
    return [r[key] for r in report["reports"].get(node, []) if key in r]


LIVE = """\
name: fault-{victim}
settings: {{restart_backoff_s: 0.2}}
nodes:
  fi_events: {{type: dv_network_source, params: {{address: "tcp://127.0.0.1:{port}", give_up_after_s: 1.5,
              backoff_s: 0.05, backoff_max_s: 0.2}}}}
  fi_vox: {{type: voxelizer, params: {{mode: window, window_us: 10000, bins: 5}}}}
  fi_metrics: {{type: metrics, params: {{warmup: 0}}}}
  fi_rec: {{type: aedat4, params: {{path: "{rec}", sensor_size: [346, 260]}}}}
edges:
  - fi_events.events -> fi_vox.events
  - fi_events.events -> fi_metrics.in
  - fi_events.events -> fi_rec.events
  - {{edge: fi_vox.voxels -> fi_metrics.in, policy: latest}}
"""


# About 15 s each on a shared 2-core machine, so slow; the quick run has the runtime-level kill -9 tests
# (tests/test_runtime_graphs.py).
@pytest.mark.slow
@pytest.mark.parametrize("victim", ["fi_events", "fi_vox", "fi_metrics", "fi_rec"])
def test_kill_9_of_each_node_kind_mid_stream(tmp_path, victim):
    """The victim is restarted and its restart counted; loss stays on the victim's own edges (messages its dead
    process held, received or queued to send) and every edge's ledger is exact; other edges lose nothing."""
    port = free_port()
    server = DvServer(davis_recording(), "--events", f"tcp://127.0.0.1:{port}", "--wait-clients",
                      "--duration-s", "10", "--speed", "2")
    rec = tmp_path / "rec.aedat4"
    try:
        # Mid-stream: the source has emitted 300 packets (0.6 s of the recording) when the victim dies.
        report, err = run_killing(tmp_path, LIVE.format(victim=victim, port=port, rec=rec), victim,
                                  flowing=("fi_events", 300))
    finally:
        sent = server.summary()["sent"]
    assert report["completed"] and report["nodes"][victim]["restarts"] == 1
    assert -9 in report["nodes"][victim]["exit_codes"] and "restart 1/3" in err
    for edge in report["edges"]:
        ends = {side.split(".")[0] for side in edge["edge"].split("->")}
        if victim not in ends:  # only the victim's pipes (what its process held, in or out) may lose
            assert edge["lost"] == 0, edge
        assert edge["sent"] == edge["processed"] + edge["dropped"] + edge["rejected"] + edge["lost"]
    into_metrics = next(e for e in report["edges"] if e["edge"] == "fi_events.events->fi_metrics.in")
    delivered = sum(streams["fi_events.events"]["events"] for streams in final(report, "fi_metrics", "streams"))
    outcome = {"fault": f"kill -9 {victim}", "restarts": report["nodes"][victim]["restarts"],
               "exit_codes": report["nodes"][victim]["exit_codes"], "events_sent_by_server": sent["events"],
               "events_delivered_to_metrics": delivered, "edges": report["edges"]}
    if victim == "fi_events":
        # The server kept writing while no client was connected (DV discards those) and the dead source's
        # buffer died with it: that is the acquisition gap, bounded by the outage. The restarted source
        # reconnected and everything it emitted arrived.
        (live,) = final(report, "fi_events", "live")  # only the second incarnation reports
        assert live["link"]["connects"] == 1
        assert 0 < delivered < sent["events"]
        delivered_messages = sum(s["fi_events.events"]["messages"] for s in final(report, "fi_metrics", "streams"))
        assert delivered_messages == into_metrics["processed"] and live["emitted"]["messages"] <= into_metrics["sent"]
        outcome["events_missed_during_restart"] = sent["events"] - delivered
    else:
        # Acquisition lost nothing: the metrics ledger (two incarnations when it is the victim) plus what
        # its dead incarnation held equals what the server sent.
        (live,) = final(report, "fi_events", "live")
        assert live["received"]["events"] == sent["events"] == live["emitted"]["events"]
        if victim != "fi_metrics":
            assert delivered == sent["events"]
    if victim == "fi_rec":
        with open_recording(rec) as recording:  # the restarted recorder's file is complete and readable
            written = sum(len(e) for e in recording.events())
        (recorded,) = final(report, "fi_rec", "events")  # what the restarted recorder reports writing
        assert written == recorded > 0
        outcome["events_in_file_after_restart"] = written
    record(f"kill9_{victim}", outcome)


STALL = """\
name: fault-stall
nodes:
  fi_events: {{type: dv_network_source, params: {{address: "tcp://127.0.0.1:{port}", give_up_after_s: 1.0,
              max_buffer_mb: 0.1}}}}
  fi_slow: {{type: "graph_nodes:SlowSink", params: {{delay_ms: 20}}}}
edges:
  - fi_events.events -> fi_slow.in
"""


def test_a_stalled_consumer_on_a_lossless_edge_never_stalls_acquisition(tmp_path):
    """The consumer takes 20 ms per packet (4000 packets/s arrive): the lossless edge backs up into the source,
    whose acquisition keeps reading the stream; its bounded buffer overflows and counts what it drops."""
    port = free_port()
    server = DvServer(davis_recording(), "--events", f"tcp://127.0.0.1:{port}", "--wait-clients", "--speed", "8")
    proc, report = run_graph(tmp_path, STALL.format(port=port))
    sent = server.summary()["sent"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    (live,) = final(report, "fi_events", "live")
    (edge,) = report["edges"]
    assert live["received"]["events"] == sent["events"]  # acquisition read everything
    dropped = live["dropped"]["overflow_events"]
    assert dropped > 0 and live["buffer"]["peak_bytes"] <= live["buffer"]["limit_bytes"] + 10_000
    assert live["emitted"]["events"] + dropped == sent["events"]
    assert edge["lost"] == 0 and edge["processed"] == edge["sent"] == live["emitted"]["messages"]
    record("stalled_consumer", {"fault": "stalled consumer (20 ms/packet, lossless edge, 8x rate)",
                                "events_sent": sent["events"], "received": live["received"]["events"],
                                "emitted": live["emitted"]["events"], "dropped_overflow": dropped,
                                "buffer": live["buffer"], "edge": edge})


DISCONNECT = """\
name: fault-disconnect
nodes:
  fi_events: {{type: dv_network_source, params: {{address: "unix://{sock}", give_up_after_s: 10.0,
              backoff_s: 0.05, backoff_max_s: 0.5}}}}
  fi_metrics: {{type: metrics, params: {{warmup: 0}}}}
edges:
  - fi_events.events -> fi_metrics.in
"""


@pytest.mark.slow  # about 20 s: two server lifetimes and the backoff between them
def test_a_source_whose_server_dies_reports_it_and_reconnects_with_backoff(tmp_path):
    sock = tmp_path / "events.sock"
    recording = davis_recording()
    first = DvServer(recording, "--events", f"unix://{sock}", "--wait-clients", "--duration-s", "30")
    config = tmp_path / "graph.yaml"
    config.write_text(DISCONNECT.format(sock=sock))
    run = subprocess.Popen([sys.executable, "-m", "evpipe.runtime.cli", "run", str(config), "--report",
                            str(tmp_path / "report.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Mid-stream (the source has emitted 500 packets, 1 s of the stream), however long the graph took to start.
    wait_until_processed(worker_pid(run, "fi_events"), "fi_events", 500)
    first.kill()  # kill -9 mid-stream: no goodbye; a stale socket file stays behind
    time.sleep(1.0)
    second = DvServer(recording, "--events", f"unix://{sock}", "--wait-clients", "--speed", "2")
    sent_second = second.summary()["sent"]
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    (live,) = final(report, "fi_events", "live")
    link = live["link"]
    assert link["connects"] == 2 and link["disconnects"][0]["reconnected_after_s"] > 0.9
    assert link["failed_attempts"] >= 3  # backoff retries while no server listened
    assert "disconnected" in err and "reconnected after" in err
    assert live["received"]["events"] >= sent_second["events"]  # all of the second server's stream, plus the first's
    assert live["emitted"]["events"] == live["received"]["events"]
    assert report["edges"][0]["lost"] == 0
    record("server_killed", {"fault": "DV server killed -9 mid-stream, restarted 1 s later", "link": link,
                             "events_received": live["received"]["events"],
                             "second_server_sent": sent_second["events"]})


RECORD = """\
name: fault-disk
settings: {{max_restarts: 2, restart_backoff_s: 0.2}}
nodes:
  fi_src: {{type: event_generator, params: {{packets: 150, packet_events: 10000, pace: realtime,
            event_rate: 2.0e+6}}}}
  fi_rec: {{type: aedat4, params: {{path: "{path}", sensor_size: [346, 260]}}}}
edges:
  - fi_src.events -> fi_rec.events
"""
FILE_LIMIT = 2_000_000  # bytes: a disk that fills after about a quarter of the stream


def test_a_recorder_whose_disk_fills_up(tmp_path):
    """A full disk is simulated by RLIMIT_FSIZE on the graph (the same failing write(2): EFBIG instead of
    ENOSPC). Expected: the failure is reported (the recorder's exit, its restarts), every message is
    accounted for, and the file left on disk is readable."""
    path = tmp_path / "out.aedat4"
    config = tmp_path / "graph.yaml"
    config.write_text(RECORD.format(path=path))

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))

    proc = subprocess.run([sys.executable, "-m", "evpipe.runtime.cli", "run", str(config), "--report",
                           str(tmp_path / "report.json")], capture_output=True, text=True, timeout=180,
                          preexec_fn=limit_file_size)
    report = json.loads((tmp_path / "report.json").read_text())
    rec = report["nodes"]["fi_rec"]
    assert rec["restarts"] >= 1 and -signal.SIGABRT in rec["exit_codes"]  # dv's writer thread aborts the process
    assert "File too large" in proc.stdout + proc.stderr  # the cause is in the log
    (edge,) = report["edges"]
    assert edge["sent"] == 150 and edge["lost"] > 0
    assert edge["sent"] == edge["processed"] + edge["lost"]
    assert path.stat().st_size <= FILE_LIMIT
    with warnings.catch_warnings(), open_recording(path) as recording:
        warnings.simplefilter("ignore")
        times = np.concatenate([e.t for e in recording.events()])
    assert len(times) > 0 and np.all(np.diff(times) >= 0)  # readable, in order, up to the fault
    record("disk_full", {"fault": "recorder disk full (RLIMIT_FSIZE 2 MB)", "graph_exit": proc.returncode,
                         "recorder": rec, "edge": edge, "events_readable_in_file": len(times),
                         "file_t_range_us": [int(times[0]), int(times[-1])]})


# Inside an event packet of the DAVIS346 recording (found by scanning; frames fill most of the file).
CORRUPT_AT = 651_926


def corrupt_copy(tmp_path: Path) -> Path:
    data = bytearray(davis_recording().read_bytes())
    for k in range(8):
        data[CORRUPT_AT + k] ^= 0xA5
    path = tmp_path / "corrupt.aedat4"
    path.write_bytes(data)
    return path


def test_a_corrupt_packet_in_a_recording_is_counted_and_skipped(tmp_path):
    path = corrupt_copy(tmp_path)
    text = f"""\
name: fault-corrupt
nodes:
  fi_replay: {{type: replay, params: {{path: "{path}", on_error: skip, pace: fast}}}}
  fi_metrics: {{type: metrics, params: {{warmup: 0}}}}
edges:
  - fi_replay.events -> fi_metrics.in
  - fi_replay.frames -> fi_metrics.in
"""
    proc, report = run_graph(tmp_path, text)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replay = report["reports"]["fi_replay"][-1]
    issues = replay["issues"]
    assert issues.get("out_of_sensor", 0) + issues.get("non_monotonic", 0) > 0  # the damage was found
    delivered = report["reports"]["fi_metrics"][-1]["streams"]
    assert delivered["fi_replay.frames"]["messages"] == 45  # the undamaged streams are complete
    assert delivered["fi_replay.events"]["events"] == replay["produced"]["events"] == 59_684 - sum(issues.values())
    assert all(e["lost"] == 0 for e in report["edges"])
    record("corrupt_packet", {"fault": "8 bytes flipped inside an event packet (AEDAT4, zstd)",
                              "issues": issues, "events_delivered": delivered["fi_replay.events"]["events"],
                              "frames_delivered": delivered["fi_replay.frames"]["messages"]})


def test_a_corrupt_packet_with_on_error_raise_stops_with_one_clear_line(tmp_path):
    path = corrupt_copy(tmp_path)
    node = Replay("fi_replay", {"path": str(path), "pace": "fast"})
    node.start()
    with pytest.raises(NodeError, match=rf"fi_replay: {path} at t_us \d+: .*(outside|back in time)"):
        for _ in node.produce():
            pass
