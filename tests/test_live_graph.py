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
needs_predictor = pytest.mark.skipif(not PREDICTOR_READY, reason="the predictor's tiny checkpoints are not trained "
                                     "yet (nodes/predict/checkpoints/tiny/unet-4step.pt)")


def live_graph(events_port: int, frames_port: int, consumer: str, model_policy: str = "latest") -> str:
    """events + frames from DV streams -> voxelizer -> ``consumer`` (predictor or a slow test sink) -> metrics."""
    consumer_node = {
        "predictor": "pred: {type: predictor, params: {threads: 1}}",
        "slow": 'pred: {type: "graph_nodes:SlowSink", params: {delay_ms: 40}}',
        "none": "",
    }[consumer]
    edges = {
        "predictor": [f"- {{edge: vox.voxels -> pred.voxels, policy: {model_policy}}}",
                      "- frames.frames -> pred.frames", "- pred.predictions -> metrics.in"],
        "slow": [f"- {{edge: vox.voxels -> pred.in, policy: {model_policy}}}"],
        "none": [f"- {{edge: vox.voxels -> metrics.in, policy: {model_policy}}}"],
    }[consumer]
    source = "{{type: dv_network_source, params: {{address: 'tcp://127.0.0.1:{port}', give_up_after_s: 1.0}}}}"
    return "\n".join([
        "name: live",
        "nodes:",
        f"  events: {source.format(port=events_port)}",
        f"  frames: {source.format(port=frames_port)}",
        "  vox: {type: voxelizer, params: {mode: frame_sync, bins: 5, predictions_per_frame: 4}}",
        f"  {consumer_node}" if consumer_node else "",
        "  metrics: {type: metrics, params: {warmup: 10}}",
        "edges:",
        "  - events.events -> vox.events",
        "  - frames.frames -> vox.frames",
        "  - events.events -> metrics.in",  # the events' own ledger: count and checksum at the far end
        *(f"  {e}" for e in edges),
        "",
    ])


def serve_and_run(tmp_path, consumer: str, duration_s: float, speed: float) -> tuple[dict, dict, object]:
    events_port, frames_port = free_port(), free_port()
    server = DvServer(davis_recording(), "--events", f"tcp://127.0.0.1:{events_port}",
                      "--frames", f"tcp://127.0.0.1:{frames_port}", "--wait-clients",
                      "--duration-s", str(duration_s), "--speed", str(speed))
    try:
        proc, report = run_graph(tmp_path, live_graph(events_port, frames_port, consumer),
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
    return {"events_sent": expected[0], "frames_sent": sent["sent"]["frames"], "wall_s": sent["wall_s"],
            "edges": report["edges"], "arrival_lag_ms": live["arrival_lag_ms"],
            "source_buffer_wait_ms": live["buffer"]["wait_ms"], "voxelizer": vox.get("counts", vox),
            "latency": {"paths": {p: {k: s[k] for k in ("count", "p50", "p90", "p99", "max") if k in s}
                                  for p, s in report["latency"]["paths"].items()},
                        "nodes": report["latency"]["nodes"]}}


def _consumers() -> list:
    return ["none", pytest.param("predictor", marks=needs_predictor)]


@pytest.mark.parametrize("consumer", _consumers())
def test_live_stream_at_real_rate_loses_nothing(tmp_path, consumer):
    sent, report, proc = serve_and_run(tmp_path, consumer, duration_s=6.0, speed=1.0)
    outcome = check_no_unexplained_loss(sent, report)
    assert sent["sent"]["events"] > 150_000 and sent["wall_s"] >= 5.9  # the recording looped at its real rate
    assert "events -> metrics" in report["latency"]["paths"]
    assert report["latency"]["nodes"]["vox"]["compute"]["count"] > 0
    assert "queueing vs compute" in proc.stdout
    record(f"live_real_rate_6s_{consumer}", outcome)


@pytest.mark.slow
@pytest.mark.parametrize("consumer", _consumers())
def test_live_stream_30_s_at_real_rate(tmp_path, consumer):
    sent, report, _ = serve_and_run(tmp_path, consumer, duration_s=30.0, speed=1.0)
    outcome = check_no_unexplained_loss(sent, report)
    assert sent["wall_s"] >= 29.9 and sent["sent"]["events"] > 900_000
    path = report["latency"]["paths"]["events -> metrics"]
    assert path["count"] > 10_000 and path["p99"] > 0
    record(f"live_real_rate_30s_{consumer}", outcome)


@pytest.mark.parametrize("consumer", ["slow", pytest.param("predictor", marks=needs_predictor)])
def test_at_4x_the_rate_latest_edges_drop_and_count_while_acquisition_loses_nothing(tmp_path, consumer):
    sent, report, _ = serve_and_run(tmp_path, consumer, duration_s=24.0, speed=4.0)
    outcome = check_no_unexplained_loss(sent, report)
    (model_edge,) = [e for e in report["edges"] if e["policy"] == "latest"]
    assert model_edge["dropped"] > 0.3 * model_edge["sent"], model_edge  # the model cannot keep up at 4x
    assert model_edge["sent"] == model_edge["processed"] + model_edge["dropped"]
    record(f"live_4x_rate_{consumer}", outcome)
