"""Recording readers against the real files in ../shared/data, each checked by an independent reader
(dv-processing for AEDAT4, h5py + numpy for HDF5, numpy.loadtxt for text, the data README's counts and
spans plus a separate vectorised timestamp derivation for Prophesee and Event Stream)."""

from __future__ import annotations

import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from evpipe.nodes.sources.readers import (
    RecordingWarning,
    describe,
    format_description,
    open_recording,
)
from evpipe.runtime.events import Events, events_checksum
from tests.conftest import SHARED_DATA


def data_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real recording {path} is absent (../shared/data is not part of a fresh clone)")
    return path


def read_all(recording, **kwargs) -> Events:
    return Events.concatenate(list(recording.events(**kwargs)))


def assert_same_events(a: Events, b: Events) -> None:
    for name in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# --------------------------------------------------------------------------------- AEDAT4


def dv_events(path: Path) -> np.ndarray:
    import dv_processing as dv

    reader = dv.io.MonoCameraRecording(str(path))
    batches = []
    while (batch := reader.getNextEventBatch()) is not None:
        batches.append(batch.numpy())
    return np.concatenate(batches)


def test_aedat4_davis346_matches_dv_processing():
    import dv_processing as dv

    path = data_file("davis346_street/davis346_street_first1.8s_zstd.aedat4")
    reference = dv_events(path)
    dv_reader = dv.io.MonoCameraRecording(str(path))
    start, end = dv_reader.getTimeRange()
    with open_recording(path) as rec:
        assert rec.format == "aedat4"
        assert rec.sensor_size == (346, 260)
        events = read_all(rec, chunk_events=10_000)
        assert len(events) == len(reference) == 59_684
        assert events.checksum() == events_checksum(
            reference["timestamp"], reference["x"], reference["y"], np.where(reference["polarity"] > 0, 1, -1)
        )
        assert np.all(np.diff(events.t) >= 0)
        assert rec.time_range() == (start, end + 1)
        assert rec.t_offset == start
        frames = list(rec.frames())
        dv_frames = dv_reader.getFramesTimeRange(start, end + 1)
        assert len(frames) == len(dv_frames) == 45
        for frame, dv_frame in zip(frames, dv_frames, strict=True):
            exposure = dv_frame.exposure // datetime.timedelta(microseconds=1)
            assert exposure == frame.exposure_us == 500
            assert frame.t == dv_frame.timestamp + exposure // 2  # dv's timestamp is the exposure start
            np.testing.assert_array_equal(frame.image, dv_frame.image.reshape(260, 346))
        imu = list(rec.imu())
        dv_imu = dv_reader.getImuTimeRange(start, end + 1)
        t = np.concatenate([b.t for b in imu])
        accel = np.concatenate([b.accel for b in imu])
        gyro = np.concatenate([b.gyro for b in imu])
        assert len(t) == len(dv_imu) == 1798
        np.testing.assert_array_equal(t, [s.timestamp for s in dv_imu])
        np.testing.assert_allclose(accel[:, 2], [s.accelerometerZ for s in dv_imu], rtol=1e-6)
        np.testing.assert_allclose(gyro[:, 0], [s.gyroscopeX for s in dv_imu], rtol=1e-6)
        assert len(rec.issues) == 0


def test_aedat4_dvxplorer_events_and_imu_without_frames():
    import dv_processing as dv

    path = data_file("dvxplorer/dvxplorer_sample.aedat4")
    reference = dv_events(path)
    with open_recording(path) as rec:
        assert rec.sensor_size == (320, 240)
        events = read_all(rec)
        assert len(events) == 111_954
        assert events.checksum() == events_checksum(
            reference["timestamp"], reference["x"], reference["y"], np.where(reference["polarity"] > 0, 1, -1)
        )
        assert list(rec.frames()) == []
        dv_reader = dv.io.MonoCameraRecording(str(path))
        start, end = dv_reader.getTimeRange()
        assert sum(len(b.t) for b in rec.imu()) == len(dv_reader.getImuTimeRange(start, end + 1))


# ----------------------------------------------------------------------------------- HDF5


def test_hdf5_davis346_matches_h5py_and_its_aedat4_twin():
    path = data_file("davis346_street/davis346_street_first1.8s.h5")
    twin = data_file("davis346_street/davis346_street_first1.8s_zstd.aedat4")
    with h5py.File(path) as f:
        ref = Events.from_arrays(f["events/t"][:], f["events/x"][:], f["events/y"][:], f["events/p"][:])
        images = f["frames/images"][:]
    with open_recording(path) as rec, open_recording(twin) as twin_rec:
        assert (rec.format, rec.sensor_size, rec.sensor_size_source) == ("hdf5", (346, 260), "header")
        events = read_all(rec, chunk_events=8192)
        assert_same_events(events, ref)
        assert events.checksum() == read_all(twin_rec).checksum()
        assert rec.time_range() == twin_rec.time_range()
        assert rec.t_offset == twin_rec.t_offset
        frames = list(rec.frames())
        assert [f.t for f in frames] == [f.t for f in twin_rec.frames()]
        np.testing.assert_array_equal(np.stack([f.image for f in frames]), images)
        # The file's IMU columns say g and deg/s but hold m/s² and rad/s: read as such, with a warning.
        with pytest.warns(RecordingWarning, match="m/s²"):
            imu = list(rec.imu())
        twin_imu = list(twin_rec.imu())
        np.testing.assert_array_equal(np.concatenate([b.t for b in imu]), np.concatenate([b.t for b in twin_imu]))
        np.testing.assert_allclose(
            np.concatenate([b.accel for b in imu]),
            np.concatenate([b.accel for b in twin_imu]),
            rtol=1e-3,
            atol=1e-4,
        )
        np.testing.assert_allclose(
            np.concatenate([b.gyro for b in imu]),
            np.concatenate([b.gyro for b in twin_imu]),
            rtol=1e-4,
            atol=1e-4,
        )
        assert rec.issues.by_kind() == {"imu_units_corrected": 1798}


def test_ecd_hdf5_and_text_agree_with_h5py_and_loadtxt():
    h5_path = data_file("ecd_slider_depth/events.h5")
    txt_path = data_file("ecd_slider_depth/events_first50k.txt")
    with h5py.File(h5_path) as f:
        ref = Events.from_arrays(f["events/t"][:], f["events/x"][:], f["events/y"][:], f["events/p"][:])
        frame_t = f["frames/t"][:]
    table = np.loadtxt(txt_path)
    txt_ref = Events.from_arrays(np.rint(table[:, 0] * 1e6).astype(np.int64), table[:, 1], table[:, 2], table[:, 3])
    with open_recording(h5_path) as rec:
        events = read_all(rec)
        assert len(events) == 1_078_541
        assert events.checksum() == ref.checksum()
        assert rec.sensor_size == (240, 180)
        assert rec.time_range() == (0, 3_404_081)  # first frame at 0, last event at 3,404,080 µs
        frames = list(rec.frames())
        assert len(frames) == 87 and frames[0].image.shape == (180, 240)
        np.testing.assert_array_equal([f.t for f in frames], frame_t)
    with open_recording(txt_path) as rec:
        assert rec.format == "rpg-text"
        assert (rec.sensor_size, rec.sensor_size_source) == ((240, 180), "header")  # from the first image
        events_txt = read_all(rec, chunk_events=4096)
        assert len(events_txt) == 50_000
        assert events_txt.checksum() == txt_ref.checksum()
        assert_same_events(events_txt, ref[:50_000])  # the text file is the first 50,000 events
        text_frames = list(rec.frames())
        np.testing.assert_array_equal([f.t for f in text_frames], frame_t)
        np.testing.assert_array_equal(text_frames[5].image, frames[5].image)


# ------------------------------------------------------------------------------ Prophesee


def evt3_times_by_words(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-event timestamps derived without a state machine: forward-fill the latest TIME_HIGH and
    TIME_LOW over the words and repeat each time by the number of events its word carries. Returns
    (timestamps applying every TIME_LOW, timestamps of a decoder that never lets time decrease)."""
    data = path.read_bytes()
    start = 0
    while data[start : start + 1] == b"%":
        start = data.index(b"\n", start) + 1
    words = np.frombuffer(data[start:], dtype="<u2").astype(np.int64)
    kind = words >> 12
    index = np.arange(len(words))
    last_high = np.maximum.accumulate(np.where(kind == 0x8, index, 0))
    last_low = np.maximum.accumulate(np.where(kind == 0x6, index, 0))
    time = ((words[last_high] & 0xFFF) << 12) | (words[last_low] & 0xFFF)
    clamped = np.maximum.accumulate(np.where(kind == 0x6, time, 0))
    bits = np.array([bin(v).count("1") for v in range(4096)])
    per_word = np.where(kind == 0x2, 1, 0) + np.where(kind == 0x4, bits[words & 0xFFF], 0)
    per_word += np.where(kind == 0x5, bits[words & 0xFF], 0)
    return np.repeat(time, per_word), np.repeat(clamped, per_word)


def test_evt3_sample_count_span_and_stray_time_low():
    path = data_file("prophesee_evt3/evt3_sample.raw")
    with open_recording(path, sensor_size=(1280, 720)) as rec:
        assert rec.format == "evt3"
        events = read_all(rec, chunk_events=50_000)
        assert len(events) == 219_596
        assert (int(events.t[0]), int(events.t[-1] - events.t[0])) == (11_718_656, 8_801)  # 8.8 ms, not 54 ms
        assert np.all(np.diff(events.t) >= 0)
        assert int(events.x.max()) < 1280 and int(events.y.max()) < 720
        assert len(rec.issues) == 0 and rec.t_offset == 0
    literal, clamped = evt3_times_by_words(path)
    np.testing.assert_array_equal(events.t, literal)
    # The stray TIME_LOW words only matter to a decoder that forbids time going back.
    moved = clamped != literal
    assert 0 < moved.mean() < 0.01 and int((clamped - literal).max()) <= 11
    with pytest.warns(RecordingWarning, match="inferred 1280x720"), open_recording(path) as rec:
        assert rec.sensor_size_source == "inferred"


def test_evt2_sample_count_and_span():
    path = data_file("prophesee_evt2/sparklers_evt2.raw")
    with open_recording(path, sensor_size=(640, 480)) as rec:
        assert rec.format == "evt2"
        events = read_all(rec)
        assert len(events) == 521_252
        assert int(events.t[-1] - events.t[0]) == 95_871  # 95.9 ms
        assert np.all(np.diff(events.t) >= 0)
        assert int(events.x.max()) < 640 and int(events.y.max()) < 480
        assert rec.time_range() == (int(events.t[0]), int(events.t[-1]) + 1)
    # Independently: forward-fill each CD word's latest TIME_HIGH (the file has no clock wrap).
    data = path.read_bytes()
    words = np.frombuffer(data[data.index(b"% evt 2.0\n") + 10 :], dtype="<u4").astype(np.int64)
    kind = words >> 28
    high = words[np.maximum.accumulate(np.where(kind == 0x8, np.arange(len(words)), 0))] & 0x0FFFFFFF
    cd = kind <= 1
    reference = Events.from_arrays(
        (high[cd] << 6) | ((words[cd] >> 22) & 0x3F), (words[cd] >> 11) & 0x7FF, words[cd] & 0x7FF, kind[cd]
    )
    assert_same_events(events, reference)


def test_event_stream_sample_count_and_span():
    path = data_file("atis_es/dvs.es")
    with open_recording(path) as rec:
        assert (rec.format, rec.sensor_size, rec.sensor_size_source) == ("event-stream", (320, 240), "header")
        events = read_all(rec)
        assert len(events) == 473_225
        assert (int(events.t[0]), int(events.t[-1])) == (0, 999_000)
        assert np.all(np.diff(events.t) >= 0)


# ------------------------------------------------------------------ chunking and seeking

REAL_FILES = [
    ("davis346_street/davis346_street_first1.8s_zstd.aedat4", {}),
    ("davis346_street/davis346_street_first1.8s.h5", {}),
    ("ecd_slider_depth/events_first50k.txt", {}),
    ("prophesee_evt3/evt3_sample.raw", {"sensor_size": (1280, 720)}),
    ("prophesee_evt2/sparklers_evt2.raw", {"sensor_size": (640, 480)}),
    ("atis_es/dvs.es", {}),
]


@pytest.mark.parametrize(("relative", "kwargs"), REAL_FILES, ids=[r.split("/")[0] for r, _ in REAL_FILES])
def test_chunked_reads_equal_whole_reads_and_windows_are_exact(relative, kwargs):
    path = data_file(relative)
    with open_recording(path, **kwargs) as rec:
        whole = read_all(rec, chunk_events=10**9)
        chunks = list(rec.events(chunk_events=7919))
    assert all(len(c) == 7919 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 7919
    assert_same_events(Events.concatenate(chunks), whole)
    n = len(whole)
    # Window edges inside runs of equal timestamps and at the ends.
    windows = [
        (int(whole.t[n // 3]), int(whole.t[2 * n // 3]) + 1),
        (int(whole.t[0]), int(whole.t[10])),
        (int(whole.t[-5]), int(whole.t[-1]) + 1),
        (int(whole.t[n // 2]), int(whole.t[n // 2]) + 1),
    ]
    for t_start, t_stop in windows:
        # A fresh recording with small blocks seeks without checkpoints first, then with them.
        with open_recording(path, **kwargs) as rec:
            rec.BLOCK_BYTES = 8192
            for _ in range(2):
                window = read_all(rec, t_start=t_start, t_stop=t_stop, chunk_events=1000)
                assert_same_events(window, whole.time_slice(t_start, t_stop))
                list(rec.events(chunk_events=1 << 16))  # a full pass leaves checkpoints behind


# ------------------------------------------------------------------------------- describe


def test_describe_streams_counts_rates_and_anomalies():
    path = data_file("prophesee_evt3/evt3_sample.raw")
    summary = describe(path, sensor_size=(1280, 720))
    events = summary["events"]
    assert (summary["format"], summary["sensor_size"], events["count"]) == ("evt3", [1280, 720], 219_596)
    with open_recording(path, sensor_size=(1280, 720)) as rec:
        t = read_all(rec).t
    per_ms = np.bincount((t - t[0]) // 1000)
    assert events["rate_peak_per_ms"] == per_ms.max()
    assert events["rate_mean_per_ms"] == pytest.approx(len(t) / len(per_ms))
    assert events["duration_s"] == pytest.approx(8_801e-6)
    assert summary["anomalies"] == {
        "non_monotonic": 0,
        "duplicates": 0,
        "out_of_sensor": 0,
        "bad_polarity": 0,
    }
    text = format_description(summary)
    assert "219,596" in text and "evt3" in text and "1280 x 720" in text

    summary = describe(data_file("davis346_street/davis346_street_first1.8s_zstd.aedat4"))
    assert summary["frames"]["count"] == 45 and summary["frames"]["rate_hz"] == pytest.approx(25.0)
    assert summary["frames"]["shape"] == [260, 346] and summary["imu"]["count"] == 1798
    assert summary["events"]["count"] == 59_684
