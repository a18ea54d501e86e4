"""Round trips through every reader on small files written by tests/data_fixtures (format edge cases
the real samples do not reach: clock wraps, vector words, DSEC offsets, aliases, units)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from evpipe.nodes.sources.readers import RecordingError, detect_format, open_recording
from evpipe.runtime.events import Events
from tests.data_fixtures.recordings import (
    encode_evt3,
    event_arrays,
    random_events,
    write_aedat4,
    write_event_stream,
    write_evt2,
    write_evt3,
    write_h5_dsec,
    write_h5_plain,
    write_rpg_text,
)


def read_all(recording, **kwargs) -> Events:
    return Events.concatenate(list(recording.events(**kwargs)))


def canonical(events: Events) -> Events:
    """Sorted by (t, y, p, x) so decoders that reorder events within a timestamp compare equal."""
    return events[np.lexsort((events.x, events.p, events.y, events.t))]


def assert_same_events(a: Events, b: Events) -> None:
    for name in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def unique_events(events: Events) -> Events:
    key = np.stack([events.t, events.x, events.y, events.p]).T
    _, first = np.unique(key, axis=0, return_index=True)
    return events[np.sort(first)]


def test_aedat4_round_trip_with_colour_frames_and_windows(tmp_path):
    events = random_events(6000, 64, 48, t0=1_700_000_000_000_000, seed=12)
    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[..., 0], bgr[..., 2] = 10, 200
    frames = [(int(events.t[100]), 1000, bgr), (int(events.t[3000]), 2000, np.full((48, 64), 7, np.uint8))]
    path = write_aedat4(tmp_path / "a.aedat4", events, 64, 48, frames=frames)
    with open_recording(path) as rec:
        assert (rec.sensor_size, rec.t_offset) == ((64, 48), int(events.t[0]))
        assert_same_events(read_all(rec, chunk_events=1234), events)
        a, b = int(events.t[2222]), int(events.t[4444])
        assert_same_events(read_all(rec, t_start=a, t_stop=b), events.time_slice(a, b))
        colour, gray = rec.frames()
        assert (colour.t, colour.exposure_us) == (frames[0][0] + 500, 1000)  # exposure midpoint
        assert colour.image.shape == (48, 64, 3) and colour.image[0, 0].tolist() == [200, 0, 10]  # RGB
        assert (gray.t, gray.image.shape) == (frames[1][0] + 1000, (48, 64))
        assert [f.t for f in rec.frames(t_start=colour.t + 1)] == [gray.t]


def test_evt2_round_trip_across_the_34_bit_clock_wrap(tmp_path):
    events = random_events(5000, 640, 480, t0=(1 << 34) - 1500, seed=1)
    path = write_evt2(tmp_path / "wrap.raw", events, geometry=(640, 480))
    with open_recording(path) as rec:
        assert (rec.format, rec.sensor_size, rec.sensor_size_source) == ("evt2", (640, 480), "header")
        assert_same_events(read_all(rec, chunk_events=333), events)


def test_evt3_round_trip_with_vectors_and_the_24_bit_clock_wrap(tmp_path):
    # Dense bursts: many events share t and y at neighbouring x, so the encoder emits vector words.
    rng = np.random.default_rng(2)
    n = 20_000
    t = (1 << 24) - 3000 + np.sort(rng.integers(0, 6000, n))
    y = rng.integers(0, 4, n) * 100
    x = rng.integers(0, 40, n) + 600
    events = unique_events(Events.from_arrays(t, x, y, rng.integers(0, 2, n)))
    words = encode_evt3(events)
    kinds = set((words >> 12).tolist())
    assert {0x2, 0x3, 0x4, 0x5, 0x6, 0x8} <= kinds
    path = write_evt3(tmp_path / "wrap.raw", events, geometry=(1280, 720))
    with open_recording(path) as rec:
        decoded = read_all(rec, chunk_events=1000)
    assert_same_events(canonical(decoded), canonical(events))


def test_evt3_stray_time_low_before_the_real_one_changes_nothing(tmp_path):
    events = unique_events(random_events(3000, 1280, 720, seed=3))
    stray_t = int(events.t[1500])
    clean = write_evt3(tmp_path / "clean.raw", events, geometry=(1280, 720))
    stray = write_evt3(tmp_path / "stray.raw", events, geometry=(1280, 720), stray_before_t=stray_t)
    assert stray.stat().st_size == clean.stat().st_size + 2
    with open_recording(clean) as a, open_recording(stray) as b:
        assert_same_events(read_all(b), read_all(a))
        assert len(b.issues) == 0


def test_raw_data_starting_with_a_percent_byte_is_not_header(tmp_path):
    # The first word, TIME_HIGH 0x025 (0x8025), is stored as the bytes 0x25 ('%') 0x80.
    events = unique_events(random_events(500, 64, 48, t0=0x025 << 12, seed=13))
    path = write_evt3(tmp_path / "percent.raw", events, geometry=(64, 48))
    header_size = len(b"% date 2024-01-01 00:00:00\n% evt 3.0\n% geometry 64x48\n")
    assert path.read_bytes()[header_size : header_size + 2] == b"%\x80"
    with open_recording(path) as rec:
        assert_same_events(canonical(read_all(rec)), canonical(events))


def test_event_stream_round_trip_with_overflow_bytes(tmp_path):
    events = random_events(4000, 346, 260, rate_per_us=0.002, seed=4)  # gaps of ~500 µs need 0xFF bytes
    path = write_event_stream(tmp_path / "gaps.es", events, 346, 260)
    assert b"\xff" in path.read_bytes()[20:]
    with open_recording(path) as rec:
        assert (rec.format, rec.sensor_size) == ("event-stream", (346, 260))
        assert_same_events(read_all(rec, chunk_events=777), events)


def test_rpg_text_round_trip_with_frames_comments_and_exponents(tmp_path):
    events = random_events(3000, 240, 180, seed=5)
    frames = [(int(t), np.full((180, 240), i * 20, np.uint8)) for i, t in enumerate(events.t[::1000])]
    path = write_rpg_text(tmp_path / "seq", events, frames=frames)
    text = path.read_text().splitlines()
    # A comment, a blank line and exponent notation are all valid input.
    t0, x0, y0, p0 = text[0].split()
    text[0] = f"{float(t0) * 1e3:.12g}e-3 {x0} {y0} {p0}"
    path.write_text("# t x y p\n\n" + "\n".join(text) + "\n")
    with open_recording(tmp_path / "seq") as rec:  # the sequence folder
        assert rec.format == "rpg-text" and rec.sensor_size == (240, 180)
        assert_same_events(read_all(rec, chunk_events=500), events)
        got = list(rec.frames())
        assert [f.t for f in got] == [t for t, _ in frames]
        assert [int(f.image[0, 0]) for f in got] == [int(img[0, 0]) for _, img in frames]
        assert len(rec.issues) == 0


def test_rpg_imu_text_is_converted_to_g_and_degrees_per_second(tmp_path):
    events = random_events(10, 240, 180, seed=6)
    write_rpg_text(tmp_path, events)
    (tmp_path / "imu.txt").write_text("0.001000 0.0 0.0 9.80665 3.14159265358979 0 0\n0.002 1 2 3 0 0 0.5\n")
    with open_recording(tmp_path / "events.txt", sensor_size=(240, 180)) as rec:
        (imu,) = list(rec.imu())
    np.testing.assert_array_equal(imu.t, [1000, 2000])
    np.testing.assert_allclose(imu.accel[0], [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(imu.gyro[0], [180, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(imu.gyro[1, 2], np.degrees(0.5), rtol=1e-6)


def test_hdf5_dsec_layout_yields_absolute_times_and_seeks_with_ms_to_idx(tmp_path):
    t_offset = 1_600_000_000_000_000
    events = random_events(30_000, 640, 480, t0=t_offset + 100, rate_per_us=0.05, seed=7)
    path = write_h5_dsec(tmp_path / "dsec.h5", events, t_offset=t_offset)
    with open_recording(path, sensor_size=(640, 480)) as rec:
        assert (rec.format, rec.layout, rec.t_offset) == ("hdf5", "dsec", t_offset)
        assert_same_events(read_all(rec, chunk_events=4096), events)
        assert rec.time_range() == (int(events.t[0]), int(events.t[-1]) + 1)
        for a, b in [
            (t_offset + 123_456, t_offset + 234_567),
            (t_offset + 99, t_offset + 1_000),
            (0, t_offset + 500),
        ]:
            assert_same_events(read_all(rec, t_start=a, t_stop=b), events.time_slice(a, b))


def test_hdf5_plain_root_layout_with_aliases_and_float_seconds(tmp_path):
    events = random_events(2000, 100, 80, seed=8)
    arrays = {"ts": events.t / 1e6, "x": events.x, "y": events.y, "pol": (events.p > 0).astype(np.int8)}
    path = write_h5_plain(tmp_path / "plain.h5", arrays, width=100, height=80)
    with open_recording(path) as rec:
        assert (rec.layout, rec.sensor_size, rec.sensor_size_source) == ("plain", (100, 80), "header")
        assert rec.t_offset == int(events.t[0])
        assert_same_events(read_all(rec), events)
    arrays_ns = {**event_arrays(events), "t": events.t * 1000}
    path = write_h5_plain(tmp_path / "ns.h5", arrays_ns, group="events", width=100, height=80)
    with h5py.File(path, "a") as f:
        f["events/t"].attrs["units"] = "ns"
    with open_recording(path) as rec:
        assert_same_events(read_all(rec), events)


def test_npz_separate_arrays_structured_member_and_memory_mapped_npy(tmp_path):
    events = random_events(5000, 64, 48, seed=9)
    np.savez(tmp_path / "sep.npz", t=events.t, x=events.x, y=events.y, p=(events.p > 0), sensor_size=[64, 48])
    structured = np.rec.fromarrays([events.t, events.x, events.y, events.p], names="timestamp,x,y,polarity")
    np.savez_compressed(tmp_path / "rec.npz", events=structured)
    np.save(tmp_path / "rec.npy", structured)
    for name, fmt, source in [
        ("sep.npz", "npz", "header"),
        ("rec.npz", "npz", "argument"),
        ("rec.npy", "npy", "argument"),
    ]:
        size = None if source == "header" else (64, 48)
        with open_recording(tmp_path / name, sensor_size=size) as rec:
            assert (rec.format, rec.sensor_size, rec.sensor_size_source) == (fmt, (64, 48), source)
            assert_same_events(read_all(rec, chunk_events=999), events)
            a, b = int(events.t[1234]), int(events.t[4321])
            assert_same_events(read_all(rec, t_start=a, t_stop=b), events.time_slice(a, b))


def test_format_is_detected_from_content_not_the_file_name(tmp_path):
    events = random_events(100, 64, 48, seed=10)
    cases = {
        "evt3": write_evt3(tmp_path / "a.bin", events, geometry=(64, 48)),
        "evt2": write_evt2(tmp_path / "b.dat", events, geometry=(64, 48)),
        "event-stream": write_event_stream(tmp_path / "c.raw", events, 64, 48),
        "hdf5": write_h5_plain(tmp_path / "d.npz", event_arrays(events), width=64, height=48),
        "rpg-text": write_rpg_text(tmp_path / "e", events, name="stream.log"),
    }
    for expected, path in cases.items():
        assert detect_format(path) == expected
        with open_recording(path, sensor_size=(64, 48)) as rec:
            assert rec.format == expected and len(read_all(rec)) == 100


def test_events_argument_validation(tmp_path):
    events = random_events(100, 64, 48, seed=11)
    path = write_evt2(tmp_path / "a.raw", events, geometry=(64, 48))
    with open_recording(path) as rec:
        for bad in (0, -3, 2.5, True):
            with pytest.raises(ValueError, match="chunk_events"):
                list(rec.events(chunk_events=bad))
        assert list(rec.events(t_start=500, t_stop=500)) == []
    with pytest.raises(ValueError, match="on_error"):
        open_recording(path, on_error="ignore")
    with pytest.raises(ValueError, match="sensor_size"):
        open_recording(path, sensor_size=(0, 10))
    with pytest.raises(RecordingError, match="cannot open"):
        open_recording(tmp_path / "missing.raw")
