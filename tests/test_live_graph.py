"""The live path end to end: a real recording served through dv-processing's NetworkWriter at its real rate
(tests/dv_server.py, the way a camera stream comes out of DV), consumed by evpipe's DV network sources inside
a graph: events and frames -> voxelizer (frame_sync) -> predictor -> metrics.

Checked: zero unexplained loss (server sent = source received = emitted = delivered, by count and checksum;
every edge's lost = 0), a latency report with queueing vs compute, and at 4x the rate `latest` edges drop and
count while acquisition loses nothing.
"""

from __future__ import annotations

import pytest

from tests.conftest import REPO, run_graph
from tests.live_support import DvServer, davis_recording, free_port, record

PREDICTOR_READY = (REPO / "nodes" / "predict" / "checkpoints" / "tiny" / "unet-4step.pt").is_file()


def live_graph(events_port: int, frames_port: int, consumer: str, windows_per_frame: int) -> str:
    """events + frames from DV streams -> voxelizer -> ``consumer`` (predictor or a slow test sink) -> metrics."""
    consumer_node = {
        "predictor": "pred: {type: predictor, params: {threads: 1}}",
        "slow": 'pred: {type: "graph_nodes:SlowSink", params: {delay_ms: 40}}',
        "none": "",
    }[consumer]
    edges = {
        "predictor": ["- {edge: vox.voxels -> pred.voxels, policy: latest}", "- frames.frames -> pred.frames",
                      "- pred.predictions -> metrics.in"],
        "slow": ["- {edge: vox.voxels -> pred.in, policy: latest}"],
        "none": ["- {edge: vox.voxels -> metrics.in, policy: latest}"],
    }[consumer]
    source = "{{type: dv_network_source, params: {{address: 'tcp://127.0.0.1:{port}', give_up_after_s: 1.0}}}}"
    return "\n".join([
        "name: live",
        "nodes:",
        f"  events: {source.format(port=events_port)}",
        f"  frames: {source.format(port=frames_port)}",
        "  vox: {type: voxelizer, params: {mode: frame_sync, bins: 5, predictions_per_frame: "
        f"{windows_per_frame}}}}}",
        f"  {consumer_node}" if consumer_node else "",
        "  metrics: {type: metrics, params: {warmup: 0}}",  # a CPU predictor makes few predictions: keep all
        "edges:",
        "  - events.events -> vox.events",
        "  - frames.frames -> vox.frames",
        "  - events.events -> metrics.in",  # the events' own ledger: count and checksum at the far end
        *(f"  {e}" for e in edges),
        "",
    ])


def serve_and_run(tmp_path, consumer: str, duration_s: float, speed: float,
                  windows_per_frame: int = 2) -> tuple[dict, dict, object]:
    events_port, frames_port = free_port(), free_port()
    server = DvServer(davis_recording(), "--events", f"tcp://127.0.0.1:{events_port}",
                      "--frames", f"tcp://127.0.0.1:{frames_port}", "--wait-clients",
                      "--duration-s", str(duration_s), "--speed", str(speed))
    try:
        proc, report = run_graph(tmp_path, live_graph(events_port, frames_port, consumer, windows_per_frame),
                                 timeout=duration_s / speed + 120)
    finally:
        sent = server.summary()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sent, report, proc


def final(report: dict, node: str, key: str) -> dict:
    """The node's report that has ``key`` (a live source also reports link events as they happen)."""
    return next(r[key] for r in report["reports"][node] if key in r)


def check_no_unexplained_loss(sent: dict, report: dict) -> dict:
    """Every event the server sent reached the voxelizer and the metrics sink; every edge accounts exactly."""
    live = final(report, "events", "live")
    frames = final(report, "frames", "live")
    delivered = report["reports"]["metrics"][0]["streams"]["events.events"]
    expected = (sent["sent"]["events"], sent["sent"]["events_checksum"])
    assert live["received"]["events"] == expected[0]
    assert (live["emitted"]["events"], live["emitted"]["events_checksum"]) == expected
    assert (delivered["events"], delivered["checksum"]) == expected
    assert frames["emitted"]["frames"] == sent["sent"]["frames"]
    assert all(v == 0 for v in live["dropped"].values()), live["dropped"]
    for edge in report["edges"]:
        assert edge["lost"] == 0 and edge["rejected"] == 0, edge
        if edge["policy"] == "lossless":
            assert edge["dropped"] == 0 and edge["sent"] == edge["processed"], edge
    vox = report["reports"]["vox"][-1]
    outcome = {"events_sent": expected[0], "frames_sent": sent["sent"]["frames"], "wall_s": sent["wall_s"],
               "edges": report["edges"], "arrival_lag_ms": live["arrival_lag_ms"],
               "source_buffer_wait_ms": live["buffer"]["wait_ms"], "voxelizer": vox,
               "latency": {"paths": {p: {k: s[k] for k in ("count", "p50", "p90", "p99", "max") if k in s}
                                     for p, s in report["latency"]["paths"].items()},
                           "nodes": report["latency"]["nodes"]}}
    if "pred" in report["reports"] and "predictions" in report["reports"]["pred"][-1]:
        predictor = report["reports"]["pred"][-1]
        outcome["predictor"] = predictor
        # Every window the predictor took is predicted, counted unanchored (its anchor frame aged out while the
        # window waited), or still waiting for its frame at the end (at most the predictor's 16 pending).
        model_edge = next(e for e in report["edges"] if e["edge"] == "vox.voxels->pred.voxels")
        waiting = model_edge["processed"] - predictor["predictions"] - predictor["unanchored"]
        assert 0 <= waiting <= 16, (model_edge, predictor)
        outcome["predictor_windows_waiting_at_end"] = waiting
        assert predictor["predictions"] > 0
    return outcome


# The model behind the latest edge: the predictor once its tiny checkpoints are trained, until then the
# voxelizer's windows go straight to the metrics sink (real rate) or to a consumer that takes 40 ms each (4x).
MODEL = "predictor" if PREDICTOR_READY else "none"


def test_live_stream_at_real_rate_loses_nothing(tmp_path):
    sent, report, proc = serve_and_run(tmp_path, MODEL, duration_s=6.0, speed=1.0)
    outcome = check_no_unexplained_loss(sent, report)
    assert sent["sent"]["events"] > 150_000 and sent["wall_s"] >= 5.9  # the recording looped at its real rate
    paths = report["latency"]["paths"]
    assert paths["events -> metrics"]["count"] > 0
    if MODEL == "predictor":  # camera to prediction, per hop: queueing and compute of vox and pred
        assert paths["events -> vox -> pred -> metrics"]["count"] > 0
        assert report["latency"]["nodes"]["pred"]["compute"]["count"] > 0
    assert "queueing vs compute" in proc.stdout
    record(f"live_real_rate_6s_{MODEL}", outcome)


@pytest.mark.slow
def test_live_stream_30_s_at_real_rate(tmp_path):
    sent, report, _ = serve_and_run(tmp_path, MODEL, duration_s=30.0, speed=1.0)
    outcome = check_no_unexplained_loss(sent, report)
    assert sent["wall_s"] >= 29.9 and sent["sent"]["events"] > 900_000
    path = report["latency"]["paths"]["events -> metrics"]
    assert path["count"] > 10_000 and path["p99"] > 0
    if MODEL == "predictor":
        assert report["latency"]["paths"]["events -> vox -> pred -> metrics"]["count"] > 0
    record(f"live_real_rate_30s_{MODEL}", outcome)


def test_at_4x_the_rate_latest_edges_drop_and_count_while_acquisition_loses_nothing(tmp_path):
    # 16 windows per frame at 4x: 1600 windows/s, more than the model can take on a CPU.
    consumer = "predictor" if PREDICTOR_READY else "slow"
    sent, report, _ = serve_and_run(tmp_path, consumer, duration_s=16.0, speed=4.0, windows_per_frame=16)
    outcome = check_no_unexplained_loss(sent, report)
    (model_edge,) = [e for e in report["edges"] if e["policy"] == "latest"]
    assert model_edge["dropped"] > 0, model_edge
    assert model_edge["sent"] == model_edge["processed"] + model_edge["dropped"]
    record(f"live_4x_rate_{consumer}", outcome)
