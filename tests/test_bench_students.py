"""tools/bench_students.py cannot rot: every lever timed once per round at the full DAVIS346 size."""

from __future__ import annotations

import json

import pytest

from evpipe.tools import bench_students
from tests.live_support import davis_recording


@pytest.mark.slow  # exports five ONNX graphs and quantises one on a fresh machine (minutes); cached: about 40 s
def test_levers_benchmark_times_every_lever(tmp_path):
    davis_recording()  # skips without ../shared
    out = tmp_path / "students.json"
    argv = ["--rounds", "3", "--calls", "1", "--large-calls", "0", "--windows", "2", "--out", str(out)]
    assert bench_students.main(argv) == 0
    result = json.loads(out.read_text())
    rows = result["timing"]
    assert {"4-step + head (full resolution)", "4-step + head, static int8", "1-step (no head)",
            "deblur student"} <= set(rows)
    assert any(name.startswith("4step-coarse4") for name in rows)
    for row in rows.values():
        assert row["size"] == "346x260" and row["calls"] == 3 and row["rounds"] == 3
        assert 0 < row["round_p50_min_ms"] <= row["p50_ms"] <= row["round_p50_max_ms"] <= row["max_ms"]
    assert len(result["load"]["rounds"]) == 3
    assert out.with_suffix(".md").read_text().startswith("# Student cost levers")
