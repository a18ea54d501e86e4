"""Every model node runs its network through the engine interface (evpipe.nodes.model_engines), says
what it runs on, and stops before starting when a backend or device it asks for is missing.

On this CPU machine: the torch engine gives exactly the previous direct path's outputs (max abs 0 for
restore and upsample, < 1e-6 for the fused predictor and deblur graphs); ONNX Runtime matches torch
within 1e-4 (slow: it exports the networks). The GPU and TensorRT paths are not run here (no GPU, no
TensorRT): their selection errors are what is tested.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evpipe.nodes.model_engines import EngineChoice, NetworkEngines
from evpipe.runtime.cli import main
from evpipe.runtime.engines import select_engine

MODEL_NODES = ("predictor", "deblur", "restore", "upsample")
TORCH_CPU = EngineChoice("torch", "cpu", "fp32")
NO_GPU = not torch.cuda.is_available()


def _trt_installed() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


# ---- parameters and selection ---------------------------------------------------------------


@pytest.mark.parametrize("node", MODEL_NODES)
def test_nodes_lists_backend_device_and_precision_with_their_choices(node, capsys):
    assert main(["nodes", node]) == 0
    out = capsys.readouterr().out
    for text in ("backend", "one of auto, onnxruntime, tensorrt, torch", "device", "auto, cpu, cuda, cuda:N",
                 "precision", "one of fp32, fp16"):
        assert text in out, f"{text!r} missing from `evpipe nodes {node}`"


def test_auto_on_this_cpu_is_onnxruntime_for_the_fused_graphs_and_torch_where_shapes_vary():
    assert select_engine("auto", "cpu", "fp32") == ("onnxruntime", "cpu")
    assert select_engine("auto", "cpu", "fp32", ("torch",)) == ("torch", "cpu")
    assert select_engine("auto", "cpu", "fp16") == ("torch", "cpu")  # onnxruntime runs the exported fp32 only


_GRAPH = """
name: engine-check
nodes:
  src: {{type: replay, params: {{path: {recording}}}}}
  vox: {{type: voxelizer, params: {{mode: frame_sync}}}}
  pred: {{type: predictor, params: {{{params}}}}}
  out: {{type: metrics}}
edges:
  - src.events -> vox.events
  - src.frames -> vox.frames
  - src.frames -> pred.frames
  - vox.voxels -> pred.voxels
  - pred.predictions -> out.in
"""


def _graph(tmp_path, params: str):
    path, recording = tmp_path / "graph.yaml", tmp_path / "never_read.aedat4"
    recording.touch()  # exists, so the missing-input check passes; the graph stops before anything reads it
    path.write_text(_GRAPH.format(recording=recording, params=params))
    return path


@pytest.mark.skipif(_trt_installed(), reason="TensorRT is installed here: the missing-backend error cannot occur")
def test_a_graph_asking_for_tensorrt_stops_before_it_starts_naming_the_package(tmp_path, capsys):
    assert main(["run", str(_graph(tmp_path, "backend: tensorrt"))]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "pred.backend: tensorrt is not installed (pip install 'evpipe[trt]')" in err
    assert "graph.yaml:" in err  # the file and line of the node
    assert main(["build-engines", str(_graph(tmp_path, "backend: tensorrt"))]) == 2


@pytest.mark.skipif(not NO_GPU, reason="a CUDA GPU is visible: the missing-device error cannot occur")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_graph_asking_for_cuda_on_this_cpu_machine_exits_2_naming_the_device(tmp_path, capsys, device):
    assert main(["run", str(_graph(tmp_path, f"device: '{device}'"))]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert f"pred.device: {device.split(':')[0]} is not available: no CUDA GPU is visible" in err


def test_bad_device_text_and_unsupported_precision_are_named(tmp_path, capsys):
    assert main(["run", str(_graph(tmp_path, "device: gpu"))]) == 2
    assert "pred.device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'" in capsys.readouterr().err
    assert main(["run", str(_graph(tmp_path, "backend: onnxruntime, precision: fp16"))]) == 2
    assert "pred.precision: fp16 is not supported by onnxruntime" in capsys.readouterr().err.replace("\n", " ")


@pytest.mark.skipif(not NO_GPU, reason="a CUDA GPU is visible: the missing-device error cannot occur")
def test_restore_and_upsample_commands_stop_on_a_missing_device(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")  # never read: the device check comes first
    assert main(["restore", str(clip), str(tmp_path / "out.mp4"), "--degradation", "uniform7", "--device", "cuda"]) == 2
    assert "restore.device: cuda is not available" in capsys.readouterr().err.replace("\n", " ")
    assert main(["upsample", str(clip), str(tmp_path / "out.mp4"), "--backend", "tensorrt"]) == 2
    assert "upsample.backend: tensorrt is not installed" in capsys.readouterr().err.replace("\n", " ")


# ---- the engine path gives the previous path's outputs --------------------------------------


def test_restore_through_the_engine_equals_the_direct_prior_calls():
    from evpipe.nodes.restore import operators as ops
    from evpipe.nodes.restore.model import load_prior
    from evpipe.nodes.restore.psf import temporal_psf
    from evpipe.nodes.restore.sampler import DDSConfig, dds_restore

    model = load_prior("tiny")[0]
    clip = torch.from_numpy(np.random.default_rng(0).random((6, 1, 16, 24), dtype=np.float32))
    op = ops.TemporalPSF(temporal_psf("uniform7"), 6)
    y = op.forward(clip)
    config = DDSConfig(nfe=3, seed=2)
    network = NetworkEngines(TORCH_CPU, model, ("x", "t"), "prediction")
    direct = dds_restore(model, op, y, tuple(clip.shape), config)
    engine = dds_restore(model, op, y, tuple(clip.shape), config, network=network)
    assert torch.equal(direct, engine)  # same module, same inputs: bit-identical
    network.close()


def test_upsample_through_the_engine_equals_the_direct_network_calls():
    from evpipe.nodes.upsample.cascade import CascadeSettings, Upsampler, interpolate

    settings = CascadeSettings(levels=2, steps=2, samples=2, patch=16, overlap=0.25)
    upsampler = Upsampler("tiny", settings, "cpu", "auto")
    assert upsampler.choice == TORCH_CPU
    rng = np.random.default_rng(1)
    a, b = rng.random((40, 36), dtype=np.float32), rng.random((40, 36), dtype=np.float32)
    direct = interpolate(upsampler.model, torch.from_numpy(a)[None], torch.from_numpy(b)[None], settings)
    assert np.array_equal(upsampler.middle(a, b), direct[0].numpy())
    upsampler.close()


def test_predictor_and_deblur_torch_engines_equal_their_fused_modules():
    from evpipe.nodes.deblur.models import FusedStudent
    from evpipe.nodes.deblur.sampler import Deblurrer
    from evpipe.nodes.predict.models import FusedPredictor
    from evpipe.nodes.predict.sampler import FramePredictor

    rng = np.random.default_rng(3)
    predictor = FramePredictor("4step", "tiny", "torch", device="cpu")
    h, w = 32, 48
    anchor, voxel = rng.random((h, w), dtype=np.float32), rng.standard_normal((predictor.bins, h, w), np.float32)
    with torch.no_grad():
        noise = torch.zeros(1, *predictor.model.noise_shape(h, w))
        direct = FusedPredictor(predictor.model, predictor.steps).eval()(
            torch.from_numpy(anchor)[None, None], torch.from_numpy(voxel)[None], noise)
    np.testing.assert_allclose(predictor.predict(anchor, voxel), direct[0, 0].numpy(), atol=1e-6)
    predictor.close()

    deblurrer = Deblurrer("student", "tiny", "torch")
    blurry, edi = rng.random((h, w), dtype=np.float32), np.exp(rng.standard_normal((h, w)).astype(np.float32) * 0.2)
    dvoxel = rng.standard_normal((deblurrer.bins, h, w)).astype(np.float32)
    with torch.no_grad():
        direct = FusedStudent(deblurrer.model, deblurrer.info["student_steps"]).eval()(
            *(torch.from_numpy(x)[None, None] for x in (blurry, edi)), torch.from_numpy(dvoxel)[None],
            torch.zeros(1, 1, h, w))
    np.testing.assert_allclose(deblurrer.deblur(blurry, edi, dvoxel), direct[0, 0].numpy(), atol=1e-6)
    deblurrer.close()


@pytest.mark.slow  # exports the prior and HiFI's denoiser to ONNX (about 10 s each on two busy cores)
def test_onnxruntime_engines_of_restore_and_upsample_match_torch(tmp_path, monkeypatch):
    from evpipe.nodes.restore import operators as ops
    from evpipe.nodes.restore.model import load_prior
    from evpipe.nodes.restore.psf import temporal_psf
    from evpipe.nodes.restore.sampler import DDSConfig, dds_restore
    from evpipe.nodes.upsample.cascade import CascadeSettings, Upsampler

    monkeypatch.setenv("EVPIPE_CACHE", str(tmp_path))
    model = load_prior("tiny")[0]
    clip = torch.from_numpy(np.random.default_rng(0).random((5, 1, 16, 24), dtype=np.float32))
    op = ops.TemporalPSF(temporal_psf("uniform7"), 5)
    y = op.forward(clip)
    from evpipe.nodes.restore.export import cached_prior_onnx

    ort = NetworkEngines(EngineChoice("onnxruntime", "cpu", "fp32"), model, ("x", "t"), "prediction",
                         onnx=lambda: cached_prior_onnx("tiny"))
    config = DDSConfig(nfe=3)
    restored = dds_restore(model, op, y, tuple(clip.shape), config, network=ort)
    assert float((restored - dds_restore(model, op, y, tuple(clip.shape), config)).abs().max()) < 1e-4
    assert ort.cache_files() == [str(cached_prior_onnx("tiny"))]
    ort.close()

    settings = CascadeSettings(levels=2, steps=2, samples=1, patch=16)
    a, b = (np.random.default_rng(s).random((32, 32), dtype=np.float32) for s in (1, 2))
    on_ort = Upsampler("tiny", settings, "cpu", "onnxruntime").middle(a, b)
    on_torch = Upsampler("tiny", settings, "cpu", "torch").middle(a, b)
    assert float(np.abs(on_ort - on_torch).max()) < 1e-4


# ---- build-engines and the report ----------------------------------------------------------


@pytest.mark.slow  # exports the restore prior to ONNX once
def test_build_engines_prepares_every_model_node_and_a_second_run_is_a_cache_hit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVPIPE_CACHE", str(tmp_path / "cache"))
    graph = ["build-engines", "restore_clip.yaml", "--set", "restore.backend=onnxruntime", "--set",
             "restore.device=cpu"]
    assert main(graph) == 0
    first = capsys.readouterr().err
    assert "restore: built " in first and str(tmp_path / "cache" / "restore") in first
    assert main(graph) == 0
    assert "restore: cached " in capsys.readouterr().err


def test_run_header_and_report_name_each_model_nodes_backend_device_and_cache(tmp_path, capsys):
    from evpipe.nodes.restore.psf import degrade_clip, temporal_psf
    from tests.data_fixtures.recordings import write_video

    frames = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    gray = np.round(degrade_clip(frames, temporal_psf("uniform7")) * 255).astype(np.uint8)
    source = write_video(tmp_path / "clip.mp4", np.repeat(gray[..., None], 3, axis=3), rate=25)
    report = tmp_path / "report.json"
    status = main(["run", "restore_clip.yaml", "--set", f"clip.path={source}", "--set",
                   f"video.path={tmp_path / 'out.mp4'}", "--set", "restore.nfe=1", "--set", "restore.window=4",
                   "--set", "restore.overlap=1", "--set", "restore.device=cpu", "--report", str(report)])
    assert status == 0
    captured = capsys.readouterr()
    assert "restore: backend torch, device cpu, precision fp32, engine cache none (torch eager)" in captured.err
    assert "Model engines" in captured.out
    engines = json.loads(report.read_text())["engines"]
    assert engines == {"restore": {"backend": "torch", "device": "cpu", "precision": "fp32",
                                   "cache": "none (torch eager)"}}


@pytest.mark.parametrize(("installed", "expected"), [
    (("onnxruntime",), "the CPU build is installed (pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
                       "onnxruntime-gpu)"),
    (("onnxruntime", "onnxruntime-gpu"), "onnxruntime and onnxruntime-gpu are both installed and overwrite each other"),
    (("onnxruntime-gpu",), "onnxruntime-gpu is installed but its CUDA execution provider does not load"),
])
def test_which_onnxruntime_build_is_installed_decides_the_message(monkeypatch, installed, expected):
    from importlib import metadata

    from evpipe.runtime.engines import ort_backend

    def distribution(name: str) -> object:
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return object()

    monkeypatch.setattr(metadata, "distribution", distribution)
    assert ort_backend.installed_builds() == list(installed)
    assert expected in ort_backend.cuda_provider_missing()
