"""ROS 1 bags (``.bag``) and ROS 2 bags (a folder with ``metadata.yaml`` and sqlite3 ``.db3`` or ``.mcap``
storage, or one such storage file) of event cameras, read with `rosbags` — no ROS installation needed.

**Message types.** Each topic's type is registered from the bag's own embedded definition (``.msg`` text or
ROS 2 IDL); when that is missing or cannot be parsed, from the built-in definitions in `ros_messages`.
Events: ``event_camera_msgs/EventPacket`` with encoding ``evt3`` (the raw EVT 3.0 words, decoded by the
shared codec in `evt3`, its state carried from message to message as a camera stream) or ``mono`` (64-bit
words: polarity bit 63, y bits 62..48, x bits 47..32, ns after ``time_base`` bits 31..0);
``dvs_msgs/EventArray`` and ``prophesee_event_msgs/EventArray`` (x, y, ts, polarity per event). Frames:
``sensor_msgs/Image`` in mono8, rgb8 or bgr8 (given as gray or RGB). IMU: ``sensor_msgs/Imu``, converted
from m/s² and rad/s to g and deg/s. Triggers: the EXT_TRIGGER words of an ``evt3`` events topic, and an
``EventPacket`` topic with encoding ``trigger`` (the ``mono`` layout: edge bit 63, channel bits 62..48).

**Clocks.** Events and triggers keep the sensor's clock, never the bag's receive time: for ``evt3`` the
camera's µs counter (24 bits, wraps counted from the topic's first packet), for ``mono`` / ``trigger``
``time_base`` + offset, for the EventArray types each event's ``ts``. Frames and IMU samples use their
``header.stamp``, the clock of the driver that published them: for ``dvs_msgs`` bags that is the events'
clock; for ``evt3`` bags it is ROS time, which the camera clock is not synchronised with, so a frames or IMU
topic stamped more than an hour from the first event is not read unless ``topics`` names it. ``t_offset`` is
the first timestamp. Windows (``t_start``/``t_stop``) are found by decoding from the topic's start:
sensor time is not the bag's index time, so the bag index cannot seek to it.

**Topics.** ``topics={"events": name, "frames": name, "imu": name, "triggers": name}`` picks them; a kind
left out is taken when the bag has exactly one topic of it (none: the stream is empty), and more than one
is an error listing the candidates; ``""`` turns a stream off. Bad messages (a payload that does not
deserialize, an unsupported encoding) follow the ``on_error`` policy at their message index (unit
``message``); a bag whose storage or index cannot be read raises `RecordingError` under either policy. A
truncated bag is not read at all (like a truncated AEDAT4 file): a ROS 1 bag keeps its index and an mcap file
its footer at the end, and rosbags reads neither without them; a damaged sqlite3 file is refused by sqlite.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml
from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.rosbag1 import Reader as Reader1
from rosbags.rosbag2 import Reader as Reader2
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader

from evpipe.runtime.events import Frame, Imu, Triggers

from .base import RawEvents, Recording, RecordingError, first_line
from .evt3 import INITIAL_STATE, decode_evt3, evt3_issues
from .ros_messages import (
    DVS_EVENT_ARRAY,
    EVENT_PACKET,
    EVENT_TYPES,
    IMAGE,
    IMU,
    PROPHESEE_EVENT_ARRAY,
    SUPPORTED_TYPES,
    builtin_typestore,
    embedded_typestore,
)

ROSBAG1_MAGIC = b"#ROSBAG V2.0"
SQLITE_MAGIC = b"SQLite format 3\x00"
MCAP_MAGIC = b"\x89MCAP0\r\n"
STANDARD_GRAVITY = 9.80665  # m/s² per g
EVENT_ENCODINGS = ("evt3", "mono")
TRIGGER_ENCODING = "trigger"
STREAMS = ("events", "frames", "imu", "triggers")
# Events merged into one block for the shared checks (messages hold a few hundred each).
MERGE_EVENTS = 1 << 16
# Frames or IMU stamped further than this from the first event are on another clock (an hour).
CLOCK_GAP_US = 3_600_000_000
_IMAGE_CHANNELS = {"mono8": 1, "rgb8": 3, "bgr8": 3}


def storage_of(path: Path) -> str | None:
    """'sqlite3' or 'mcap' from a storage file's magic bytes, else None."""
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError:
        return None
    if head.startswith(SQLITE_MAGIC):
        return "sqlite3"
    if head.startswith(MCAP_MAGIC):
        return "mcap"
    return None


def _stamp_us(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000 + int(stamp.nanosec) // 1000


@dataclass
class Topic:
    """One topic of the bag: its connections, type, message count and how to decode it."""

    name: str
    msgtype: str
    count: int
    connections: list[Connection]
    typestore: Any = None  # None: the type cannot be decoded (``problem`` says why)
    problem: str = ""
    encoding: str = ""  # an EventPacket topic's encoding, from its first message
    definition_source: str = ""  # "bag" or "built-in"
    fast_event_array: bool = False  # an EventArray of the standard layout, parsed with numpy

    @property
    def kind(self) -> str | None:
        """The stream this topic can feed: events, frames, imu, triggers, or None."""
        if self.typestore is None:
            return None
        if self.msgtype == EVENT_PACKET:
            if self.encoding in EVENT_ENCODINGS:
                return "events"
            return "triggers" if self.encoding == TRIGGER_ENCODING else None
        if self.msgtype in EVENT_TYPES:
            return "events"
        return {IMAGE: "frames", IMU: "imu"}.get(self.msgtype)


class _RosbagRecording(Recording):
    """Shared by the ROS 1 and ROS 2 readers (see the module docstring)."""

    ROS1: ClassVar[bool]

    def __init__(self, path: str | Path, *, topics: dict[str, str] | None = None, **kwargs: Any) -> None:
        self._requested = dict(topics or {})
        unknown = set(self._requested) - set(STREAMS)
        if unknown:
            raise ValueError(f"topics: unknown stream(s) {sorted(unknown)}; use {', '.join(STREAMS)}")
        self._cached_range: dict[str, tuple[int, int] | None] = {}
        super().__init__(path, **kwargs)

    # ---------------------------------------------------------------------------------- opening

    def _open(self) -> None:
        self._sources: list[Any] = []
        try:
            self._open_sources()
        except RecordingError:
            raise
        except Exception as exc:  # rosbags and the sqlite/mcap/lz4 layers under it raise many types on a damaged bag
            raise self.error(f"rosbags cannot open the bag ({type(exc).__name__}: {first_line(exc)}); "
                             f"{self._open_hint(exc)}", kind=self._open_kind(exc)) from None
        self.topics: dict[str, Topic] = {}
        for source in self._sources:
            for conn in source.connections:
                topic = self.topics.get(conn.topic)
                if topic is None:
                    topic = self.topics[conn.topic] = Topic(conn.topic, conn.msgtype, 0, [])
                topic.connections.append(conn)
                topic.count += max(int(conn.msgcount), 0)
        for topic in self.topics.values():
            self._register(topic)
        self.selected = self._select()
        events = self.selected["events"]
        first = self._first_message(events)
        if first is not None and int(getattr(first, "width", 0)) and int(getattr(first, "height", 0)):
            self._header_sensor_size = (int(first.width), int(first.height))

    def _open_sources(self) -> None:
        """Open the bag's storage and fill ``self.topics`` (ROS 1 and ROS 2 each do it their way)."""
        raise NotImplementedError

    def _open_hint(self, exc: Exception) -> str:
        return "the bag is damaged or not a bag; re-copy it"

    def _open_kind(self, exc: Exception) -> str:
        return "corrupt"

    def _close(self) -> None:
        for source in getattr(self, "_sources", []):
            with suppress(Exception):
                source.close()
        self._sources = []

    def _register(self, topic: Topic) -> None:
        """Give ``topic`` a typestore: its embedded definition, else the built-in one."""
        problems = []
        for conn in topic.connections:
            definition = conn.msgdef
            if definition.format == MessageDefinitionFormat.NONE or not definition.data.strip():
                continue
            try:
                topic.typestore = embedded_typestore(definition.data, topic.msgtype,
                                                     definition.format == MessageDefinitionFormat.IDL)
                topic.definition_source = "bag"
                break
            except Exception as exc:  # rosbags' definition parsers raise many types on a bad definition
                problems.append(f"{type(exc).__name__}: {first_line(exc)}")
        if topic.typestore is None and topic.msgtype in SUPPORTED_TYPES:
            topic.typestore = self._builtin_store()
            topic.definition_source = "built-in"
        if topic.typestore is None:
            topic.problem = (f"message type {topic.msgtype} is not one evpipe decodes (supported: "
                             f"{', '.join(SUPPORTED_TYPES)})")
            if problems:
                topic.problem += f", and its embedded definition does not parse ({problems[0]})"
            return
        if topic.msgtype in (DVS_EVENT_ARRAY, PROPHESEE_EVENT_ARRAY):
            version = 1 if self.ROS1 else 2
            topic.fast_event_array = (topic.typestore.generate_msgdef(topic.msgtype, ros_version=version)[1]
                                               == self._builtin_store().generate_msgdef(topic.msgtype,
                                                                                        ros_version=version)[1])
        if topic.msgtype == EVENT_PACKET:
            first = self._first_message(topic)
            topic.encoding = "" if first is None else str(first.encoding)
            if topic.encoding not in (*EVENT_ENCODINGS, TRIGGER_ENCODING) and first is not None:
                topic.problem = (f"EventPacket encoding {topic.encoding!r} is not supported (supported: "
                                 f"{', '.join((*EVENT_ENCODINGS, TRIGGER_ENCODING))})")

    def _builtin_store(self) -> Any:
        if not hasattr(self, "_builtin"):
            self._builtin = builtin_typestore(self.ROS1)
        return self._builtin

    def _topic_list(self) -> str:
        return "; ".join(f"{t.name} ({t.msgtype}{', ' + t.encoding if t.encoding else ''}, {t.count} messages)"
                         for t in self.topics.values()) or "none"

    def _select(self) -> dict[str, Topic | None]:
        selected: dict[str, Topic | None] = {}
        for stream in STREAMS:
            name = self._requested.get(stream)
            if name == "":
                selected[stream] = None
                continue
            if name is not None:
                topic = self.topics.get(name)
                if topic is None:
                    raise self.error(f"no topic {name!r} in the bag; its topics: {self._topic_list()}")
                if topic.problem or topic.kind != stream:
                    why = topic.problem or f"{topic.msgtype} does not hold {stream}"
                    raise self.error(f"topic {name!r} cannot be read as {stream}: {why}")
                selected[stream] = topic
                continue
            candidates = [t for t in self.topics.values() if t.kind == stream and not t.problem]
            if len(candidates) > 1:
                raise self.error(
                    f"the bag has {len(candidates)} {stream} topics ({', '.join(t.name for t in candidates)}); "
                    f"choose one with topics={{'{stream}': name}} (replay parameter 'topics'); its topics: "
                    f"{self._topic_list()}")
            selected[stream] = candidates[0] if candidates else None
        self._drop_other_clocks(selected)
        if selected["events"] is None and "events" not in self._requested:
            unreadable = [f"{t.name}: {t.problem}" for t in self.topics.values() if t.problem]
            detail = f" ({'; '.join(unreadable)})" if unreadable else ""
            raise self.error(f"the bag has no event topic evpipe can read{detail}; its topics: {self._topic_list()}",
                             kind="no_events")
        return selected

    def _drop_other_clocks(self, selected: dict[str, Topic | None]) -> None:
        """Leave out an automatically chosen frames or IMU topic whose header stamps are far from the event clock:
        an ``evt3`` camera's µs counter is not ROS time, and a replay spanning both would wait for decades."""
        events = selected["events"]
        first_event = None
        if events is not None:
            decoded = (raw for raw, _ in self._decoded(events) if len(raw.t))
            first_raw = next(decoded, None)
            decoded.close()
            first_event = None if first_raw is None else int(first_raw.t[0])
        for stream in ("frames", "imu"):
            topic = selected[stream]
            if topic is None or stream in self._requested or first_event is None:
                continue
            first = self._first_message(topic)
            if first is not None and abs(_stamp_us(first.header.stamp) - first_event) > CLOCK_GAP_US:
                selected[stream] = None
                topic.problem = (f"not read: its header stamps ({_stamp_us(first.header.stamp):,} µs) are not on the "
                                 f"event clock ({first_event:,} µs); pass topics={{'{stream}': '{topic.name}'}} "
                                 "to read it anyway")

    # --------------------------------------------------------------------------------- messages

    def _messages(self, topic: Topic, raw: bool = False) -> Iterator[tuple[int, int, Any]]:
        """(message index in the topic, bag time ns, deserialized message or None when it does not decode);
        with ``raw`` the serialized bytes instead."""
        connections = {id(c) for c in topic.connections}
        streams = []
        for source in self._sources:
            mine = [c for c in source.connections if id(c) in connections]
            if mine:
                streams.append(source.messages(mine))
        merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=lambda m: m[1])
        index = 0
        while True:
            try:
                item = next(merged, None)
            except Exception as exc:  # rosbags/apsw/lz4 raise many types on damaged storage
                self.report("file", "corrupt", "message", index, 1,
                            f"topic {topic.name}: the bag's storage cannot be read past message {index} "
                            f"({type(exc).__name__}: {first_line(exc)})")
                return
            if item is None:
                return
            conn, bag_time, data = item
            if raw:
                yield index, bag_time, data
                index += 1
                continue
            try:
                message = (topic.typestore.deserialize_ros1(data, conn.msgtype) if self.ROS1
                           else topic.typestore.deserialize_cdr(data, conn.msgtype))
            except Exception as exc:  # rosbags' deserializers raise many types on a bad payload
                self.report("file", "corrupt", "message", index, 1,
                            f"topic {topic.name}: message {index} does not deserialize as {conn.msgtype} "
                            f"({type(exc).__name__}: {first_line(exc)})")
                message = None
            yield index, bag_time, message
            index += 1

    def _first_message(self, topic: Topic | None) -> Any:
        if topic is None:
            return None
        messages = self._messages(topic)
        try:
            for _, _, message in messages:
                if message is not None:
                    return message
            return None
        finally:
            messages.close()

    # ------------------------------------------------------------------------------ event decode

    def _read_events(self, t_start: int | None, t_stop: int | None, chunk_events: int) -> Iterator[RawEvents]:
        # Messages hold a few hundred events each: they are merged into blocks, so the shared checks and the
        # packet assembly run per block rather than per message.
        topic = self.selected["events"]
        if topic is None:
            return
        block = min(chunk_events, MERGE_EVENTS)
        first = last = None
        pending: list[RawEvents] = []
        n_pending = 0
        for raw, _ in self._decoded(topic):
            if len(raw.t):
                first = int(raw.t[0]) if first is None else first
                last = int(raw.t[-1])
                pending.append(raw)
                n_pending += len(raw.t)
            if n_pending >= block or (t_stop is not None and last is not None and last >= t_stop):
                yield _merged(pending)
                pending, n_pending = [], 0
                if t_stop is not None and last >= t_stop:
                    return
        if pending:
            yield _merged(pending)
        self._cached_range["events"] = None if first is None else (first, last + 1)

    def _read_triggers(self, t_start: int | None, t_stop: int | None) -> Iterator[Triggers]:
        # Inline EXT_TRIGGER words of the events topic, and a separate trigger topic; merged in time order.
        sources = []
        events = self.selected["events"]
        if events is not None and events.encoding == "evt3":
            sources.append(batch for _, batch in self._decoded(events) if len(batch))
        if self.selected["triggers"] is not None:
            sources.append(batch for _, batch in self._decoded(self.selected["triggers"]) if len(batch))
        if len(sources) == 1:
            yield from sources[0]
        elif sources:
            batches = [Triggers.concatenate(list(s)) for s in sources]
            merged = Triggers.concatenate(batches)
            yield merged[np.argsort(merged.t, kind="stable")]

    def _decoded(self, topic: Topic) -> Iterator[tuple[RawEvents, Triggers]]:
        """Events and triggers of each message of an events or triggers topic."""
        if topic.fast_event_array:
            yield from self._event_arrays(topic)
            return
        state = INITIAL_STATE
        for index, _, msg in self._messages(topic):
            if msg is None:
                continue
            if topic.msgtype == EVENT_PACKET:
                encoding = str(msg.encoding)
                payload = np.asarray(msg.events, dtype=np.uint8)
                if encoding == "evt3":
                    words = payload[: len(payload) // 2 * 2].view("<u2")
                    decoded = decode_evt3(words, state)
                    state = decoded.state
                    for kind, _, count, detail in evt3_issues(decoded, words):
                        self.report("events", kind, "message", index, count, f"topic {topic.name}: {detail}")
                    positions = np.full(len(decoded.t), index, np.int64)
                    yield (RawEvents(decoded.t, decoded.x, decoded.y, decoded.p, "message", positions=positions),
                           Triggers(decoded.trigger_t, decoded.trigger_edge, decoded.trigger_channel))
                elif encoding in ("mono", TRIGGER_ENCODING):
                    time_base = int(msg.time_base)
                    if time_base >= 1 << 62:  # no clock reaches this; int64 µs arithmetic would overflow
                        self.report("events", "corrupt", "message", index, 1,
                                    f"topic {topic.name}: time_base {time_base} ns is beyond any clock")
                        continue
                    words = payload[: len(payload) // 8 * 8].view("<u8")
                    t = (time_base + (words & 0xFFFFFFFF).astype(np.int64)) // 1000
                    high = (words >> np.uint64(48)) & np.uint64(0x7FFF)
                    edge = (words >> np.uint64(63)).astype(np.uint8)
                    if encoding == "mono":
                        x = ((words >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.uint16)
                        raw = RawEvents(t, x, high.astype(np.uint16), edge.astype(np.int8), "message",
                                        positions=np.full(len(t), index, np.int64))
                        yield raw, Triggers.empty()
                    else:
                        yield _no_events(), Triggers(t, edge, high.astype(np.uint8))
                else:
                    self.report("events", "unsupported_encoding", "message", index, 1,
                                f"topic {topic.name}: EventPacket encoding {encoding!r} is not supported")
            else:
                events = msg.events
                n = len(events)
                t = np.fromiter((_stamp_us(e.ts) for e in events), np.int64, n)
                x = np.fromiter((e.x for e in events), np.uint16, n)
                y = np.fromiter((e.y for e in events), np.uint16, n)
                p = np.fromiter((e.polarity for e in events), np.int8, n)
                yield RawEvents(t, x, y, p, "message", positions=np.full(n, index, np.int64)), Triggers.empty()

    def _event_arrays(self, topic: Topic) -> Iterator[tuple[RawEvents, Triggers]]:
        """dvs_msgs / prophesee_event_msgs EventArray parsed straight from the serialized bytes with numpy (rosbags
        would build a Python object per event, about 25x slower); only for the standard field layout."""
        parse = _event_array_ros1 if self.ROS1 else _event_array_cdr
        for index, _, data in self._messages(topic, raw=True):
            try:
                t, x, y, p = parse(memoryview(data))
            except (ValueError, struct.error) as exc:
                self.report("file", "corrupt", "message", index, 1,
                            f"topic {topic.name}: message {index} is not a {topic.msgtype} ({first_line(exc)})")
                continue
            yield RawEvents(t, x, y, p, "message", positions=np.full(len(t), index, np.int64)), Triggers.empty()

    # --------------------------------------------------------------------------- frames and IMU

    def _read_frames(self, t_start: int | None, t_stop: int | None) -> Iterator[tuple[str, int, Frame]]:
        topic = self.selected["frames"]
        if topic is None:
            return
        for index, _, msg in self._messages(topic):
            if msg is None:
                continue
            encoding = str(msg.encoding)
            channels = _IMAGE_CHANNELS.get(encoding)
            height, width, step = int(msg.height), int(msg.width), int(msg.step)
            data = np.asarray(msg.data, dtype=np.uint8)
            if channels is None:
                self.report("frames", "unsupported_encoding", "message", index, 1,
                            f"topic {topic.name}: image encoding {encoding!r} (supported: mono8, rgb8, bgr8)")
                continue
            if step < width * channels or len(data) < step * height:
                self.report("frames", "bad_frame_shape", "message", index, 1,
                            f"topic {topic.name}: {len(data)} bytes do not hold a {width}x{height} {encoding} "
                            f"image with row step {step}")
                continue
            image = data[: step * height].reshape(height, step)[:, : width * channels]
            image = image.reshape(height, width, channels) if channels == 3 else image
            if encoding == "bgr8":
                image = image[:, :, ::-1]
            yield "message", index, Frame(np.ascontiguousarray(image), _stamp_us(msg.header.stamp))

    def _read_imu(self, t_start: int | None, t_stop: int | None) -> Iterator[Imu]:
        topic = self.selected["imu"]
        if topic is None:
            return
        batch: list[Any] = []
        for _, _, msg in self._messages(topic):
            if msg is not None:
                batch.append(msg)
            if len(batch) >= 1024:
                yield _imu_batch(batch)
                batch = []
        if batch:
            yield _imu_batch(batch)

    # ------------------------------------------------------------------------------- time range

    def _time_range(self) -> tuple[int, int]:
        for stream, items in (("events", lambda: self._read_events(None, None, 1 << 20)),
                              ("frames", lambda: (f for _, _, f in self._read_frames(None, None))),
                              ("imu", lambda: self._read_imu(None, None)),
                              ("triggers", lambda: self._read_triggers(None, None))):
            if stream in self._cached_range:
                continue
            first = last = None
            for item in items():
                times = np.atleast_1d(np.asarray(item.t))
                if len(times):
                    first = int(times.min()) if first is None else min(first, int(times.min()))
                    last = int(times.max()) if last is None else max(last, int(times.max()))
            self._cached_range[stream] = None if first is None else (first, last + 1)
        spans = [span for span in self._cached_range.values() if span is not None]
        if not spans:
            raise self.error("the bag holds no events, frames, IMU samples or triggers on the chosen topics, so it "
                             "has no time range")
        return min(s[0] for s in spans), max(s[1] for s in spans)

    def topic_summary(self) -> list[dict]:
        """Per topic: name, type, messages, rate (Hz over bag time), bag time span, how it is read."""
        rows = []
        for topic in self.topics.values():
            times = []
            for source in self._sources:
                mine = [c for c in source.connections if c.topic == topic.name]
                if mine:
                    times.extend(bag_time for _, bag_time, _ in source.messages(mine))
            times.sort()
            span = (times[-1] - times[0]) / 1e9 if len(times) > 1 else 0.0
            used = [stream for stream, chosen in self.selected.items() if chosen is topic]
            rows.append({
                "topic": topic.name, "type": topic.msgtype, "encoding": topic.encoding or None,
                "messages": len(times), "rate_hz": (len(times) - 1) / span if span > 0 else None,
                "bag_time_ns": [times[0], times[-1]] if times else None,
                "definition": topic.definition_source or None, "read_as": used[0] if used else None,
                "problem": topic.problem or None,
            })
        return rows


# One event of an EventArray: x, y, ts (sec, nsec), polarity. ROS 1 packs them in 13 bytes. In CDR every field
# is aligned to its size from the payload start: the first event (at a multiple of 4, after the array length)
# takes 14 bytes, and every later one starts 2 past a multiple of 4, so 2 pad bytes precede its time: 16 bytes.
_EVENT_ROS1 = np.dtype({"names": ["x", "y", "sec", "nsec", "p"], "formats": ["<u2", "<u2", "<u4", "<u4", "u1"],
                        "offsets": [0, 2, 4, 8, 12], "itemsize": 13})
_EVENT_CDR_FIRST = np.dtype({"names": ["x", "y", "sec", "nsec", "p"], "formats": ["<u2", "<u2", "<i4", "<u4", "u1"],
                             "offsets": [0, 2, 4, 8, 12], "itemsize": 14})
_EVENT_CDR_NEXT = np.dtype({"names": ["x", "y", "sec", "nsec", "p"], "formats": ["<u2", "<u2", "<i4", "<u4", "u1"],
                            "offsets": [0, 2, 6, 10, 14], "itemsize": 16})


def _event_fields(records: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t = records["sec"].astype(np.int64) * 1_000_000 + records["nsec"].astype(np.int64) // 1000
    return t, records["x"].astype(np.uint16), records["y"].astype(np.uint16), (records["p"] != 0).astype(np.int8)


def _event_array_ros1(data: memoryview) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    (frame_id_length,) = struct.unpack_from("<I", data, 12)  # after header seq and stamp
    pos = 16 + frame_id_length + 8  # after frame_id, height, width
    (n,) = struct.unpack_from("<I", data, pos)
    if len(data) != pos + 4 + 13 * n:
        raise ValueError(f"{len(data)} bytes cannot hold {n} events")
    return _event_fields(np.frombuffer(data, _EVENT_ROS1, n, pos + 4))


def _event_array_cdr(data: memoryview) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if bytes(data[:2]) != b"\x00\x01":
        raise ValueError("not little-endian CDR")
    body = data[4:]
    (frame_id_length,) = struct.unpack_from("<I", body, 8)  # after header stamp (sec, nanosec)
    pos = (12 + frame_id_length + 3) // 4 * 4 + 8  # frame_id, aligned, then height and width
    (n,) = struct.unpack_from("<I", body, pos)
    if n == 0:
        return _event_fields(np.empty(0, _EVENT_CDR_FIRST))
    need = 14 + 16 * (n - 1)
    block = bytes(body[pos + 4:pos + 4 + need])
    if len(block) < need - 1:  # the last event's trailing pad byte may be absent
        raise ValueError(f"{len(body)} bytes cannot hold {n} events")
    block = block.ljust(need, b"\x00")
    first = _event_fields(np.frombuffer(block, _EVENT_CDR_FIRST, 1))
    rest = _event_fields(np.frombuffer(block, _EVENT_CDR_NEXT, n - 1, 14))
    return tuple(np.concatenate(pair) for pair in zip(first, rest, strict=True))


def _merged(raws: list[RawEvents]) -> RawEvents:
    if len(raws) == 1:
        return raws[0]
    return RawEvents(*(np.concatenate([getattr(r, name) for r in raws]) for name in ("t", "x", "y", "p")), "message",
                     positions=np.concatenate([r.positions for r in raws]))


def _no_events() -> RawEvents:
    return RawEvents(np.empty(0, np.int64), np.empty(0, np.uint16), np.empty(0, np.uint16), np.empty(0, np.int8),
                     "message")


def _imu_batch(messages: list[Any]) -> Imu:
    t = np.array([_stamp_us(m.header.stamp) for m in messages], dtype=np.int64)
    accel = np.array([(m.linear_acceleration.x, m.linear_acceleration.y, m.linear_acceleration.z) for m in messages],
                     dtype=np.float64) / STANDARD_GRAVITY
    gyro = np.degrees(np.array([(m.angular_velocity.x, m.angular_velocity.y, m.angular_velocity.z)
                                for m in messages], dtype=np.float64))
    return Imu(t, accel.astype(np.float32), gyro.astype(np.float32))


class Rosbag1Recording(_RosbagRecording):
    """A ROS 1 ``.bag`` file (``#ROSBAG V2.0``)."""

    format = "rosbag1"
    ROS1 = True

    def _open_sources(self) -> None:
        reader = Reader1(self.path)
        reader.open()
        self._sources = [reader]

    def _open_hint(self, exc: Exception) -> str:
        if "not indexed" in str(exc) or "index" in str(exc).lower():
            return ("a ROS 1 bag keeps its index at its end, so a truncated or still-recording bag has none: "
                    "re-copy it, or rebuild the index (rosbag reindex)")
        return super()._open_hint(exc)

    def _open_kind(self, exc: Exception) -> str:
        return "truncated" if "index" in str(exc).lower() else "corrupt"


class Rosbag2Recording(_RosbagRecording):
    """A ROS 2 bag: a folder with ``metadata.yaml`` (sqlite3 or mcap storage), or one ``.db3`` / ``.mcap`` file."""

    format = "rosbag2"
    ROS1 = False

    def _open_sources(self) -> None:
        if not self.path.is_dir():
            self._sources = [self._open_storage(self.path)]
            return
        info = self._metadata()
        storage = info.get("storage_identifier")
        if storage in ("sqlite3", "mcap"):
            reader = Reader2(self.path)
            reader.open()
            self._sources = [reader]
            return
        # Older recorders may leave storage_identifier empty: each storage file says what it is.
        names = info.get("relative_file_paths") or []
        if not isinstance(names, list) or not names:
            raise self.error("metadata.yaml names no storage files (relative_file_paths)", kind="corrupt")
        for name in names:
            self._sources.append(self._open_storage(self.path / Path(str(name)).name))

    def _open_hint(self, exc: Exception) -> str:
        if "end magic" in str(exc):
            return ("an mcap file ends with its footer, so a truncated or still-recording one cannot be read here: "
                    "re-copy it, or recover it with the mcap CLI (mcap recover)")
        return super()._open_hint(exc)

    def _open_kind(self, exc: Exception) -> str:
        return "truncated" if "end magic" in str(exc) else "corrupt"

    def _metadata(self) -> dict:
        try:
            document = yaml.safe_load((self.path / "metadata.yaml").read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise self.error(f"metadata.yaml cannot be read ({first_line(exc)})", kind="corrupt") from None
        info = document.get("rosbag2_bagfile_information") if isinstance(document, dict) else None
        if not isinstance(info, dict):
            raise self.error("metadata.yaml has no rosbag2_bagfile_information map", kind="corrupt")
        return info

    def _open_storage(self, path: Path) -> Any:
        storage = storage_of(path)
        if storage is None:
            raise self.error(f"{path.name} is neither sqlite3 nor mcap storage (by its first bytes)", kind="corrupt")
        reader = (Sqlite3Reader if storage == "sqlite3" else McapReader)(path)
        reader.open()
        return reader

