"""tools/bench_realtime.py cannot rot: a 3-second live run of every graph it measures, end to end."""

from __future__ import annotations

import json

import pytest

from evpipe.tools import bench_realtime
from tests.live_support import davis_recording


@pytest.mark.slow  # three graphs start (torch and ONNX Runtime load in each worker): 40-90 s on two busy cores
def test_live_benchmark_measures_every_graph(tmp_path):
    davis_recording()  # skips without ../shared
    out = tmp_path / "realtime.json"
    assert bench_realtime.main(["--duration", "3", "--repeats", "1", "--variants", "1step", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["graphs"]) == {"predictor 1step", "deblur tiny", "deblur tiny-rt"}
    for run in result["runs"]:
        assert run["sent"]["frames"] >= 60 and run["sent"]["events"] > 50_000  # 3 s of the DAVIS346 at 1x
        assert run["outputs"] > 0 and run["p50_ms"] > 0 and run["p99_ms"] >= run["p50_ms"]
        assert run["offered"] >= run["skipped"] >= 0 and run["offered"] > 0
        assert run["load_start"] >= 0 and run["load_end"] >= 0
        assert run["server_io_threads_sched_idle"] >= 2  # one busy-polling I/O thread per writer at least
        assert 0 <= run["arrival_lag_p50_ms"] <= run["arrival_lag_p99_ms"] < 1000
        for process in ("events", "frames", "model", "metrics", "dv_server"):
            assert run["processes"][process]["peak_rss_mb"] > 10, (run["graph"], process)
            assert 0 <= run["processes"][process]["cpu_share"] <= 2.5, (run["graph"], process)
        assert run["processes"]["model"]["cpu_share"] > 0.01  # the model worked during the stream
    assert "vox" in result["runs"][0]["processes"]
    assert out.with_suffix(".md").read_text().startswith("# Live at the full DAVIS346 sensor")
    assert out.with_suffix(".png").stat().st_size > 10_000
