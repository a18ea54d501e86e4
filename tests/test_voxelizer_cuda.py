"""The voxelizer with ``device: cuda`` runs the Numba-CUDA kernel and emits the CPU kernel's grids.

Without a GPU this runs under numba's CUDA simulator: ``test_voxelizer_cuda_in_simulator`` runs this
file again in a subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (it must be set before numba is imported),
where the simulator test executes. On this CPU machine ``device: cuda`` is a configuration error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from evpipe.runtime.node import ParamError
from tests.test_kernels_cuda import IN_SIMULATOR, on_cuda
from tests.test_voxelizer import H, W, frame_message, interleave, run, time_slices


@pytest.mark.slow  # the simulator runs every GPU thread as a Python thread: about 30 s
@pytest.mark.skipif(IN_SIMULATOR, reason="already inside the simulator subprocess")
def test_voxelizer_cuda_in_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"],
                            env=env, capture_output=True, text=True, timeout=300, cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 1, result.stdout[-2000:]


@on_cuda
def test_voxelizer_on_cuda_emits_the_cpu_grids():
    from tests.data_fixtures.recordings import random_events

    events = random_events(3_000, W, H, t0=0, rate_per_us=0.05, seed=5)  # ~60 ms, small for the simulator
    frames_in = [frame_message(t) for t in range(5_000, 55_000, 20_000)]
    inputs = interleave(time_slices(events, 0, 5_000, 60_000), frames_in, seed=2)
    grids = {}
    for device in ("cpu", "cuda"):
        out, report, _ = run(inputs, mode="frame_sync", predictions_per_frame=2, device=device)
        assert report["windows"] == len(out) > 0
        grids[device] = np.stack([m.arrays["voxel"] for m in out])
        assert isinstance(out[0].arrays["voxel"], np.ndarray)  # host arrays on the wire
    np.testing.assert_allclose(grids["cuda"], grids["cpu"], atol=1e-5)


@pytest.mark.skipif(IN_SIMULATOR, reason="the simulator pretends to have a GPU")
def test_voxelizer_device_cuda_without_a_gpu_is_a_configuration_error():
    from numba import cuda

    from evpipe.nodes.transforms.voxelizer import Voxelizer, kernel_device

    if cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the missing-device error cannot occur")
    with pytest.raises(ParamError, match=r"vox\.device: cuda is not available: Numba finds no CUDA GPU"):
        Voxelizer.check_machine("vox", {"device": "cuda"})
    with pytest.raises(ParamError, match=r"vox\.device: must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        kernel_device("vox", "gpu")
    assert kernel_device("vox", "cpu") is None
