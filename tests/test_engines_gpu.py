"""GPU engines: TensorRT 10, torch with CUDA graphs, the ONNX Runtime CUDA provider.

The development workplace has no GPU and cannot install TensorRT, so every test here skips there
with its reason; they run wherever the dependency and a CUDA GPU are present. The net, its
ONNX exports and the tolerances: tests/engines_shared.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from evpipe.runtime.engines import (  # noqa: E402 - after the torch skip
    EngineInputError,
    ModelSource,
    TensorSpec,
    available_backends,
    open_engine,
)
from tests.engines_shared import FP16_TOL, FP32_TOL, SHAPE, random_voxels, torch_reference  # noqa: E402

NO_GPU = "no CUDA GPU visible to torch (the development workplace has none)"
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)


@pytest.fixture(scope="module")
def trt():
    module = pytest.importorskip(
        "tensorrt",
        reason="TensorRT is not installed (not installable in the development workplace); "
        "run these tests on a CUDA machine after: pip install 'evpipe[trt]'",
    )
    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python is not installed: pip install 'evpipe[trt]'")
    if not torch.cuda.is_available():
        pytest.skip(NO_GPU)
    return module


def _max_error(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape and got.dtype == want.dtype
    return float(np.abs(got - want).max())


# ---- TensorRT ---------------------------------------------------------------------------------


@pytest.mark.parametrize("precision, tolerance", [("fp32", FP32_TOL), ("fp16", FP16_TOL)])
def test_trt_matches_the_torch_module(
    trt, net: torch.nn.Module, onnx_path: Path, tmp_path: Path, precision: str, tolerance: float
) -> None:
    options = {"cache_dir": tmp_path}
    with open_engine(
        onnx_path, backend="tensorrt", device="cuda", precision=precision, tensorrt=options
    ) as engine:
        assert engine.inputs == (TensorSpec("voxel", SHAPE, np.float32),)
        for voxel in random_voxels(3, seed=1):
            assert _max_error(engine.run({"voxel": voxel})["image"], torch_reference(net, voxel)) <= tolerance


def test_trt_plan_is_cached_per_model_and_rebuilt_on_request(trt, onnx_path: Path, tmp_path: Path) -> None:
    options = {"cache_dir": tmp_path}
    with open_engine(onnx_path, backend="tensorrt", device="cuda", tensorrt=options) as first:
        plan = first.plan_path
        built_at = plan.stat().st_mtime_ns
        (voxel,) = random_voxels(1, seed=2)
        expected = first.run({"voxel": voxel})["image"]
    assert plan.parent == tmp_path and plan.with_suffix(".json").is_file()
    with open_engine(onnx_path, backend="tensorrt", device="cuda", tensorrt=options) as second:
        assert second.plan_path == plan
        assert plan.stat().st_mtime_ns == built_at  # loaded, not rebuilt
        np.testing.assert_array_equal(second.run({"voxel": voxel})["image"], expected)
    with open_engine(
        onnx_path, backend="tensorrt", device="cuda", precision="fp16", tensorrt=options
    ) as half:
        assert half.plan_path != plan  # precision is part of the key
    with open_engine(onnx_path, backend="tensorrt", device="cuda", tensorrt={**options, "rebuild": True}):
        assert plan.stat().st_mtime_ns != built_at


def test_trt_async_results_in_order_equal_sync(trt, onnx_path: Path, tmp_path: Path) -> None:
    voxels = random_voxels(16, seed=3)
    with open_engine(
        onnx_path, backend="tensorrt", device="cuda", max_in_flight=3, tensorrt={"cache_dir": tmp_path}
    ) as engine:
        expected = [engine.run({"voxel": v})["image"] for v in voxels]
        tickets = [engine.submit({"voxel": v}) for v in voxels]
        results = engine.collect(block=True, timeout=60)
    assert [r.ticket for r in results] == tickets
    for done, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(done.outputs["image"], want)


def test_trt_dynamic_batch_needs_a_profile_and_enforces_it(
    trt, net: torch.nn.Module, dynamic_batch_onnx: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"input 'voxel'.*dynamic shape.*input_shapes"):
        open_engine(dynamic_batch_onnx, backend="tensorrt", device="cuda", tensorrt={"cache_dir": tmp_path})
    profile = {"voxel": ((1, 5, 32, 32), (2, 5, 32, 32), (4, 5, 32, 32))}
    options = {"cache_dir": tmp_path, "input_shapes": profile}
    with open_engine(dynamic_batch_onnx, backend="tensorrt", device="cuda", tensorrt=options) as engine:
        assert engine.inputs[0].shape == (None, 5, 32, 32)
        for batch in (1, 3, 4):
            (voxel,) = random_voxels(1, shape=(batch, 5, 32, 32), seed=batch)
            assert _max_error(engine.run({"voxel": voxel})["image"], torch_reference(net, voxel)) <= FP32_TOL
        with pytest.raises(EngineInputError, match=r"input 'voxel': shape \[5, 5, 32, 32\] is outside"):
            engine.run({"voxel": np.zeros((5, 5, 32, 32), np.float32)})


def test_trt_rejects_wrong_feeds_naming_the_input(trt, onnx_path: Path, tmp_path: Path) -> None:
    with (
        open_engine(onnx_path, backend="tensorrt", device="cuda", tensorrt={"cache_dir": tmp_path}) as engine,
        pytest.raises(EngineInputError, match="input 'voxel': dtype float16, expected float32"),
    ):
        engine.run({"voxel": np.zeros(SHAPE, np.float16)})


def test_auto_prefers_tensorrt_on_a_gpu(trt, net: torch.nn.Module, onnx_path: Path, tmp_path: Path) -> None:
    source = ModelSource(onnx=onnx_path, torch=net)
    with open_engine(source, device="cuda", tensorrt={"cache_dir": tmp_path}) as engine:
        assert engine.backend == "tensorrt"


# ---- torch with CUDA graphs -------------------------------------------------------------------


@requires_gpu
@pytest.mark.parametrize("precision, tolerance", [("fp32", FP32_TOL), ("fp16", FP16_TOL)])
@pytest.mark.parametrize("cuda_graph", [True, False])
def test_torch_cuda_matches_the_cpu_module(
    net: torch.nn.Module, precision: str, tolerance: float, cuda_graph: bool
) -> None:
    source = ModelSource(torch=net, inputs=[TensorSpec("voxel", SHAPE, np.float32)], output_names=["image"])
    with open_engine(
        source, backend="torch", device="cuda", precision=precision, torch={"cuda_graph": cuda_graph}
    ) as engine:
        assert engine.outputs == (TensorSpec("image", (1, 1, 32, 32), np.float32),)
        for voxel in random_voxels(3, seed=4):
            assert _max_error(engine.run({"voxel": voxel})["image"], torch_reference(net, voxel)) <= tolerance
    assert next(net.parameters()).device.type == "cpu"  # the caller's module was not moved


@requires_gpu
@pytest.mark.parametrize("policy", ["lossless", "latest"])
def test_torch_cuda_async_keeps_order(net: torch.nn.Module, policy: str) -> None:
    source = ModelSource(torch=net, inputs=[TensorSpec("voxel", SHAPE, np.float32)], output_names=["image"])
    voxels = random_voxels(32, seed=5)
    with open_engine(source, backend="torch", device="cuda", max_in_flight=2, policy=policy) as engine:
        expected = [engine.run({"voxel": v})["image"] for v in voxels]
        tickets = [engine.submit({"voxel": v}) for v in voxels]
        results = engine.collect(block=True, timeout=60)
        delivered = [r.ticket for r in results]
        assert delivered == sorted(delivered)
        assert len(delivered) + engine.skipped == len(tickets)
        assert delivered[-1] == tickets[-1]
        if policy == "lossless":
            assert delivered == tickets
    for done in results:
        np.testing.assert_array_equal(done.outputs["image"], expected[done.ticket])


# ---- ONNX Runtime CUDA provider ---------------------------------------------------------------


@pytest.mark.skipif(
    available_backends("cuda")["onnxruntime"] is not None,
    reason="onnxruntime has no CUDA provider or no GPU here (pip install onnxruntime-gpu on a CUDA machine)",
)
@requires_gpu
def test_onnxruntime_cuda_matches_the_torch_module(net: torch.nn.Module, onnx_path: Path) -> None:
    with open_engine(onnx_path, backend="onnxruntime", device="cuda", max_in_flight=2) as engine:
        voxels = random_voxels(4, seed=6)
        for voxel in voxels:
            assert _max_error(engine.run({"voxel": voxel})["image"], torch_reference(net, voxel)) <= FP32_TOL
        tickets = [engine.submit({"voxel": v}) for v in voxels]
        assert [r.ticket for r in engine.collect(block=True, timeout=60)] == tickets
