"""CUDA kernels against the CPU kernels and the float64 references.

Without a GPU they run under numba's CUDA simulator, which must be enabled before numba is first
imported; pytest has imported it long before, so ``test_cuda_kernels_in_simulator`` runs this file
again in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``, where the other tests here execute. With a
real GPU they also run directly. The simulator runs every GPU thread as a Python thread, so inputs
are small.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_kernels import assert_close_to_reference, edi_reference, voxel_magnitude, voxel_reference

IN_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _real_gpu() -> bool:
    if IN_SIMULATOR:
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # no CUDA driver/toolkit: no GPU to test on
        return False


on_cuda = pytest.mark.skipif(
    not (IN_SIMULATOR or _real_gpu()),
    reason="no GPU: covered by test_cuda_kernels_in_simulator (a subprocess with NUMBA_ENABLE_CUDASIM=1)",
)


@pytest.mark.slow
@pytest.mark.skipif(IN_SIMULATOR, reason="already inside the simulator subprocess")
def test_cuda_kernels_in_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(__file__),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 7, result.stdout[-2000:]


def small_events(seed: int, n: int, height: int, width: int, one_timestamp: bool = False):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 10_000, n)).astype(np.int64) + 1_700_000_000_000_000
    if one_timestamp:
        t[:] = t[0] if n else 0
    x = rng.integers(0, width, n).astype(np.uint16)
    y = rng.integers(0, height, n).astype(np.uint16)
    if n:
        x[0], y[-1] = width - 1, height - 1  # sensor borders
    p = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8)
    return t, x, y, p


def to_device(*arrays):
    from numba import cuda

    return tuple(cuda.to_device(a) for a in arrays)


def is_device(arr) -> bool:
    from numba import cuda

    return cuda.devicearray.is_cuda_ndarray(arr)


SIM = settings(max_examples=8, deadline=None)


@on_cuda
@SIM
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 40),
    st.integers(1, 6),
    st.integers(1, 7),
    st.integers(1, 4),
    st.booleans(),
)
def test_voxel_grid_cuda_equals_cpu_and_reference(seed, n, height, width, bins, one_timestamp):
    from evpipe.kernels import voxel_grid

    t, x, y, p = small_events(seed, n, height, width, one_timestamp)
    device_grid = voxel_grid(*to_device(t, x, y, p), bins, height, width)
    assert is_device(device_grid)  # device in, device out
    grid = device_grid.copy_to_host()
    assert grid.shape == (bins, height, width) and grid.dtype == np.float32
    reference = voxel_reference(t, x, y, p, bins, height, width)
    magnitude = voxel_magnitude(t, x, y, p, bins, height, width)
    assert_close_to_reference(grid, reference, magnitude)
    assert_close_to_reference(voxel_grid(t, x, y, p, bins, height, width), reference, magnitude)
    # Fixed-point accumulation: each event's shares sum exactly to its polarity.
    assert float(grid.sum(dtype=np.float64)) == pytest.approx(int(p.sum()), abs=1e-4)


@on_cuda
def test_voxel_grid_cuda_windows_deterministic_and_host_input():
    from evpipe.kernels import voxel_grid

    t, x, y, p = small_events(1, 60, 5, 6)
    windows = np.array([[0, 25], [25, 60], [10, 10], [0, 60]], np.int64)
    first = voxel_grid(t, x, y, p, 3, 5, 6, windows=windows, device="cuda")
    assert is_device(first)
    first = first.copy_to_host()
    second = voxel_grid(*to_device(t, x, y, p), 3, 5, 6, windows=windows).copy_to_host()
    np.testing.assert_array_equal(first, second)  # order-independent integer atomics
    cpu = voxel_grid(t, x, y, p, 3, 5, 6, windows=windows)
    np.testing.assert_allclose(first, cpu, rtol=1e-5, atol=1e-5)
    assert not first[2].any()


@on_cuda
def test_frames_cuda_equal_cpu():
    from evpipe.kernels import event_frame, time_surface

    t, x, y, p = small_events(2, 50, 4, 7)
    windows = np.array([[0, 20], [20, 50], [5, 5]], np.int64)
    frames = event_frame(*to_device(x, y, p), 4, 7, windows=windows)
    assert is_device(frames)
    np.testing.assert_array_equal(frames.copy_to_host(), event_frame(x, y, p, 4, 7, windows=windows))
    t_refs = np.array([t[19], t[40], t[0]], np.int64)
    surfaces = time_surface(*to_device(t, x, y, p), 4, 7, t_refs, 3000.0, windows=windows)
    assert is_device(surfaces)
    cpu = time_surface(t, x, y, p, 4, 7, t_refs, 3000.0, windows=windows)
    np.testing.assert_allclose(surfaces.copy_to_host(), cpu, rtol=1e-6)
    single = time_surface(*to_device(t, x, y, p), 4, 7, int(t[-1]), 500.0).copy_to_host()
    np.testing.assert_allclose(single, time_surface(t, x, y, p, 4, 7, int(t[-1]), 500.0), rtol=1e-6)


@on_cuda
@pytest.mark.parametrize("t_ref", [None, "start", "late"])
def test_edi_cuda_equals_cpu_and_reference(t_ref):
    from evpipe.kernels import edi_integral

    t, x, y, p = small_events(3, 60, 3, 4)
    start, end = int(t[5]), int(t[50])
    tau = {None: None, "start": start, "late": int(t[45])}[t_ref]
    result = edi_integral(*to_device(t, x, y, p), 0.25, start, end, 12, 3, 4, t_ref=tau)
    assert is_device(result)
    result = result.copy_to_host()
    np.testing.assert_allclose(result, edi_integral(t, x, y, p, 0.25, start, end, 12, 3, 4, t_ref=tau), rtol=1e-5)
    np.testing.assert_allclose(result, edi_reference(t, x, y, p, 0.25, start, end, 12, 3, 4, t_ref=tau), rtol=1e-5)


@on_cuda
def test_cuda_kernels_reject_bad_events_like_the_cpu():
    from evpipe.kernels import edi_integral, event_frame, time_surface, voxel_grid

    t, x, y, p = small_events(4, 20, 4, 5)
    x[7] = 5
    dev = to_device(t, x, y, p)
    message = r"event 7: \(x=5, y=\d+\) is outside the 5x4 sensor"
    with pytest.raises(ValueError, match=message):
        voxel_grid(*dev, 3, 4, 5)
    with pytest.raises(ValueError, match=message):
        event_frame(*dev[1:], 4, 5)
    with pytest.raises(ValueError, match=message):
        time_surface(*dev, 4, 5, int(t[-1]), 10.0)
    with pytest.raises(ValueError, match=message):
        edi_integral(*dev, 0.2, int(t[0]), int(t[-1]) + 1, 4, 4, 5)
    with pytest.raises(ValueError, match="device='cpu' but argument"):
        voxel_grid(*dev, 3, 4, 5, device="cpu")
    x[7] = 0
    p[3] = 0
    with pytest.raises(ValueError, match="event 3: p=0, polarity must be -1 or"):
        voxel_grid(*to_device(t, x, y, p), 3, 4, 5)
