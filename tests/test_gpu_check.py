"""tools/gpu_check.py: its dry run (this CPU, tiny shapes, the CUDA kernels in Numba's simulator)
exercises every section, so the GPU check cannot rot while no GPU is lent; on a GPU it runs for real."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the check would run for real")
def test_without_a_gpu_the_real_check_exits_2_and_points_at_the_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evpipe.tools.gpu_check", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cuda is not available" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.slow  # about 2 minutes on two busy cores: two small graph runs, ONNX export of the prior, the simulator
def test_dry_run_runs_every_section_and_records_skips_with_reasons(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evpipe.tools.gpu_check", "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["failed"] == [] and report["machine"]["dry_run"] and report["machine"]["device"] == "cpu"
    kernels = report["kernels"]["kernels"]
    for name in ("voxel_grid", "event_frame", "time_surface", "edi_integral"):
        assert kernels[name]["max_abs_error_vs_cpu"] < 1e-4, name  # CUDA kernels (simulated) = CPU kernels
        assert kernels[name]["gpu_resident"]["events_per_s"] > 0
    assert "no CUDA kernel" in kernels["simulate_events"]["skipped"]
    for family in ("predictor", "deblur", "restore", "upsample"):
        rows = report["engines"][family]
        assert rows["torch/fp32"]["max_abs_vs_torch_cpu_fp32"] == 0.0
        assert 0 < rows["torch/fp16"]["max_abs_vs_torch_cpu_fp32"] < 0.05  # fp16 really used, and close
        assert "tensorrt is not installed" in rows["tensorrt/fp32"]["skipped"]
    assert report["engines"]["restore"]["onnxruntime/fp32"]["max_abs_vs_torch_cpu_fp32"] < 1e-4
    assert report["async"]["async_calls_per_s"] > 0
    (size, graph), = report["graph"].items()
    assert size == "64x64" and graph["graph_fast"]["predictions"] > 0
    assert graph["graph_realtime"]["engine"]["backend"] == "onnxruntime"
    assert graph["naive_eager_loop"]["windows"] == 6
    assert report["dds"]["seconds_per_clip"]["n"] == 2 and report["hifi"]["seconds_per_frame"]["n"] == 2
    assert "DRY RUN" in (tmp_path / "gpu.md").read_text()
