"""The live path end to end: a real recording served through dv-processing's NetworkWriter at its real rate
(evpipe.tools.dv_server, the way a camera stream comes out of DV), consumed by evpipe's DV network sources inside
a graph: events and frames -> voxelizer (frame_sync) -> predictor (tiny checkpoint) -> metrics.

Checked: zero unexplained loss, as ledgers that must balance exactly: events (server sent = source received =
emitted = delivered to metrics, by count and checksum), frames, voxel windows (every window the anchors call
for is emitted or counted with its reason), the `latest` edge (sent = processed + dropped) and the predictor
(windows taken = predicted + unanchored + still waiting at the end). A latency report with queueing vs compute
is produced and recorded but not asserted: on a shared CPU the load decides it. At 4x the rate the `latest`
edge drops and counts while acquisition loses nothing. Both runs take over 20 s (marked slow).
"""

from __future__ import annotations

import json
import time

import pytest

from evpipe.tools.dv_server import DvServer
from tests.conftest import start_evpipe
from tests.live_support import davis_recording, free_port, processed, record, run_dir, worker_pid

# Windows the predictor holds while their anchor frame has not arrived (evpipe.nodes.predict.node._MAX_PENDING).
PREDICTOR_PENDING_MAX = 16


def live_graph(events_port: int, frames_port: int, windows_per_frame: int) -> str:
    """events + frames from two DV streams -> voxelizer -> predictor (on a `latest` edge) -> metrics."""
    source = "{{type: dv_network_source, params: {{address: 'tcp://127.0.0.1:{port}', give_up_after_s: 1.0}}}}"
    return "\n".join([
        "name: live",
        "nodes:",
        f"  events: {source.format(port=events_port)}",
        f"  frames: {source.format(port=frames_port)}",
        "  vox: {type: voxelizer, params: {mode: frame_sync, bins: 5, predictions_per_frame: "
        f"{windows_per_frame}}}}}",
        "  pred: {type: predictor, params: {threads: 1}}",
        "  metrics: {type: metrics, params: {warmup: 0}}",  # a CPU predictor makes few predictions: keep all
        "edges:",
        "  - events.events -> vox.events",
        "  - frames.frames -> vox.frames",
        "  - events.events -> metrics.in",  # the events' own ledger: count and checksum at the far end
        "  - {edge: vox.voxels -> pred.voxels, policy: latest}",
        "  - frames.frames -> pred.frames",
        "  - pred.predictions -> metrics.in",
        "",
    ])


def serve_and_run(tmp_path, duration_s: float, speed: float, windows_per_frame: int) -> tuple[dict, dict, str]:
    """Serve ``duration_s`` of sensor time (the 1.8 s recording looped) at ``speed`` x real time into the live
    graph; return (the server's summary, the graph's report, its stdout).

    The server stays connected after its stream until the graph's sources have emitted every packet it sent
    (dv-processing discards what a reader has not yet taken when its server goes away; a live camera's
    stream does not end like that), or until a minute has passed: then the ledgers show what was lost.
    """
    events_port, frames_port = free_port(), free_port()
    server = DvServer(davis_recording(), "--events", f"tcp://127.0.0.1:{events_port}",
                      "--frames", f"tcp://127.0.0.1:{frames_port}", "--wait-clients", "--hold",
                      "--duration-s", str(duration_s), "--speed", str(speed))
    config, report_path = tmp_path / "graph.yaml", tmp_path / "report.json"
    config.write_text(live_graph(events_port, frames_port, windows_per_frame))
    run = start_evpipe("run", str(config), "--report", str(report_path))
    try:
        status = run_dir(worker_pid(run, "events"))
        sent = server.summary(timeout=duration_s / speed + 120)
        deadline = time.monotonic() + 60
        while (processed(status, "events") < sent["sent"]["event_packets"]
               or processed(status, "frames") < sent["sent"]["frames"]) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.release()
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err[-3000:]
    return sent, json.loads(report_path.read_text()), out


def final(report: dict, node: str, key: str) -> dict:
    """The node's report that has ``key`` (a live source also reports link events as they happen)."""
    return next(r[key] for r in report["reports"][node] if key in r)


def check_no_unexplained_loss(sent: dict, report: dict, windows_per_frame: int) -> dict:
    """Assert every ledger of the live graph balances; return the measured outcome for RELIABILITY.md."""
    live = final(report, "events", "live")
    frames = final(report, "frames", "live")
    delivered = report["reports"]["metrics"][-1]["streams"]
    expected = (sent["sent"]["events"], sent["sent"]["events_checksum"])
    # Events: acquisition received everything, dropped nothing for any reason, and all of it arrived.
    assert live["received"]["events"] == expected[0], (sent, live["input_backlog"], live["buffer"])
    assert all(v == 0 for v in live["dropped"].values()), live["dropped"]
    assert (live["emitted"]["events"], live["emitted"]["events_checksum"]) == expected
    assert (delivered["events.events"]["events"], delivered["events.events"]["checksum"]) == expected
    assert frames["received"]["frames"] == frames["emitted"]["frames"] == sent["sent"]["frames"]
    for edge in report["edges"]:
        assert edge["lost"] == 0 and edge["rejected"] == 0, edge
        assert edge["sent"] == edge["processed"] + edge["dropped"], edge
        if edge["policy"] == "lossless":
            assert edge["dropped"] == 0, edge
    # Voxel windows: each anchor frame after the first (whose interval is unknown) calls for windows_per_frame
    # windows; each was emitted, or skipped because its frame came after its events were released, or cut at
    # the end of the stream.
    vox = report["reports"]["vox"][-1]
    assert vox["frames_in"] == sent["sent"]["frames"] and vox["anchors_without_interval"] == 1
    called_for = (vox["frames_in"] - vox["frames_ignored"] - 1) * windows_per_frame
    assert called_for == vox["windows"] + vox["windows_skipped_late"] + vox["cut_at_end"], vox
    (model_edge,) = [e for e in report["edges"] if e["edge"] == "vox.voxels->pred.voxels"]
    assert model_edge["sent"] == vox["windows"]
    # Predictor: every window it took was predicted, counted unanchored (its anchor frame aged out of the
    # predictor's history while the window waited), or is still waiting for its frame at the end.
    predictor = report["reports"]["pred"][-1]
    waiting = model_edge["processed"] - predictor["predictions"] - predictor["unanchored"]
    assert 0 <= waiting <= PREDICTOR_PENDING_MAX, (model_edge, predictor)
    assert predictor["frames"] == sent["sent"]["frames"]
    assert delivered["pred.predictions"]["messages"] == predictor["predictions"] > 0
    latency = report["latency"]
    return {"events_sent": expected[0], "events_received": live["received"]["events"],
            "events_delivered": delivered["events.events"]["events"], "source_dropped": live["dropped"],
            "frames_sent": sent["sent"]["frames"], "server_wall_s": sent["wall_s"], "speed": sent["speed"],
            "input_backlog": live["input_backlog"], "voxelizer": vox, "model_edge": model_edge, "predictor": predictor,
            "predictor_windows_waiting_at_end": waiting, "edges": report["edges"],
            "arrival_lag_ms": live["arrival_lag_ms"], "source_buffer_wait_ms": live["buffer"]["wait_ms"],
            "latency": {"paths": {p: {k: s[k] for k in ("count", "p50", "p90", "p99", "max") if k in s}
                                  for p, s in latency["paths"].items()},
                        "nodes": latency["nodes"]}}


@pytest.mark.slow
def test_live_stream_30_s_at_real_rate_loses_nothing(tmp_path):
    sent, report, stdout = serve_and_run(tmp_path, duration_s=30.0, speed=1.0, windows_per_frame=2)
    outcome = check_no_unexplained_loss(sent, report, windows_per_frame=2)
    assert sent["wall_s"] >= 29.9 and sent["sent"]["events"] > 900_000  # 30 s at the recording's real rate
    # The latency report exists, per path and per node (queueing vs compute); its values are load-dependent.
    paths, nodes = report["latency"]["paths"], report["latency"]["nodes"]
    assert paths["events -> metrics"]["count"] == report["reports"]["metrics"][-1]["streams"]["events.events"][
        "messages"]
    assert paths["events -> vox -> pred -> metrics"]["count"] > 0 and nodes["pred"]["compute"]["count"] > 0
    assert "queueing vs compute" in stdout
    record("live_real_rate_30s", outcome)


@pytest.mark.slow
def test_at_4x_the_rate_latest_edges_drop_and_count_while_acquisition_loses_nothing(tmp_path):
    # 40 s of sensor time in 10 s; 4 windows per frame at 4x: 400 windows/s, far more than a CPU model takes.
    sent, report, _ = serve_and_run(tmp_path, duration_s=40.0, speed=4.0, windows_per_frame=4)
    outcome = check_no_unexplained_loss(sent, report, windows_per_frame=4)
    assert sent["speed"] == 4.0 and sent["sent"]["events"] > 1_200_000
    (model_edge,) = [e for e in report["edges"] if e["policy"] == "latest"]
    assert model_edge["dropped"] > 0, model_edge
    record("live_4x_rate", outcome)
