"""The voxelizer node: its windows equal direct voxel_grid calls on the same event ranges, whatever the
interleaving of its inputs; bounded buffering with counted drops; the event buffer."""

from __future__ import annotations

import random

import numpy as np
import pytest

import evpipe.nodes.transforms.voxelizer as voxelizer_module
from evpipe.kernels import voxel_grid
from evpipe.nodes.sources.replay import Replay
from evpipe.nodes.transforms.voxelizer import EventBuffer, EventIntake, Voxelizer
from evpipe.runtime.events import Events, Frame
from evpipe.runtime.wire import Message
from tests.data_fixtures.recordings import random_events

W, H = 40, 30


def packets(events: Events, size: int) -> list[tuple[str, Message]]:
    return [("events", Message.from_events(events[start:start + size], width=W, height=H))
            for start in range(0, len(events), size)]


def time_slices(events: Events, start: int, slice_us: int, until: int) -> list[tuple[str, Message]]:
    """Packets of [t, t + slice_us) from ``start`` up to ``until`` that say so (meta watermark_us), as the
    replay source sends them."""
    return [("events", Message.from_events(events.time_slice(t, t + slice_us), width=W, height=H,
                                           watermark_us=t + slice_us - 1))
            for t in range(start, until, slice_us)]


def frame_message(t: int, exposure_us: int = 0) -> tuple[str, Message]:
    return "frames", Message.from_frame(Frame(np.zeros((H, W), np.uint8), t, exposure_us))


def run(inputs: list[tuple[str, Message]], **params) -> tuple[list[Message], dict, Voxelizer]:
    node = Voxelizer("vox", params)
    out: list[Message] = []
    reports: list[dict] = []
    node.attach_emitter(lambda port, msg: out.append(msg))
    node.attach_reporter(reports.append)
    node.start()
    for port, msg in inputs:
        node.process(port, msg)
    node.stop()
    return out, reports[-1], node


def direct(events: Events, lo: int, hi: int, bins: int = 5) -> np.ndarray:
    """Voxel grid of the events with lo <= t < hi, straight from the kernel."""
    part = events.time_slice(lo, hi)
    return voxel_grid(part.t, part.x, part.y, part.p, bins, H, W)


def interleave(events_in: list, frames_in: list, seed: int) -> list:
    """Frames slotted among the event packets at random (arrival order across two edges is not fixed)."""
    rng = random.Random(seed)
    merged, i, j = [], 0, 0
    while i < len(events_in) or j < len(frames_in):
        if j < len(frames_in) and (i == len(events_in) or rng.random() < 0.2):
            merged.append(frames_in[j])
            j += 1
        else:
            merged.append(events_in[i])
            i += 1
    return merged


@pytest.fixture
def stream() -> Events:
    return random_events(60_000, W, H, t0=0, rate_per_us=0.3, seed=11)  # ~200 ms


def test_frame_sync_windows_equal_direct_voxel_grids_for_any_interleaving(stream):
    frame_times = list(range(10_000, 190_000, 40_000))
    frames_in = [frame_message(t) for t in frame_times]
    reference = None
    for seed in range(4):
        out, report, _ = run(interleave(packets(stream, 997), frames_in, seed), mode="frame_sync",
                             predictions_per_frame=8)
        windows = {(m.meta["t_anchor"], m.meta["t_target"]): m for m in out}
        # The first anchor has no measured interval; later ones: 8 targets 5 ms apart, each from the anchor.
        expected_keys = {(a, a + 5_000 * k) for a in frame_times[1:] for k in range(1, 9)
                         if a + 5_000 * k <= int(stream.t[-1])}
        assert set(windows) == expected_keys and len(out) == len(expected_keys)
        for (a, target), msg in windows.items():
            np.testing.assert_array_equal(msg.arrays["voxel"], direct(stream, a + 1, target + 1))
            assert msg.meta["events"] == len(stream.time_slice(a + 1, target + 1))
            assert (msg.meta["t_start"], msg.meta["t_end"], msg.t_range) == (a + 1, target + 1, (a + 1, target))
        assert report["anchors_without_interval"] == 1 and report["windows"] == len(expected_keys)
        assert report["cut_at_end"] == 8 * (len(frame_times) - 1) - len(expected_keys)
        keys = sorted(windows)
        assert reference is None or keys == reference
        reference = keys


def test_frame_sync_on_a_real_recording_equals_direct_voxel_grids(shared_data):
    node = Replay("replay", {"path": str(shared_data / "davis346_street/davis346_street_first1.8s_zstd.aedat4"),
                             "pace": "fast", "imu": False})
    node.start()
    replayed = list(node.produce())
    node.stop()
    events = Events.concatenate([m.events() for p, m in replayed if p == "events"])
    out, report, _ = run(replayed, mode="frame_sync", frame_interval_us=40_000, predictions_per_frame=4)
    assert report["windows"] == len(out) > 150 and report["events_in"] == len(events)
    for msg in out[::7]:
        lo, hi = msg.meta["t_start"], msg.meta["t_end"]
        part = events.time_slice(lo, hi)
        np.testing.assert_array_equal(msg.arrays["voxel"], voxel_grid(part.t, part.x, part.y, part.p, 5, 260, 346))


def test_window_mode_time_and_count(stream):
    out, report, _ = run(packets(stream, 1500), mode="window", window_us=7_000, bins=3)
    first_k, last_k = int(stream.t[0]) // 7_000, int(stream.t[-1]) // 7_000
    assert [m.meta["t_anchor"] for m in out] == [k * 7_000 for k in range(first_k, last_k + 1)]
    for msg in out:
        np.testing.assert_array_equal(msg.arrays["voxel"], direct(stream, msg.meta["t_start"], msg.meta["t_end"], 3))
    assert sum(m.meta["events"] for m in out) == len(stream) and report["events_unused"] == 0

    out, report, _ = run(packets(stream, 1500), mode="window", window_events=4_096)
    assert [m.meta["events"] for m in out] == [4_096] * (len(stream) // 4_096) + [len(stream) % 4_096]
    for i, msg in enumerate(out):
        part = stream[i * 4_096:(i + 1) * 4_096]
        np.testing.assert_array_equal(msg.arrays["voxel"], voxel_grid(part.t, part.x, part.y, part.p, 5, H, W))


def test_window_mode_empty_windows(stream):
    gap = Events.concatenate([stream.time_slice(0, 30_000), stream.time_slice(80_000, 100_000)])
    full, _, _ = run(packets(gap, 800), mode="window", window_us=10_000)
    sparse, _, _ = run(packets(gap, 800), mode="window", window_us=10_000, emit_empty=False)
    empty = [m for m in full if m.meta["events"] == 0]
    assert len(empty) == 5 and not np.any(empty[0].arrays["voxel"])
    assert [m.meta["t_anchor"] for m in sparse] == [m.meta["t_anchor"] for m in full if m.meta["events"]]


def test_exposure_windows_hold_the_events_of_each_frame_exposure(stream):
    frames_in = [frame_message(t, 6_000) for t in (20_000, 60_000, 100_000)] + [frame_message(140_000)]
    out, report, _ = run(interleave(packets(stream, 2_000), frames_in, 3), mode="exposure")
    assert [m.meta["t_anchor"] for m in out] == [20_000, 60_000, 100_000]
    for msg in out:
        t = msg.meta["t_anchor"]
        np.testing.assert_array_equal(msg.arrays["voxel"], direct(stream, t - 3_000, t + 3_000))
    assert report["frames_ignored"] == 1  # no exposure time


def test_windows_become_ready_together_are_one_batched_kernel_call(stream, monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append(len(kwargs["windows"]))
        return voxel_grid(*args, **kwargs)

    monkeypatch.setattr(voxelizer_module, "voxel_grid", counted)
    frames_in = [frame_message(10_000), frame_message(50_000)]
    out, _, _ = run([*frames_in, *packets(stream, len(stream))], mode="frame_sync", max_batch=5)
    assert len(out) == 8 and calls == [5, 3]  # the warm-up in start() loads the kernel without calling it


def test_memory_stays_bounded_and_drops_are_counted(stream):
    span = int(stream.t[-1]) + 1
    long = Events.concatenate([Events(stream.t + k * span, stream.x, stream.y, stream.p) for k in range(10)])
    node = Voxelizer("vox", {"mode": "frame_sync", "max_buffer_us": 50_000})
    node.attach_emitter(lambda port, msg: None)
    reports: list[dict] = []
    node.attach_reporter(reports.append)
    node.start()
    held = []
    for port, msg in packets(long, 2_000):  # no frames at all: events wait for an anchor, at most 50 ms of them
        node.process(port, msg)
        held.append(len(node.stream.buffer))
    assert max(held) < 2 * 50_000 * 0.3 + 2_000
    node.process(*frame_message(1_000))  # far behind the events: its windows' events are gone
    node.stop()
    report = reports[-1]
    assert report["events_unused"] == len(long) and report["windows"] == 0
    assert report["windows_skipped_late"] == 0 and report["anchors_without_interval"] == 1

    early, rest = long.time_slice(0, 40_000), long.time_slice(40_000, 10**9)
    _, report, _ = run([frame_message(10_000), *packets(early, 2_000), frame_message(15_000), *packets(rest, 2_000)],
                       mode="frame_sync", frame_interval_us=40_000, max_buffer_us=50_000)
    assert report["windows"] == 16 and report["windows_skipped_late"] == 0  # 25 ms late: its events are kept
    late, report, _ = run([*packets(long, 2_000), frame_message(500_000)], mode="frame_sync",
                          frame_interval_us=40_000, max_buffer_us=50_000)
    assert report["windows_skipped_late"] == 8 and not late


def test_out_of_order_and_out_of_sensor_events_are_dropped_and_counted(stream):
    part = stream[:3000]
    t = part.t.copy()
    t[2000] = t[100]  # goes back in time
    x = part.x.copy()
    x[2500] = W + 3  # outside the sensor
    bad = Events(t, x, part.y, part.p)
    out, report, _ = run(packets(bad, 1000), mode="window", window_events=10_000)
    assert report["events_out_of_order"] == 1 and report["events_outside_sensor"] == 1
    assert out[0].meta["events"] == 2998


def test_watermarks_release_windows_without_waiting_for_later_events(stream):
    frames_in = [frame_message(10_000), frame_message(50_000)]
    node = Voxelizer("vox", {"mode": "frame_sync", "predictions_per_frame": 4})
    out: list[Message] = []
    node.attach_emitter(lambda port, msg: out.append(msg))
    node.start()
    for port, msg in [*frames_in, *time_slices(stream, 1, 1_000, 90_001)]:  # the last slice ends at 90 ms
        node.process(port, msg)
    # The target at 90 ms goes out with the slice that ends there: no later event has to arrive first.
    assert [m.meta["t_target"] for m in out] == [60_000, 70_000, 80_000, 90_000]
    np.testing.assert_array_equal(out[-1].arrays["voxel"], direct(stream, 50_001, 90_001))


def test_event_buffer_appends_and_releases_in_amortised_constant_time():
    buffer = EventBuffer(capacity=16)
    events = random_events(50_000, W, H, seed=2)
    kept = 0
    capacities = []
    for start in range(0, len(events), 777):
        buffer.append(events[start:start + 777])
        released = buffer.release_before(int(events.t[max(start - 3_000, 0)]))
        kept += len(released)
        capacities.append(len(buffer._t))
        np.testing.assert_array_equal(buffer.t, events.t[kept:start + 777])
    assert max(capacities) <= 4 * (3_000 + 2 * 777)  # bounded by what is live, not by what went through
    assert kept + len(buffer) == len(events)


def test_event_intake_keeps_order_counts_drops_and_tracks_the_watermark():
    intake = EventIntake()
    first = Events.from_arrays(t=[10, 20, 15, 30], x=[1, 2, 3, 50], y=[1, 2, 3, 4], p=[1, -1, 1, 1])
    kept, n_back, n_outside = intake.accept(Message.from_events(first, width=W, height=H), (W, H))
    assert (n_back, n_outside) == (1, 1)  # t=15 goes back in time; x=50 is outside the 40-px-wide sensor
    np.testing.assert_array_equal(kept.t, [10, 20])
    assert intake.t_last == 20 and intake.watermark == 29  # the packet's newest event (30) proves t <= 29
    late = Events.from_arrays(t=[19, 25], x=[0, 0], y=[0, 0], p=[1, 1])
    kept, n_back, _ = intake.accept(Message.from_events(late, width=W, height=H, watermark_us=40))
    assert n_back == 1 and kept.t.tolist() == [25] and intake.watermark == 40
    assert intake.known_until(final=False) == 40 and intake.buffer.t.tolist() == [10, 20, 25]
    assert intake.release_before(21).tolist() == [10, 20] and intake.released_before == 21
    assert len(intake.release_before(5)) == 0 and intake.released_before == 21  # never moves back
