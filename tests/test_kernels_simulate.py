"""ESIM-style event simulator: analytic threshold crossings, refractory period, determinism, state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evpipe.kernels import EventSimulator, simulate_events
from evpipe.runtime.events import Events

LOG_EPS = 1e-3


def ramp_frames(crossings: np.ndarray, threshold: float, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two linear-intensity frames whose log intensities differ by (|k| + 1/2) thresholds, signed like k.

    Half a threshold of margin keeps the end of the ramp away from a crossing.
    """
    delta = np.sign(crossings) * (np.abs(crossings) + 0.5) * threshold
    start = base
    end = np.exp(np.log(start + LOG_EPS) + delta) - LOG_EPS
    assert end.min() >= 0.0 and end.max() <= 1.0
    return start, end


def expected_ramp_events(crossings, threshold, t0, t1, refractory_us=0):
    """Per pixel: crossings j = 1..|k| at t0 + j/(|k| + 1/2) (t1 - t0), rounded, at least t0 + 1."""
    height, width = crossings.shape
    events = []
    for yy in range(height):
        for xx in range(width):
            k = int(crossings[yy, xx])
            last = None
            for j in range(1, abs(k) + 1):
                te = max(int(np.floor(t0 + j / (abs(k) + 0.5) * (t1 - t0) + 0.5)), t0 + 1)
                if last is None or te - last >= refractory_us:
                    events.append((te, xx, yy, 1 if k > 0 else -1))
                    last = te
    return sorted(events, key=lambda e: e[0])


def as_tuples(events: Events) -> list[tuple[int, int, int, int]]:
    return sorted(zip(events.t.tolist(), events.x.tolist(), events.y.tolist(), events.p.tolist(), strict=True))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.floats(0.05, 0.5),
    st.integers(0, 2**32 - 1),
    st.integers(1, 10**7),
)
def test_linear_log_ramp_gives_exactly_k_events_with_analytic_times(height, width, threshold, seed, duration):
    rng = np.random.default_rng(seed)
    max_k = int(np.log(1.0 / 0.2) / threshold) - 1  # keep the brightest frame within [0, 1]
    crossings = rng.integers(-max_k, max_k + 1, (height, width))
    base = np.full((height, width), 0.2)
    start, end = ramp_frames(crossings, threshold, base)
    t0 = 1_000_000
    events = simulate_events([start, end], [t0, t0 + duration], c_pos=threshold, c_neg=threshold, sigma_c=0.0)
    per_pixel = np.zeros((height, width), np.int64)
    np.add.at(per_pixel, (events.y.astype(np.int64), events.x.astype(np.int64)), 1)
    np.testing.assert_array_equal(per_pixel, np.abs(crossings))
    assert as_tuples(events) == sorted(expected_ramp_events(crossings, threshold, t0, t0 + duration))
    assert np.all(np.diff(events.t) >= 0)


def test_refractory_period_drops_events_too_close_to_the_previous_one():
    crossings = np.array([[6, -6, 2]])
    start, end = ramp_frames(crossings, 0.1, np.full((1, 3), 0.3))
    # Crossings every 1000/6.5 ≈ 154 µs on the first two pixels, 400 µs on the third.
    events = simulate_events([start, end], [0, 1000], c_pos=0.1, c_neg=0.1, sigma_c=0.0, refractory_us=200)
    assert as_tuples(events) == sorted(expected_ramp_events(crossings, 0.1, 0, 1000, refractory_us=200))
    per_pixel = np.bincount(events.x.astype(np.int64), minlength=3)
    np.testing.assert_array_equal(per_pixel, [3, 3, 2])


def test_refractory_suppressed_crossings_still_move_the_reference():
    # Up 6.5 thresholds in 1000 µs (crossings every ~154 µs) with a 500 µs refractory period: only
    # the crossings at ~154 and ~769 µs emit. Then down to -0.5 thresholds: all six levels are
    # crossed again (1000 µs apart), which only happens if the dropped crossings moved the reference.
    level = np.log(0.3 + LOG_EPS)
    frame_at = lambda thresholds: np.full((1, 1), np.exp(level + 0.1 * thresholds) - LOG_EPS)  # noqa: E731
    simulator = EventSimulator(1, 1, c_pos=0.1, c_neg=0.1, sigma_c=0.0, refractory_us=500)
    simulator.reset(frame_at(0.0), 0)
    up = simulator.step(frame_at(6.5), 1000)
    assert up.t.tolist() == [154, 769] and up.p.tolist() == [1, 1]
    down = simulator.step(frame_at(-0.5), 8000)
    assert down.t.tolist() == [2500, 3500, 4500, 5500, 6500, 7500] and set(down.p.tolist()) == {-1}


def test_seeded_runs_are_identical_and_seeds_differ():
    rng = np.random.default_rng(3)
    frames = rng.random((4, 20, 30))
    times = [0, 5000, 10000, 15000]
    kwargs = {"sigma_c": 0.05, "refractory_us": 50, "noise_rate_hz": 200.0}
    a = simulate_events(frames, times, seed=7, **kwargs)
    b = simulate_events(frames, times, seed=7, **kwargs)
    c = simulate_events(frames, times, seed=8, **kwargs)
    for name in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.checksum() != c.checksum()
    assert np.all(np.diff(a.t) >= 0)
    assert a.t.min() > 0 and a.t.max() <= 15000


def test_noise_events_follow_the_rate():
    frame = np.full((50, 40), 0.5)
    simulator = EventSimulator(50, 40, noise_rate_hz=100.0, seed=1)
    simulator.reset(frame, 0)
    events = simulator.step(frame, 1_000_000)  # static scene: only noise
    expected = 100.0 * 50 * 40
    assert abs(len(events) - expected) < 5 * np.sqrt(expected)
    assert set(np.unique(events.p).tolist()) == {-1, 1}
    assert events.t.min() > 0 and events.t.max() <= 1_000_000


def test_two_steps_equal_one_simulation_over_the_same_frames():
    rng = np.random.default_rng(0)
    frames = (rng.random((3, 16, 24)) * 255).astype(np.uint8)
    times = [100, 2100, 4100]
    simulator = EventSimulator(16, 24, sigma_c=0.04, noise_rate_hz=50.0, refractory_us=30, seed=5)
    simulator.reset(frames[0], times[0])
    first = simulator.step(frames[1], times[1])
    second = simulator.step(frames[2], times[2])
    assert first.t.max() <= times[1] < second.t.min()
    whole = simulate_events(frames, times, sigma_c=0.04, noise_rate_hz=50.0, refractory_us=30, seed=5)
    joined = Events.concatenate([first, second])
    for name in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name))


def test_ramp_split_over_two_steps_crosses_the_same_thresholds():
    crossings = np.array([[3, -4], [0, 5]])
    start, end = ramp_frames(crossings, 0.2, np.full((2, 2), 0.1))
    middle = np.exp((np.log(start + LOG_EPS) + np.log(end + LOG_EPS)) / 2) - LOG_EPS
    one = simulate_events([start, end], [0, 2000], c_pos=0.2, c_neg=0.2, sigma_c=0.0)
    two = simulate_events([start, middle, end], [0, 1000, 2000], c_pos=0.2, c_neg=0.2, sigma_c=0.0)
    assert len(one) == len(two) == 12
    np.testing.assert_allclose(np.sort(one.t), np.sort(two.t), atol=1)


def test_thresholds_are_drawn_per_pixel_and_clipped():
    simulator = EventSimulator(100, 100, c_pos=0.2, c_neg=0.3, sigma_c=0.05, seed=0)
    assert abs(simulator.c_on.mean() - 0.2) < 0.01 and abs(simulator.c_on.std() - 0.05) < 0.01
    assert abs(simulator.c_off.mean() - 0.3) < 0.01
    clipped = EventSimulator(50, 50, c_pos=0.02, c_neg=0.02, sigma_c=0.05, seed=0)
    assert clipped.c_on.min() == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.step(np.zeros((4, 5)), 10), r"call reset\(frame, t_us\) first"),
        (lambda s: s.reset(np.zeros((5, 4)), 0), r"frame: expected shape \(4, 5\)"),
        (lambda s: s.reset(np.full((4, 5), 1.5), 0), r"float intensities must lie in \[0, 1\]"),
        (lambda s: s.reset(np.zeros((4, 5), np.int32), 0), r"expected uint8 or float in \[0, 1\], got int32"),
        (lambda s: (s.reset(np.zeros((4, 5)), 10), s.step(np.zeros((4, 5)), 10)), r"t_us=10 must be after"),
    ],
)
def test_simulator_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(EventSimulator(4, 5))


def test_simulator_rejects_bad_parameters():
    with pytest.raises(ValueError, match=r"c_pos: expected a threshold >= 0\.01"):
        EventSimulator(4, 5, c_pos=0.0)
    with pytest.raises(ValueError, match="refractory_us: expected a value >= 0"):
        EventSimulator(4, 5, refractory_us=-1)
    with pytest.raises(ValueError, match="2 frames but 3 timestamps"):
        simulate_events(np.zeros((2, 4, 5)), [0, 1, 2])
    with pytest.raises(ValueError, match=r"frames must be gray \(H, W\) images, got shape \(4, 5, 3\)"):
        simulate_events(np.zeros((2, 4, 5, 3)), [0, 1])
