"""What the CPU and GPU engine tests share: a small conv net, its ONNX exports and reference outputs.

Tolerances (max abs error against the fp32 torch module on the CPU, outputs of order 0.1-1): fp32 1e-5,
fp16 1e-2. Its fixtures are registered for every test by tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evpipe.runtime.engines.onnx_export import export_onnx
from evpipe.tools.bench_engines import small_conv_net

SHAPE = (1, 5, 32, 32)
FP32_TOL = 1e-5
FP16_TOL = 1e-2


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return small_conv_net(seed=1)


@pytest.fixture(scope="module")
def onnx_path(net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx")
    return export_onnx(net, (torch.zeros(SHAPE),), folder / "net.onnx", ["voxel"], "image")


@pytest.fixture(scope="module")
def dynamic_batch_onnx(net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx_dynamic")
    return export_onnx(net, (torch.zeros(2, 5, 32, 32),), folder / "net_dyn.onnx", ["voxel"], "image",
                       dynamic_shapes={"voxel": {0: torch.export.Dim("batch")}})


def random_voxels(count: int, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(count)]


def torch_reference(net: torch.nn.Module, voxel: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(voxel)).numpy()
