"""CPU kernels against float64 NumPy references on random inputs (hypothesis), plus input validation.

The references are plain per-event NumPy, written independently of the kernels; the CUDA tests
(tests/test_kernels_cuda.py) import them from here.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evpipe.kernels import edi_integral, event_frame, simulate_events, time_surface, voxel_grid


def voxel_reference(t, x, y, p, bins: int, height: int, width: int) -> np.ndarray:
    """E2VID voxel grid in float64 with ``np.add.at``: (bins, height, width)."""
    grid = np.zeros((bins, height, width))
    if len(t) == 0:
        return grid
    span = float(t[-1] - t[0])
    tstar = (bins - 1) * (t - t[0]) / span if span > 0 else np.zeros(len(t))
    for b in range(bins):
        weight = p * np.maximum(0.0, 1.0 - np.abs(b - tstar))
        np.add.at(grid[b], (y.astype(np.int64), x.astype(np.int64)), weight)
    return grid


def voxel_magnitude(t, x, y, p, bins: int, height: int, width: int) -> np.ndarray:
    """The reference grid built from |p|: the scale of each cell's float rounding error."""
    return voxel_reference(t, x, y, np.abs(p), bins, height, width)


def event_frame_reference(x, y, p, height: int, width: int) -> np.ndarray:
    counts = np.zeros((2, height, width))
    np.add.at(counts, ((p > 0).astype(np.int64), y.astype(np.int64), x.astype(np.int64)), 1.0)
    return counts


def time_surface_reference(t, x, y, p, height: int, width: int, t_ref: int, tau_us: float) -> np.ndarray:
    latest = np.full((2, height, width), np.iinfo(np.int64).min)
    past = t <= t_ref
    cells = ((p[past] > 0).astype(np.int64), y[past].astype(np.int64), x[past].astype(np.int64))
    np.maximum.at(latest, cells, t[past])
    seen = latest != np.iinfo(np.int64).min
    return np.where(seen, np.exp(-(t_ref - np.where(seen, latest, t_ref)) / tau_us), 0.0)


def edi_reference(t, x, y, p, c, start, end, n_samples, height, width, t_ref=None) -> np.ndarray:
    """E(tau) = mean over sample times s_k = start + (k + 1/2) T / K of exp(c * integral_tau^s_k e).

    Times are taken relative to ``start`` so that float64 stays exact for Unix-µs timestamps.
    """
    tau = (end - start) / 2 if t_ref is None else float(t_ref - start)
    period = end - start
    inside = (t >= start) & (t < end)
    d = (t[inside] - start).astype(np.float64)
    x, y, p = x[inside].astype(np.int64), y[inside].astype(np.int64), p[inside].astype(np.float64)
    total = np.zeros((height, width))
    for k in range(n_samples):
        sample = (2 * k + 1) * period / (2 * n_samples)
        integral = np.zeros((height, width))
        if sample >= tau:
            sel = (d > tau) & (d <= sample)
            np.add.at(integral, (y[sel], x[sel]), p[sel])
        else:
            sel = (d > sample) & (d <= tau)
            np.add.at(integral, (y[sel], x[sel]), -p[sel])
        total += np.exp(c * integral)
    return total / n_samples


@st.composite
def event_windows(draw, max_events: int = 200, max_side: int = 24):
    """(t, x, y, p, height, width): sorted times (sometimes all equal), events on borders included."""
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    n = draw(st.integers(0, max_events))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    t0 = draw(st.integers(0, 2**40))
    mode = draw(st.sampled_from(["spread", "one_timestamp", "bursty"]))
    if mode == "one_timestamp":
        t = np.full(n, t0, np.int64)
    elif mode == "bursty":
        t = t0 + np.sort(rng.integers(0, 5, n)).astype(np.int64) * 1_000_000
    else:
        t = t0 + np.sort(rng.integers(0, draw(st.integers(1, 10**7)), n)).astype(np.int64)
    x = rng.integers(0, width, n).astype(np.uint16)
    y = rng.integers(0, height, n).astype(np.uint16)
    if n and draw(st.booleans()):
        # Pin some events to the sensor's corners and edges.
        k = max(1, n // 4)
        x[:k] = rng.choice([0, width - 1], k)
        y[-k:] = rng.choice([0, height - 1], k)
    p = np.where(rng.random(n) < draw(st.floats(0.0, 1.0)), 1, -1).astype(np.int8)
    return t, x, y, p, height, width


def assert_close_to_reference(result: np.ndarray, reference: np.ndarray, magnitude: np.ndarray) -> None:
    """float32 result within 1e-5 relative of the float64 reference.

    Relative to the cell's magnitude (its reference with |p|), so that cells where ON and OFF
    events cancel are judged on the scale of their terms, not on their near-zero sum.
    """
    assert result.dtype == np.float32
    assert result.shape == reference.shape
    np.testing.assert_array_less(np.abs(result - reference), 1e-5 * magnitude + 1e-6)


FAST = settings(max_examples=60, deadline=None)


@FAST
@given(event_windows(), st.integers(1, 9))
def test_voxel_grid_matches_reference(events, bins):
    t, x, y, p, height, width = events
    grid = voxel_grid(t, x, y, p, bins, height, width)
    assert grid.shape == (bins, height, width)
    reference = voxel_reference(t, x, y, p, bins, height, width)
    assert_close_to_reference(grid, reference, voxel_magnitude(t, x, y, p, bins, height, width))
    # Conservation: each event's weights sum to its polarity.
    assert abs(float(grid.sum(dtype=np.float64)) - int(p.sum())) <= 1e-5 * max(len(p), 1)


@FAST
@given(event_windows(max_events=300), st.integers(1, 6), st.data())
def test_voxel_grid_windows_equal_separate_calls(events, bins, data):
    t, x, y, p, height, width = events
    n = len(t)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), min_size=2, max_size=8)))
    windows = np.array([*itertools.pairwise(cuts), (cuts[0], cuts[0])], np.int64)
    grids = voxel_grid(t, x, y, p, bins, height, width, windows=windows)
    assert grids.shape == (len(windows), bins, height, width)
    for (lo, hi), grid in zip(windows, grids, strict=True):
        reference = voxel_reference(t[lo:hi], x[lo:hi], y[lo:hi], p[lo:hi], bins, height, width)
        magnitude = voxel_magnitude(t[lo:hi], x[lo:hi], y[lo:hi], p[lo:hi], bins, height, width)
        assert_close_to_reference(grid, reference, magnitude)
    assert not grids[-1].any()  # the empty window


def random_events(n: int, height: int, width: int, seed: int = 0, span_us: int = 10**6):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span_us, n)).astype(np.int64) + 1_700_000_000_000_000
    x = rng.integers(0, width, n).astype(np.uint16)
    y = rng.integers(0, height, n).astype(np.uint16)
    p = np.where(rng.random(n) < 0.6, 1, -1).astype(np.int8)
    return t, x, y, p


def test_voxel_grid_large_window_is_deterministic_and_matches_reference():
    # Large enough for the per-thread private grids (and absolute Unix-µs timestamps).
    t, x, y, p = random_events(600_000, 30, 40)
    grid = voxel_grid(t, x, y, p, 5, 30, 40)
    assert_close_to_reference(grid, voxel_reference(t, x, y, p, 5, 30, 40), voxel_magnitude(t, x, y, p, 5, 30, 40))
    for _ in range(3):
        np.testing.assert_array_equal(voxel_grid(t, x, y, p, 5, 30, 40), grid)
    assert abs(float(grid.sum(dtype=np.float64)) - int(p.sum())) < 1e-2


def test_voxel_grid_single_event_and_one_timestamp():
    t = np.array([5], np.int64)
    x = np.array([3], np.uint16)
    y = np.array([1], np.uint16)
    grid = voxel_grid(t, x, y, np.array([-1], np.int8), 4, 2, 4)
    expected = np.zeros((4, 2, 4), np.float32)
    expected[0, 1, 3] = -1.0
    np.testing.assert_array_equal(grid, expected)
    # All events at one timestamp: t* = 0, everything in bin 0.
    t, x, y, p = random_events(1000, 5, 7)
    grid = voxel_grid(np.full(1000, 42, np.int64), x, y, p, 3, 5, 7)
    assert not grid[1:].any()
    counts = event_frame_reference(x, y, p, 5, 7)
    np.testing.assert_array_equal(grid[0], counts[1] - counts[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.update(x=np.array([0, 7, 1], np.uint16)), r"event 1: \(x=7, y=0\) is outside the 7x5 sensor"),
        (lambda e: e.update(y=np.array([0, 0, 5], np.uint16)), r"event 2: \(x=1, y=5\) is outside"),
        (lambda e: e.update(p=np.array([1, 0, 1], np.int8)), r"event 1: p=0, polarity must be -1 or \+1"),
        (
            lambda e: e.update(t=np.array([1, 9, 3], np.int64)),
            r"event 1: t=9 is outside its window's time range \[1, 3\]; events must be sorted",
        ),
        (lambda e: e.update(x=np.array([0, 1, 1], np.int32)), r"x: expected a 1-D uint16 array, got int32"),
        (lambda e: e.update(p=np.array([1, 1], np.int8)), r"different lengths"),
        (lambda e: e.update(t=np.zeros((3, 1), np.int64)), r"t: expected a 1-D int64 array"),
    ],
)
def test_voxel_grid_rejects_bad_events(change, message):
    events = {
        "t": np.array([1, 2, 3], np.int64),
        "x": np.array([0, 1, 1], np.uint16),
        "y": np.array([0, 0, 4], np.uint16),
        "p": np.array([1, -1, 1], np.int8),
    }
    change(events)
    with pytest.raises(ValueError, match=message):
        voxel_grid(events["t"], events["x"], events["y"], events["p"], 3, 5, 7)


def test_voxel_grid_rejects_bad_arguments():
    t, x, y, p = random_events(10, 5, 7)
    with pytest.raises(ValueError, match="bins: expected an integer >= 1, got 0"):
        voxel_grid(t, x, y, p, 0, 5, 7)
    with pytest.raises(ValueError, match="width: expected an integer"):
        voxel_grid(t, x, y, p, 3, 5, 0)
    with pytest.raises(ValueError, match=r"windows\[1\] = \[4, 11\]: need 0 <= start <= stop <= 10"):
        voxel_grid(t, x, y, p, 3, 5, 7, windows=np.array([[0, 4], [4, 11]], np.int64))
    with pytest.raises(ValueError, match="windows: expected an int64 array of shape"):
        voxel_grid(t, x, y, p, 3, 5, 7, windows=np.array([0, 4], np.int64))
    with pytest.raises(ValueError, match="device: expected None, 'cpu' or 'cuda'"):
        voxel_grid(t, x, y, p, 3, 5, 7, device="gpu")


@FAST
@given(event_windows())
def test_event_frame_counts_match_reference(events):
    _t, x, y, p, height, width = events
    frame = event_frame(x, y, p, height, width)
    assert frame.dtype == np.float32 and frame.shape == (2, height, width)
    np.testing.assert_array_equal(frame, event_frame_reference(x, y, p, height, width))
    assert frame.sum() == len(x)
    assert frame[1].sum() == np.count_nonzero(p == 1)  # channel 1 is ON


@FAST
@given(event_windows(), st.floats(1.0, 1e7), st.data())
def test_time_surface_matches_reference(events, tau_us, data):
    t, x, y, p, height, width = events
    t_ref = data.draw(st.integers(int(t[0]) - 10, int(t[-1]) + 10)) if len(t) else 0
    surface = time_surface(t, x, y, p, height, width, t_ref, tau_us)
    assert surface.dtype == np.float32 and surface.shape == (2, height, width)
    reference = time_surface_reference(t, x, y, p, height, width, t_ref, tau_us)
    np.testing.assert_allclose(surface, reference, rtol=1e-6, atol=1e-30)


@FAST
@given(event_windows(max_events=300), st.data())
def test_frames_windows_equal_separate_calls(events, data):
    t, x, y, p, height, width = events
    n = len(t)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), min_size=2, max_size=6)))
    windows = np.array([*itertools.pairwise(cuts), (cuts[0], cuts[0])], np.int64)
    t_refs = np.array([t[hi - 1] if hi > lo else 0 for lo, hi in windows], np.int64)
    frames = event_frame(x, y, p, height, width, windows=windows)
    surfaces = time_surface(t, x, y, p, height, width, t_refs, 1000.0, windows=windows)
    assert frames.shape == surfaces.shape == (len(windows), 2, height, width)
    for (lo, hi), frame, surface, t_ref in zip(windows, frames, surfaces, t_refs, strict=True):
        np.testing.assert_array_equal(frame, event_frame_reference(x[lo:hi], y[lo:hi], p[lo:hi], height, width))
        reference = time_surface_reference(t[lo:hi], x[lo:hi], y[lo:hi], p[lo:hi], height, width, t_ref, 1000.0)
        np.testing.assert_allclose(surface, reference, rtol=1e-6, atol=1e-30)
    assert not frames[-1].any() and not surfaces[-1].any()


def test_frames_large_window_matches_reference():
    t, x, y, p = random_events(600_000, 30, 40)
    np.testing.assert_array_equal(event_frame(x, y, p, 30, 40), event_frame_reference(x, y, p, 30, 40))
    t_ref = int(t[200_000])
    surface = time_surface(t, x, y, p, 30, 40, t_ref, 5e4)
    np.testing.assert_allclose(surface, time_surface_reference(t, x, y, p, 30, 40, t_ref, 5e4), rtol=1e-6)


def test_frames_reject_bad_input():
    t, x, y, p = random_events(10, 5, 7)
    bad_x = x.copy()
    bad_x[4] = 7
    with pytest.raises(ValueError, match=r"event 4: \(x=7, y=\d+\) is outside the 7x5 sensor"):
        event_frame(bad_x, y, p, 5, 7)
    with pytest.raises(ValueError, match=r"event 4: \(x=7"):
        time_surface(t, bad_x, y, p, 5, 7, 0, 10.0)
    with pytest.raises(ValueError, match="tau_us: expected a positive decay time"):
        time_surface(t, x, y, p, 5, 7, 0, 0.0)
    with pytest.raises(
        ValueError, match=r"t_ref: expected an integer time in µs or an int array of one per window \(2\)"
    ):
        time_surface(t, x, y, p, 5, 7, np.zeros(3, np.int64), 10.0, windows=np.array([[0, 5], [5, 10]], np.int64))


@FAST
@given(event_windows(max_events=150, max_side=8), st.floats(0.05, 0.5), st.integers(1, 40), st.data())
def test_edi_integral_matches_reference(events, c, n_samples, data):
    t, x, y, p, height, width = events
    first = int(t[0]) if len(t) else 0
    last = int(t[-1]) if len(t) else 100
    start = data.draw(st.integers(first - 5, last))
    end = data.draw(st.integers(start + 1, last + 10))
    t_ref = data.draw(st.one_of(st.none(), st.integers(start, end)))
    result = edi_integral(t, x, y, p, c, start, end, n_samples, height, width, t_ref=t_ref)
    assert result.dtype == np.float32 and result.shape == (height, width)
    reference = edi_reference(t, x, y, p, c, start, end, n_samples, height, width, t_ref=t_ref)
    np.testing.assert_allclose(result, reference, rtol=1e-5)


def test_edi_integral_large_input_matches_reference():
    # Enough events for several time-ordered chunks on more than one thread.
    t, x, y, p = random_events(700_000, 20, 30, span_us=100_000)
    start, end = int(t[1000]), int(t[650_000])
    for t_ref in (None, start, end, int(t[40_000])):
        result = edi_integral(t, x, y, p, 0.005, start, end, 8, 20, 30, t_ref=t_ref)
        reference = edi_reference(t, x, y, p, 0.005, start, end, 8, 20, 30, t_ref=t_ref)
        np.testing.assert_allclose(result, reference, rtol=1e-5)


def test_edi_integral_few_events_on_a_large_sensor_match_reference():
    # A short exposure at the DAVIS346's size: the kernel numbers only the few pixels the events touch
    # (two events share a pixel) and every other pixel is exactly 1.
    t, x, y, p = random_events(300, 260, 346, span_us=500)
    x[7], y[7] = x[3], y[3]
    start = int(t[0])
    for t_ref in (None, start, start + 250, start + 499):
        result = edi_integral(t, x, y, p, 0.25, start, start + 500, 32, 260, 346, t_ref=t_ref)
        reference = edi_reference(t, x, y, p, 0.25, start, start + 500, 32, 260, 346, t_ref=t_ref)
        np.testing.assert_allclose(result, reference, rtol=1e-5)
    untouched = np.ones((260, 346), bool)
    untouched[y, x] = False
    assert (result[untouched] == 1.0).all() and not (result[~untouched] == 1.0).all()


def test_edi_integral_single_event_analytic():
    # One ON event at t=650 in the exposure [0, 1000), K=10 samples at 50, 150, ..., 950, tau=500:
    # samples 650..950 (4 of them; an event at a sample time counts for it) see exp(c), 6 see 1.
    t, x, y, p = (np.array([650], np.int64), np.array([1], np.uint16), np.array([0], np.uint16), np.array([1], np.int8))
    result = edi_integral(t, x, y, p, 0.3, 0, 1000, 10, 1, 2)
    np.testing.assert_allclose(result, [[1.0, (6 + 4 * np.exp(0.3)) / 10]], rtol=1e-6)
    # Relative to tau after the event, the 6 earlier samples see exp(-c) instead.
    result = edi_integral(t, x, y, p, 0.3, 0, 1000, 10, 1, 2, t_ref=900)
    np.testing.assert_allclose(result[0, 1], (6 * np.exp(-0.3) + 4) / 10, rtol=1e-6)
    # Events outside the exposure are ignored.
    np.testing.assert_array_equal(edi_integral(t, x, y, p, 0.3, 0, 650, 10, 1, 2), np.ones((1, 2)))


def test_edi_deblurs_a_simulated_blur():
    # A scene whose log intensity changes linearly per pixel: the blurry frame is its mean over the
    # exposure (at the EDI sample times), the events come from the simulator (exact thresholds), and
    # blurry / E must recover the intensity at tau to within the thresholds' quantisation.
    rng = np.random.default_rng(0)
    height, width, c, n_steps, period = 12, 16, 0.05, 200, 20_000
    log_start = np.log(rng.uniform(0.05, 0.2, (height, width)))
    log_gain = rng.uniform(-1.0, 1.2, (height, width))

    def intensity(time_us):  # linear intensity plus the simulator's log offset
        return np.exp(log_start + log_gain * (np.asarray(time_us)[..., None, None] / period))

    times = np.linspace(0, period, n_steps + 1).astype(np.int64)
    events = simulate_events(intensity(times) - 1e-3, times, c_pos=c, c_neg=c, sigma_c=0.0)
    blurry = intensity((np.arange(n_steps) + 0.5) * period / n_steps).mean(axis=0)
    for tau in (0, period // 2, period):
        e = edi_integral(events.t, events.x, events.y, events.p, c, 0, period, n_steps, height, width, t_ref=tau)
        truth = intensity(tau)
        assert np.abs(np.log(blurry / e / truth)).max() < 2 * c
    # At the start of the exposure the blur itself is far larger than that.
    assert np.abs(np.log(blurry / intensity(0))).max() > 8 * c


def test_edi_integral_rejects_bad_input():
    t, x, y, p = random_events(10, 5, 7)
    with pytest.raises(ValueError, match="c: expected a positive contrast threshold"):
        edi_integral(t, x, y, p, 0.0, 0, 10, 4, 5, 7)
    with pytest.raises(ValueError, match=r"exposure: end 5 must be after start 10"):
        edi_integral(t, x, y, p, 0.2, 10, 5, 4, 5, 7)
    with pytest.raises(ValueError, match="n_samples: expected an integer >= 1"):
        edi_integral(t, x, y, p, 0.2, 0, 10, 0, 5, 7)
    with pytest.raises(ValueError, match=r"t_ref=20 must lie within the exposure \[0, 10\]"):
        edi_integral(t, x, y, p, 0.2, 0, 10, 4, 5, 7, t_ref=20)
    start, end = int(t[0]), int(t[-1]) + 1
    unsorted = t.copy()
    unsorted[[3, 6]] = unsorted[[6, 3]]
    with pytest.raises(ValueError, match=r"event 4: t=\d+ is before the previous event's t=\d+; unsorted"):
        edi_integral(unsorted, x, y, p, 0.2, start, end, 4, 5, 7)
    bad_y = y.copy()
    bad_y[2] = 9
    with pytest.raises(ValueError, match=r"event 2: \(x=\d+, y=9\) is outside the 7x5 sensor"):
        edi_integral(t, x, bad_y, p, 0.2, start, end, 4, 5, 7)


def test_cpu_use_never_imports_numba_cuda():
    code = (
        "import sys, numpy as np\n"
        "from evpipe.kernels import voxel_grid, event_frame\n"
        "t = np.arange(5, dtype=np.int64); x = y = np.zeros(5, np.uint16); p = np.ones(5, np.int8)\n"
        "voxel_grid(t, x, y, p, 2, 1, 1); event_frame(x, y, p, 1, 1)\n"
        "assert 'numba.cuda' not in sys.modules, 'numba.cuda was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
