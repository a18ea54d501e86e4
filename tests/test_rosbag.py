"""ROS bags: the reader on real ROS 1 / ROS 2 bags of a Prophesee camera (the upstream project's own counts),
the EVT 3.0 codec with trigger edges, the ``rosbag`` sink's round trips for every format and message type,
a graph replaying a sink-written bag, and bad bags."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
import yaml
from rosbags.rosbag1 import Writer as Writer1

from evpipe.nodes.sinks.rosbag import RosbagRecorder
from evpipe.nodes.sources.readers import RecordingError, describe, detect_format, open_recording
from evpipe.nodes.sources.readers.evt3 import decode_evt3, encode_evt3
from evpipe.nodes.sources.readers.ros_messages import builtin_typestore
from evpipe.nodes.sources.replay import Replay
from evpipe.runtime.events import Events, Frame, Imu, Triggers
from evpipe.runtime.node import NodeError
from evpipe.runtime.wire import Message, decode, encode
from tests.conftest import run_graph
from tests.data_fixtures.recordings import _raw_header, random_events

ROS = "ros_event_camera"
BAGS = {"rosbag1": f"{ROS}/test_events_1.bag", "rosbag2": f"{ROS}/test_events_1"}


def read_all(path, **kwargs) -> tuple[Events, Triggers, list[Frame], list[Imu]]:
    with open_recording(path, **kwargs) as rec:
        return (Events.concatenate(list(rec.events())), Triggers.concatenate(list(rec.triggers())),
                list(rec.frames()), list(rec.imu()))


# ----------------------------------------------------------------------------------- real bags


@pytest.mark.parametrize("fmt", sorted(BAGS))
def test_real_bags_give_the_upstream_counts(shared_data, fmt):
    path = shared_data / BAGS[fmt]
    assert detect_format(path) == fmt
    events, triggers, frames, imu = read_all(path)
    assert (int(np.count_nonzero(events.p < 0)), int(np.count_nonzero(events.p > 0))) == (218_291, 125_183)
    assert int(events.t[0]) == 7_139_845  # the first sensor time of upstream's tests
    assert np.all(np.diff(events.t) >= 0) and np.all(np.diff(triggers.t) >= 0)
    # Upstream's check: the sum of every event and trigger time, in µs, over all 4,157 trigger edges.
    assert int(events.t.sum()) + int(triggers.t.sum()) == 2_885_601_049_874
    # EXT_TRIGGER value 0 (falling by the EVT 3.0 spec) 2,078 times, value 1 (rising) 2,079 times. Upstream's
    # test counts value 0 as "rise" and, through a typo in its check_count, never checks the other count.
    assert (int(np.count_nonzero(triggers.edge == 0)), int(np.count_nonzero(triggers.edge == 1))) == (2078, 2079)
    assert set(np.unique(triggers.channel).tolist()) == {6} and frames == [] and imu == []


def test_bag_reads_the_same_as_its_payload_as_an_evt3_raw_file(shared_data, tmp_path):
    with open_recording(shared_data / BAGS["rosbag1"]) as rec:
        topic = rec.selected["events"]
        payload = b"".join(bytes(np.asarray(m.events, np.uint8)) for _, _, m in rec._messages(topic))
    raw = tmp_path / "payload.raw"
    raw.write_bytes(_raw_header("3.0", (640, 480)) + payload)
    bag_events, bag_triggers, _, _ = read_all(shared_data / BAGS["rosbag1"])
    raw_events, raw_triggers, _, _ = read_all(raw)
    assert bag_events.checksum() == raw_events.checksum() and len(raw_events) == 343_474
    np.testing.assert_array_equal(bag_triggers.t, raw_triggers.t)
    np.testing.assert_array_equal(bag_triggers.edge, raw_triggers.edge)


def test_info_on_a_bag_lists_topics_triggers_and_counts(shared_data):
    info = describe(shared_data / BAGS["rosbag2"])
    assert info["format"] == "rosbag2" and info["events"]["count"] == 343_474
    assert info["triggers"] == {"count": 4157, "rising": 2079, "falling": 2078, "channels": [6],
                                "t_first_us": 7_139_840, "t_last_us": info["triggers"]["t_last_us"]}
    (topic,) = info["topics"]
    assert (topic["topic"], topic["encoding"], topic["messages"], topic["read_as"]) == (
        "/event_camera/events", "evt3", 517, "events")


def test_ros2_metadata_without_a_storage_identifier_reads_from_the_storage_files(shared_data, tmp_path):
    bag = tmp_path / "old"
    shutil.copytree(shared_data / BAGS["rosbag2"], bag)
    (bag / "metadata.yaml").chmod(0o644)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())
    meta["rosbag2_bagfile_information"]["storage_identifier"] = ""
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))
    events, triggers, _, _ = read_all(bag)
    assert len(events) == 343_474 and len(triggers) == 4157


# ------------------------------------------------------------------------------------ EVT 3.0 codec


def test_evt3_encoder_round_trips_events_and_triggers_across_packets_gaps_and_wraps():
    rng = np.random.default_rng(7)
    events = random_events(20_000, 2048, 2048, rate_per_us=0.01, seed=8)
    # A gap of 40 s (more than two 24-bit wraps) in the middle.
    t = events.t + np.where(np.arange(len(events)) >= 10_000, 40_000_000, 0)
    triggers = np.sort(rng.integers(0, int(t[-1]), 300))
    edge, channel = rng.integers(0, 2, 300).astype(np.uint8), rng.integers(0, 16, 300).astype(np.uint8)
    state, high = None, -1
    got_t, got_x, got_trig, got_edge, got_channel = [], [], [], [], []
    bounds = [0, 3000, 10_000, 10_001, 20_000]
    for lo, hi in itertools.pairwise(bounds):
        t_lo, t_hi = (t[lo], t[hi] if hi < len(t) else t[-1] + 1)
        sel = (triggers >= t_lo) & (triggers < t_hi) if lo else triggers < t_hi
        words, high = encode_evt3(t[lo:hi], events.x[lo:hi], events.y[lo:hi], events.p[lo:hi],
                                  triggers[sel], edge[sel], channel[sel], last_high=high)
        decoded = decode_evt3(words, state) if state else decode_evt3(words)
        state = decoded.state
        got_t.append(decoded.t)
        got_x.append(decoded.x)
        got_trig.append(decoded.trigger_t)
        got_edge.append(decoded.trigger_edge)
        got_channel.append(decoded.trigger_channel)
        assert not decoded.counters[[0, 2, 4]].any()
    np.testing.assert_array_equal(np.concatenate(got_t), t)
    np.testing.assert_array_equal(np.concatenate(got_x), events.x)
    np.testing.assert_array_equal(np.concatenate(got_trig), triggers)
    np.testing.assert_array_equal(np.concatenate(got_edge), edge)
    np.testing.assert_array_equal(np.concatenate(got_channel), channel)


def test_evt3_raw_file_exposes_its_trigger_edges(tmp_path):
    events = random_events(5000, 64, 48, seed=2)
    trig_t = events.t[::500].copy()
    words, _ = encode_evt3(events.t, events.x, events.y, events.p, trig_t, np.ones(len(trig_t), np.uint8),
                           np.full(len(trig_t), 3, np.uint8))
    path = tmp_path / "trig.raw"
    path.write_bytes(_raw_header("3.0", (64, 48)) + words.tobytes())
    got, triggers, _, _ = read_all(path)
    assert got.checksum() == events.checksum()
    np.testing.assert_array_equal(triggers.t, trig_t)
    assert set(triggers.channel.tolist()) == {3} and triggers.edge.all()
    with open_recording(path) as rec:
        window = Triggers.concatenate(list(rec.triggers(int(trig_t[2]), int(trig_t[5]))))
    np.testing.assert_array_equal(window.t, trig_t[2:5])


def test_triggers_travel_the_wire_format():
    triggers = Triggers(np.array([5, 9], np.int64), np.array([1, 0], np.uint8), np.array([0, 2], np.uint8))
    back = decode([bytes(frame) for frame in encode(Message.from_triggers(triggers))]).triggers()
    assert back.t.tolist() == [5, 9] and back.edge.tolist() == [1, 0] and back.channel.tolist() == [0, 2]


# --------------------------------------------------------------------------------------- the sink


def write_bag(path, params: dict, items: list[tuple[str, Message]]) -> dict:
    node = RosbagRecorder("bag", {"path": str(path), **params})
    reports: list[dict] = []
    node.attach_reporter(reports.append)
    node.start()
    for port, msg in items:
        node.process(port, msg)
    node.stop()
    return reports[-1]


def sample_streams(n_events: int) -> tuple[Events, Triggers, list[Frame], Imu]:
    events = random_events(n_events, 64, 48, t0=1000, seed=11)
    rng = np.random.default_rng(3)
    triggers = Triggers(np.sort(rng.integers(1000, int(events.t[-1]), 40)).astype(np.int64),
                        rng.integers(0, 2, 40).astype(np.uint8), rng.integers(0, 4, 40).astype(np.uint8))
    frames = [Frame(rng.integers(0, 256, (48, 64), dtype=np.uint8), int(events.t[n_events // 3])),
              Frame(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), int(events.t[2 * n_events // 3]))]
    t_imu = np.linspace(1000, int(events.t[-1]), 50).astype(np.int64)
    imu = Imu(t_imu, rng.normal(0, 1, (50, 3)).astype(np.float32), rng.normal(0, 90, (50, 3)).astype(np.float32))
    return events, triggers, frames, imu


def sink_items(events: Events, triggers: Triggers, frames: list[Frame], imu: Imu) -> list[tuple[str, Message]]:
    items = [("events", Message.from_events(events[i:i + 700], width=64, height=48))
             for i in range(0, len(events), 700)]
    items += [("triggers", Message.from_triggers(triggers[i:i + 7])) for i in range(0, len(triggers), 7)]
    items += [("frames", Message.from_frame(frame)) for frame in frames]
    items += [("imu", Message("imu", {"t": imu.t[i:i + 10], "accel": imu.accel[i:i + 10], "gyro": imu.gyro[i:i + 10]}))
              for i in range(0, len(imu.t), 10)]
    return items


WRITERS = [({"format": "ros2", "storage": "mcap"}, "rosbag2"), ({"format": "ros2", "storage": "sqlite3"}, "rosbag2"),
           ({"format": "ros1"}, "rosbag1")]


@pytest.mark.parametrize("events_as", ["evt3", "mono", "dvs"])
@pytest.mark.parametrize(("writer", "fmt"), WRITERS, ids=["ros2-mcap", "ros2-sqlite3", "ros1"])
def test_sink_round_trip_of_events_frames_imu_and_triggers(tmp_path, writer, fmt, events_as):
    events, triggers, frames, imu = sample_streams(3000)
    path = tmp_path / ("out.bag" if fmt == "rosbag1" else "out")
    report = write_bag(path, {**writer, "events_as": events_as}, sink_items(events, triggers, frames, imu))
    assert (report["events"], report["triggers"], report["frames"], report["imu_samples"]) == (3000, 40, 2, 50)
    assert detect_format(path) == fmt
    got, got_triggers, got_frames, got_imu = read_all(path)
    for name in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(getattr(got, name), getattr(events, name))
    for name in ("t", "edge", "channel"):
        np.testing.assert_array_equal(getattr(got_triggers, name), getattr(triggers, name))
    assert [f.t for f in got_frames] == [f.t for f in frames]
    for a, b in zip(got_frames, frames, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
    merged = Imu(np.concatenate([b.t for b in got_imu]), np.concatenate([b.accel for b in got_imu]),
                 np.concatenate([b.gyro for b in got_imu]))
    np.testing.assert_array_equal(merged.t, imu.t)
    np.testing.assert_allclose(merged.accel, imu.accel, rtol=1e-6)
    np.testing.assert_allclose(merged.gyro, imu.gyro, rtol=1e-6)


def test_replay_of_a_real_bag_recorded_by_the_sink_replays_identically(shared_data, tmp_path):
    def replay(path) -> tuple[list, dict]:
        node = Replay("replay", {"path": str(path), "pace": "fast"})
        reports: list[dict] = []
        node.attach_reporter(reports.append)
        node.start()
        out = list(node.produce())
        node.stop()
        return out, reports[-1]

    original, first = replay(shared_data / BAGS["rosbag1"])
    write_bag(tmp_path / "copy", {}, original)
    _, second = replay(tmp_path / "copy")
    assert first["produced"] == second["produced"]
    assert (first["produced"]["events"], first["produced"]["triggers"]) == (343_474, 4157)


def test_graph_replays_a_bag_the_sink_wrote(shared_data, tmp_path):
    bag = tmp_path / "recorded.bag"
    proc, report = run_graph(tmp_path, f"""\
name: bag-record
settings: {{transport: tcp}}
nodes:
  replay: {{type: replay, params: {{path: "{shared_data / BAGS['rosbag2']}", pace: fast}}}}
  bag: {{type: rosbag, params: {{path: "{bag}", format: ros1, events_as: mono}}}}
edges:
  - replay.events -> bag.events
  - replay.triggers -> bag.triggers
""")
    assert proc.returncode == 0, proc.stderr
    written = report["reports"]["bag"][0]
    assert (written["events"], written["triggers"]) == (343_474, 4157)
    (tmp_path / "graph.yaml").unlink()
    proc, report = run_graph(tmp_path, f"""\
name: bag-replay
settings: {{transport: tcp}}
nodes:
  replay: {{type: replay, params: {{path: "{bag}", pace: fast}}}}
  metrics: {{type: metrics, params: {{warmup: 0}}}}
edges:
  - replay.events -> metrics.in
  - replay.triggers -> metrics.in
""")
    assert proc.returncode == 0, proc.stderr
    ledger = report["reports"]["metrics"][0]["streams"]
    assert (ledger["replay.events"]["events"], ledger["replay.events"]["checksum"]) == (
        343_474, written["checksum"])
    assert report["reports"]["replay"][0]["produced"]["triggers"] == 4157


# ------------------------------------------------------------------------------------- bad bags


def test_truncated_and_corrupt_bags_raise_recording_error(shared_data, tmp_path):
    data = (shared_data / BAGS["rosbag1"]).read_bytes()
    cut = tmp_path / "cut.bag"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordingError, match=r"cut\.bag"):
        open_recording(cut)
    bag = tmp_path / "bad"
    shutil.copytree(shared_data / BAGS["rosbag2"], bag)
    db = bag / "test_events_1.db3"
    db.chmod(0o644)
    db.write_bytes(db.read_bytes()[:4096])
    with pytest.raises(RecordingError, match="bad"):
        read_all(bag)


def write_ros1(path, topics: list[tuple[str, str, str | None]]) -> None:
    """A ROS 1 bag with one message per (topic, type, definition or None for the built-in one)."""
    store = builtin_typestore(True)
    with Writer1(path) as writer:
        for topic, msgtype, definition in topics:
            if definition is None:
                conn = writer.add_connection(topic, msgtype, typestore=store)
            else:
                conn = writer.add_connection(topic, msgtype, msgdef=definition, md5sum="0" * 32)
            if msgtype == "event_camera_msgs/msg/EventPacket":
                words, _ = encode_evt3(np.array([10, 20]), np.array([1, 2]), np.array([3, 4]), np.array([1, 0]))
                header = store.types["std_msgs/msg/Header"](
                    seq=0, stamp=store.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="")
                msg = store.types[msgtype](header=header, height=48, width=64, seq=0, time_base=0, encoding="evt3",
                                           is_bigendian=False, events=words.view(np.uint8))
                writer.write(conn, 1, store.serialize_ros1(msg, msgtype))
            else:
                writer.write(conn, 1, b"\x00" * 8)


def test_unparseable_definition_falls_back_to_the_built_in_one(tmp_path):
    path = tmp_path / "garbled.bag"
    write_ros1(path, [("/events", "event_camera_msgs/msg/EventPacket", "this is %% not a msg definition [")])
    with open_recording(path) as rec:
        assert rec.selected["events"].definition_source == "built-in"
        assert len(Events.concatenate(list(rec.events()))) == 2


def test_unknown_types_ambiguous_and_missing_event_topics_are_clear_errors(tmp_path):
    unknown = tmp_path / "unknown.bag"
    write_ros1(unknown, [("/odom", "nav_msgs/msg/Odometry", "uint32 foo\n")])
    with pytest.raises(RecordingError, match=r"no event topic.*nav_msgs/msg/Odometry") as caught:
        open_recording(unknown)
    assert caught.value.kind == "no_events"
    two = tmp_path / "two.bag"
    write_ros1(two, [("/a", "event_camera_msgs/msg/EventPacket", None),
                     ("/b", "event_camera_msgs/msg/EventPacket", None)])
    with pytest.raises(RecordingError, match=r"2 events topics \(/a, /b\).*topics=\{'events'"):
        open_recording(two)
    events, _, _, _ = read_all(two, topics={"events": "/b"})
    assert len(events) == 2
    with pytest.raises(RecordingError, match=r"no topic '/c'.*/a"):
        open_recording(two, topics={"events": "/c"})
    with pytest.raises(RecordingError, match="ROS bags only"):
        open_recording(_raw(tmp_path), topics={"events": "/a"})


def _raw(tmp_path):
    path = tmp_path / "x.raw"
    path.write_bytes(_raw_header("3.0", (64, 48)) + encode_evt3(np.array([1]), np.array([1]), np.array([1]),
                                                                np.array([1]))[0].tobytes())
    return path


@pytest.mark.parametrize("ros1", [True, False], ids=["ros1", "ros2"])
def test_event_arrays_parsed_with_numpy_equal_rosbags_own_deserialization(tmp_path, ros1):
    """prophesee_event_msgs/EventArray of 1, 2 and 5 events (CDR pads differ with the count and frame_id length)."""
    from rosbags.rosbag2 import Writer as Writer2

    store = builtin_typestore(ros1)
    types = store.types
    msgtype = "prophesee_event_msgs/msg/EventArray"
    rng = np.random.default_rng(5)
    path = tmp_path / ("p.bag" if ros1 else "p")
    writer = Writer1(path) if ros1 else Writer2(path, version=9)
    expected = []
    with writer:
        conn = writer.add_connection("/prophesee/events", msgtype, typestore=store)
        for k, (n, frame_id) in enumerate([(1, "cam"), (2, "camera0"), (5, "")]):
            t = np.sort(rng.integers(0, 10**9, n))
            x, y, p = rng.integers(0, 64, n), rng.integers(0, 48, n), rng.integers(0, 2, n)
            events = [types["prophesee_event_msgs/msg/Event"](
                x=int(x[i]), y=int(y[i]), ts=types["builtin_interfaces/msg/Time"](sec=int(t[i]) // 10**6,
                                                                                  nanosec=int(t[i]) % 10**6 * 1000),
                polarity=bool(p[i])) for i in range(n)]
            stamp = types["builtin_interfaces/msg/Time"](sec=k, nanosec=0)
            header = (types["std_msgs/msg/Header"](seq=k, stamp=stamp, frame_id=frame_id) if ros1
                      else types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id))
            message = types[msgtype](header=header, height=48, width=64, events=events)
            data = store.serialize_ros1(message, msgtype) if ros1 else store.serialize_cdr(message, msgtype)
            writer.write(conn, k, data)
            expected.append(Events.from_arrays(t, x, y, p))
    expected = Events.concatenate(expected)
    with open_recording(path, on_error="skip") as rec:
        topic = rec.selected["events"]
        assert topic.fast_event_array
        fast = [raw for raw, _ in rec._decoded(topic)]
        topic.fast_event_array = False
        slow = [raw for raw, _ in rec._decoded(topic)]
    for name in ("t", "x", "y", "p"):
        got = np.concatenate([getattr(r, name) for r in fast])
        np.testing.assert_array_equal(got, np.concatenate([getattr(r, name) for r in slow]))
        np.testing.assert_array_equal(got.astype(np.int64), getattr(expected, name).astype(np.int64)
                                      if name != "p" else (expected.p > 0).astype(np.int64))


def test_a_mono_packet_with_an_impossible_time_base_is_a_corrupt_message(tmp_path):
    events, triggers, frames, imu = sample_streams(1400)
    path = tmp_path / "mono.bag"
    write_bag(path, {"format": "ros1", "events_as": "mono"}, sink_items(events, triggers, frames, imu)[:2])
    data = bytearray(path.read_bytes())
    time_base_end = data.find(b"mono") - 4  # uint64 time_base, then the encoding string's uint32 length
    data[time_base_end - 8:time_base_end] = (1 << 63).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match="time_base"):
        read_all(path)
    got, _, _, _ = read_all(path, on_error="skip")
    np.testing.assert_array_equal(got.t, events.t[700:])  # the first packet dropped, the second kept


def test_frames_on_another_clock_than_the_events_are_left_out_unless_named(tmp_path):
    events = random_events(2000, 64, 48, seed=4)
    ros_time_us = 1_675_956_550_318_916  # ROS time of a real evt3 bag, against a camera clock near 0
    frame = Frame(np.zeros((48, 64), np.uint8), ros_time_us)
    path = tmp_path / "clocks"
    write_bag(path, {}, [("events", Message.from_events(events, width=64, height=48)),
                         ("frames", Message.from_frame(frame))])
    with open_recording(path) as rec:
        assert rec.selected["frames"] is None and list(rec.frames()) == []
        (_, frames_row) = sorted(rec.topic_summary(), key=lambda row: row["topic"])
        assert "not on the event clock" in frames_row["problem"] and frames_row["read_as"] is None
        assert rec.time_range() == (int(events.t[0]), int(events.t[-1]) + 1)
    _, _, frames, _ = read_all(path, topics={"frames": "/event_camera/image_raw"})
    assert [f.t for f in frames] == [ros_time_us]


def test_replay_of_a_bag_paces_sensor_time_in_real_time(shared_data):
    import time

    node = Replay("replay", {"path": str(shared_data / BAGS["rosbag2"]), "pace": "realtime", "speed": 4.0})
    reports: list[dict] = []
    node.attach_reporter(reports.append)
    node.start()
    started = time.monotonic()
    produced = list(node.produce())
    elapsed = time.monotonic() - started
    node.stop()
    span_s = (9_218_024 - 7_139_840) / 1e6  # the bag's time range, events and triggers
    assert elapsed >= span_s / 4.0 * 0.95, elapsed  # never ahead of sensor time / speed
    assert reports[-1]["produced"]["events"] == 343_474 and reports[-1]["produced"]["triggers"] == 4157
    assert produced[-1][1].t_range[1] <= int(span_s * 1e6)


def test_sink_takes_trigger_edges_before_anything_tells_the_sensor_size(tmp_path):
    # A camera's first trigger edge can precede its first event (the real bag's does by 5 µs): found by a graph
    # whose first message into the sink was a triggers message.
    events, triggers, frames, imu = sample_streams(1000)
    items = sink_items(events, triggers, frames, imu)
    items.sort(key=lambda item: item[0] != "triggers")  # every triggers message first
    write_bag(tmp_path / "t", {}, items)
    got, got_triggers, _, _ = read_all(tmp_path / "t")
    assert got.checksum() == events.checksum()
    np.testing.assert_array_equal(got_triggers.t, triggers.t)
    with pytest.raises(NodeError, match="sensor size is unknown"):
        write_bag(tmp_path / "u", {}, [("events", Message.from_events(events))])


def test_sink_says_what_evt3_cannot_carry_of_a_late_first_event(tmp_path):
    events = random_events(500, 64, 48, t0=(3 << 24) + 12_345, seed=6)
    report = write_bag(tmp_path / "late", {}, [("events", Message.from_events(events, width=64, height=48))])
    assert report["evt3_time_lost_us"] == 3 << 24
    got, _, _, _ = read_all(tmp_path / "late")
    np.testing.assert_array_equal(got.t + report["evt3_time_lost_us"], events.t)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_truncated_mcap_bag_is_a_truncated_recording_with_the_fix(tmp_path, on_error):
    events, triggers, frames, imu = sample_streams(3000)
    write_bag(tmp_path / "m", {}, sink_items(events, triggers, frames, imu))
    storage = next(p for p in (tmp_path / "m").iterdir() if p.suffix == ".mcap")
    storage.write_bytes(storage.read_bytes()[:-100])
    with pytest.raises(RecordingError, match="mcap recover") as caught:
        open_recording(tmp_path / "m", on_error=on_error)
    assert caught.value.kind == "truncated"
