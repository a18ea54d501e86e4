"""Bad input: each problem raises a RecordingError naming file, position and fix under
on_error="raise", and is dropped, counted in recording.issues and warned about under "skip"."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
from PIL import Image

from evpipe.nodes.sources.readers import (
    RecordingError,
    RecordingWarning,
    describe,
    open_recording,
    summarize,
)
from evpipe.nodes.sources.readers.base import RawEvents, _EventCheck
from evpipe.runtime.events import Events
from tests.data_fixtures.recordings import (
    encode_evt2,
    encode_evt3,
    event_arrays,
    random_events,
    write_aedat4,
    write_event_stream,
    write_evt2,
    write_evt3,
    write_h5_plain,
    write_rpg_text,
)


def read_all(recording, **kwargs) -> Events:
    return Events.concatenate(list(recording.events(**kwargs)))


def read_skipping(path, **kwargs) -> tuple[Events, object]:
    """All events under on_error='skip', asserting that the drops were announced."""
    chunk_events = kwargs.pop("chunk_events", 1 << 20)
    with pytest.warns(RecordingWarning), open_recording(path, on_error="skip", **kwargs) as rec:
        return read_all(rec, chunk_events=chunk_events), rec


def assert_same_events(a: Events, b: Events) -> None:
    for name in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_recording_error_is_a_value_error():
    assert issubclass(RecordingError, ValueError)


# ----------------------------------------------------------------- truncated / corrupt files


@pytest.mark.parametrize("fmt", ["evt2", "evt3", "event-stream"])
def test_truncated_binary_stream(tmp_path, fmt):
    events = random_events(3000, 64, 48, seed=1)
    if fmt == "evt2":
        path, cut = write_evt2(tmp_path / "a.raw", events, geometry=(64, 48)), 3
    elif fmt == "evt3":
        path, cut = write_evt3(tmp_path / "a.raw", events, geometry=(64, 48)), 1
    else:
        path, cut = write_event_stream(tmp_path / "a.es", events, 64, 48), 2
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    size = len(data) - cut
    with open_recording(path) as rec, pytest.raises(RecordingError, match=r"truncated|cut short") as err:
        read_all(rec)
    assert str(path) in str(err.value) and "byte" in str(err.value) and "on_error='skip'" in str(err.value)
    got, rec = read_skipping(path)
    (issue,) = rec.issues
    assert (issue.kind, issue.unit, issue.offset + issue.count) == ("truncated", "byte", size)
    # Everything before the damage survives: all events but those of the cut word / event.
    if fmt == "evt3":  # EVT 3.0 sends events in (t, y, p, x) order; a vector word holds up to 12
        expected = events[np.lexsort((events.x, events.p, events.y, events.t))]
        assert len(events) - 12 <= len(got) < len(events)
    else:
        expected = events
        assert len(got) == len(events) - 1
    assert_same_events(got, expected[: len(got)])


def test_truncated_or_corrupt_container_files_cannot_be_opened(tmp_path):
    events = random_events(20_000, 64, 48, t0=1_700_000_000_000_000, seed=2)
    files = {
        "h5": write_h5_plain(tmp_path / "a.h5", event_arrays(events), width=64, height=48),
        "aedat4": write_aedat4(tmp_path / "a.aedat4", events, 64, 48),
    }
    np.savez_compressed(tmp_path / "a.npz", **event_arrays(events))
    files["npz"] = tmp_path / "a.npz"
    for name, path in files.items():
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        for policy in ("raise", "skip"):
            with pytest.raises(RecordingError, match="truncated") as err:
                open_recording(path, on_error=policy)
            assert str(path) in str(err.value), name
            assert "Stacktrace" not in str(err.value)


def test_unreadable_hdf5_chunks_and_missing_compression_filters(tmp_path):
    events = random_events(200, 64, 48, seed=12)
    path = tmp_path / "chunks.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update(width=64, height=48)
        for name, array in event_arrays(events).items():
            f.create_dataset(f"events/{name}", data=array, chunks=(100,), compression="gzip")
        f["events/x"].id.write_direct_chunk((100,), b"not deflate data")  # rows 100..199 of x are damaged
    with open_recording(path) as rec, pytest.raises(RecordingError, match=r"at index 100: rows 100\.\.199"):
        read_all(rec, chunk_events=100)
    got, rec = read_skipping(path, chunk_events=100)
    assert_same_events(got, events[:100])
    assert rec.issues.by_kind() == {"corrupt": 100}

    blosc = tmp_path / "blosc.h5"
    with h5py.File(blosc, "w") as f:
        for name in "txyp":  # Blosc (filter 32001), as DSEC uses, is not installed here
            d = f.create_dataset(
                f"events/{name}", (100,), "u4", chunks=(100,), compression=32001, allow_unknown_filter=True
            )
            d.id.write_direct_chunk((0,), bytes(400))
    for policy in ("raise", "skip"):
        with pytest.raises(RecordingError, match=r"filter 32001.*pip install hdf5plugin"):
            open_recording(blosc, sensor_size=(64, 48), on_error=policy)


def test_corrupt_words_are_reported_with_their_byte_offset(tmp_path):
    events = random_events(500, 64, 48, seed=3)
    header = b"% evt 2.0\n% geometry 64x48\n"
    words = encode_evt2(events)
    corrupt = np.insert(words, 100, np.uint32(0x3 << 28 | 0x123))  # reserved type 0x3
    path = tmp_path / "corrupt2.raw"
    path.write_bytes(header + corrupt.tobytes())
    with (
        open_recording(path) as rec,
        pytest.raises(RecordingError, match=f"byte {len(header) + 400}.*reserved"),
    ):
        read_all(rec)
    got, rec = read_skipping(path)
    assert_same_events(got, events)  # the reserved word carried no event
    assert rec.issues.by_kind() == {"unknown_word": 1}

    words3 = encode_evt3(events)
    path3 = tmp_path / "corrupt3.raw"
    path3.write_bytes(b"% evt 3.0\n% geometry 64x48\n" + np.insert(words3, 50, np.uint16(0x1ABC)).tobytes())
    with open_recording(path3) as rec, pytest.raises(RecordingError, match=r"reserved EVT 3\.0 word type 0x1"):
        read_all(rec)
    # A stream that starts mid-way (its first TIME_HIGH, TIME_LOW and ADDR_Y cut off): the events
    # before the next TIME_HIGH have no time base; every other event is decoded.
    events = random_events(500, 64, 48, rate_per_us=0.05, seed=3)  # ~10 ms: three TIME_HIGH periods
    words3 = encode_evt3(events)
    assert [int(k) for k in (words3[:3] >> 12)] == [0x8, 0x6, 0x0]
    headless = tmp_path / "headless.raw"
    headless.write_bytes(b"% evt 3.0\n% geometry 64x48\n" + words3[3:].tobytes())
    got, rec = read_skipping(headless)
    dropped = rec.issues.count()
    assert set(rec.issues.by_kind()) <= {"no_time_base", "no_row_address"} and dropped > 0
    assert_same_events(got, events[np.lexsort((events.x, events.p, events.y, events.t))][dropped:])


# ------------------------------------------------------------------ missing datasets / fields


def test_missing_dataset_or_field_names_what_is_missing(tmp_path):
    events = random_events(100, 64, 48, seed=4)
    arrays = event_arrays(events)
    h5 = write_h5_plain(tmp_path / "no_p.h5", {k: v for k, v in arrays.items() if k != "p"}, group="events")
    with pytest.raises(RecordingError, match=r"missing event dataset\(s\) \['p'\].*pol.*holds \['t', 'x', 'y'\]"):
        open_recording(h5)
    np.savez(tmp_path / "no_y.npz", t=events.t, x=events.x, p=events.p)
    with pytest.raises(RecordingError, match=r"missing \['y'\].*holds"):
        open_recording(tmp_path / "no_y.npz")
    np.save(tmp_path / "plain.npy", np.zeros((10, 4)))
    with pytest.raises(RecordingError, match="structured array with fields t, x, y, p"):
        open_recording(tmp_path / "plain.npy")
    float_xy = {**arrays, "x": events.x.astype(np.float32)}
    with pytest.raises(RecordingError, match="x has dtype float32"):
        open_recording(write_h5_plain(tmp_path / "float.h5", float_xy, width=64, height=48))
    frames_without_t = write_h5_plain(tmp_path / "frames.h5", {**arrays, "frames/images": np.zeros((2, 48, 64))})
    with (
        open_recording(frames_without_t, sensor_size=(64, 48)) as rec,
        pytest.raises(RecordingError, match="frames/ has no t dataset"),
    ):
        list(rec.frames())


# ------------------------------------------------------------------------- garbage lines


def test_garbage_lines_are_reported_with_line_numbers(tmp_path):
    events = random_events(20, 64, 48, seed=5)
    path = write_rpg_text(tmp_path, events)
    lines = path.read_text().splitlines()
    bad = {3: "hello world", 6: "0.1 2 3", 8: "0.2 5 x 1", 11: "0.3 12.5 3 1", 14: "0.4 1 2 3 4"}
    for number in sorted(bad):
        lines.insert(number - 1, bad[number])
    path.write_text("\n".join(lines) + "\n")
    with open_recording(path, sensor_size=(64, 48)) as rec, pytest.raises(RecordingError) as err:
        read_all(rec)
    assert f"{path} at line 3" in str(err.value) and "'hello world'" in str(err.value)
    got, rec = read_skipping(path, sensor_size=(64, 48), chunk_events=4)
    assert_same_events(got, events)
    (issue,) = rec.issues
    assert (issue.kind, issue.offset, issue.count) == ("garbage_line", 3, 5)


def test_a_cut_last_line_is_garbage_at_its_line_number(tmp_path):
    events = random_events(10, 64, 48, seed=6)
    path = write_rpg_text(tmp_path, events)
    path.write_bytes(path.read_bytes()[:-8])  # the last line loses its y and polarity
    got, rec = read_skipping(path, sensor_size=(64, 48))
    assert_same_events(got, events[:9])
    assert [(i.kind, i.offset) for i in rec.issues] == [("garbage_line", 10)]


# --------------------------------------------------------------------- timestamps and pixels


def test_timestamps_going_back_in_time_are_dropped_across_chunk_boundaries(tmp_path):
    events = random_events(200, 64, 48, rate_per_us=0.01, seed=7)
    t = events.t.copy()
    back = [50, 51, 120, 121]  # 121 goes back below 119 too; 120 at a chunk boundary of 8 events
    t[50] = t[49] - 10
    t[51] = t[49] - 5
    t[120] = t[119] - 1
    t[121] = t[119] - 2
    arrays = {**event_arrays(events), "t": t}
    path = write_h5_plain(tmp_path / "back.h5", arrays, width=64, height=48)
    with open_recording(path) as rec, pytest.raises(RecordingError) as err:
        read_all(rec, chunk_events=8)
    assert f"{path} at index 50" in str(err.value) and "goes back in time" in str(err.value)
    got, rec = read_skipping(path)
    keep = np.ones(200, bool)
    keep[back] = False
    assert_same_events(got, Events.from_arrays(t, events.x, events.y, events.p)[keep])
    assert rec.issues.by_kind() == {"non_monotonic": 4}
    assert describe(path)["anomalies"]["non_monotonic"] == 4


def test_duplicates_are_legal_events_counted_only_by_describe(tmp_path):
    events = random_events(300, 64, 48, seed=8)
    dup_rows = np.array([10, 10, 150, 299])  # event 10 three times in all, 299 at the very end
    order = np.sort(np.concatenate([np.arange(300), dup_rows]))
    doubled = events[order]
    path = write_h5_plain(tmp_path / "dup.h5", event_arrays(doubled), width=64, height=48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: duplicates are not an error
        with open_recording(path) as rec:
            assert_same_events(read_all(rec), doubled)
            assert len(rec.issues) == 0
            for chunk in (1, 2, 3, 7, 1000):  # duplicates straddling packet boundaries
                assert summarize(rec, chunk_events=chunk)["anomalies"]["duplicates"] == 4


def test_coordinates_outside_the_sensor(tmp_path):
    events = random_events(100, 64, 48, seed=9)
    x = events.x.astype(np.int16)
    y = events.y.astype(np.int16)
    x[10] = 64
    y[20] = -1
    np.savez(tmp_path / "out.npz", t=events.t, x=x, y=y, p=events.p, sensor_size=[64, 48])
    path = tmp_path / "out.npz"
    with open_recording(path) as rec, pytest.raises(RecordingError) as err:
        read_all(rec)
    message = str(err.value)
    assert f"{path} at index 10" in message and "x=64" in message and "sensor_size=(width, height)" in message
    got, rec = read_skipping(path)
    assert len(got) == 98 and rec.issues.by_kind() == {"out_of_sensor": 2}
    got, rec = read_skipping(path, sensor_size=(65, 48))  # a larger sensor: only the negative y is out
    assert len(got) == 99 and rec.issues.by_kind() == {"out_of_sensor": 1}


def test_bad_polarity_values(tmp_path):
    events = random_events(10, 64, 48, seed=10)
    path = write_rpg_text(tmp_path, events)
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0] + " 2"
    path.write_text("\n".join(lines) + "\n")
    with (
        open_recording(path, sensor_size=(64, 48)) as rec,
        pytest.raises(RecordingError, match=r"line 5.*polarity"),
    ):
        read_all(rec)
    got, rec = read_skipping(path, sensor_size=(64, 48))
    assert len(got) == 9 and rec.issues.by_kind() == {"bad_polarity": 1}


# -------------------------------------------------------------------------------- frames


def test_frame_with_the_wrong_shape_or_a_missing_image(tmp_path):
    events = random_events(30, 64, 48, seed=11)
    frames = [(int(t), np.full((48, 64), 9, np.uint8)) for t in events.t[::10]]
    write_rpg_text(tmp_path, events, frames=frames)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "images" / "frame_00000001.png")
    with (
        open_recording(tmp_path) as rec,
        pytest.raises(RecordingError, match=r"line 2: frame .* shape \(40, 40\)"),
    ):
        list(rec.frames())
    with pytest.warns(RecordingWarning), open_recording(tmp_path, on_error="skip") as rec:
        assert [f.t for f in rec.frames()] == [frames[0][0], frames[2][0]]
        assert rec.issues.by_kind() == {"bad_frame_shape": 1}
    Image.fromarray(frames[1][1]).save(tmp_path / "images" / "frame_00000001.png")
    (tmp_path / "images" / "frame_00000002.png").unlink()
    with (
        open_recording(tmp_path) as rec,
        pytest.raises(RecordingError, match=r"line 3: image .* cannot be read"),
    ):
        list(rec.frames())

    path = write_h5_plain(
        tmp_path / "frames.h5",
        {**event_arrays(events), "frames/images": np.zeros((3, 48, 60), np.uint8), "frames/t": events.t[:3]},
        width=64,
        height=48,
    )
    with pytest.warns(RecordingWarning), open_recording(path, on_error="skip") as rec:
        assert list(rec.frames()) == [] and rec.issues.by_kind() == {"bad_frame_shape": 3}


# ------------------------------------------------------------------------- unknown input


def test_unknown_empty_and_unsupported_files(tmp_path):
    cases = {
        "noise.bin": (
            np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            "unrecognised",
        ),
        "empty.raw": (b"", "empty"),
        "old.aedat": (b"#!AER-DAT3.1\r\n" + bytes(100), "AEDAT 3.1 is not supported"),
        "evt21.raw": (b"% evt 2.1\n" + bytes(64), "declares evt21"),
        "atis.es": (b"Event Stream" + bytes([2, 0, 0, 2, 64, 0, 48, 0]), "type ATIS is not supported"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(RecordingError, match=message):
            open_recording(tmp_path / name)
    with pytest.raises(RecordingError, match=r"holds no events\.txt"):
        open_recording(tmp_path)


def test_events_going_back_in_time_across_a_chunk_boundary_are_all_dropped(tmp_path):
    # Found by fuzzing the ROS bag reader: the first chunk ends at t=266, the next starts at 220 and stays below
    # 266 for several events; each of them (not only the chunk's first event) goes back in time.
    events = Events.from_arrays(np.array([0, 2, 266, 220, 224, 230, 270, 280]), np.arange(8), np.zeros(8),
                                np.ones(8))
    path = write_evt3(tmp_path / "back.raw", events[:3], geometry=(64, 48))
    with open_recording(path, on_error="skip") as recording:
        check = _EventCheck(recording)
        first = check(RawEvents(events.t[:3], events.x[:3], events.y[:3], events.p[:3], "index"))
        second = check(RawEvents(events.t[3:], events.x[3:], events.y[3:], events.p[3:], "index", origin=3))
    assert first.t.tolist() == [0, 2, 266] and second.t.tolist() == [270, 280]
    assert recording.issues.count("non_monotonic") == 3
