"""The replay source: a recorded file played back as a live camera."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from operator import itemgetter
from typing import Any

import numpy as np

from evpipe.nodes.sources.pacing import Pacer, prefetch
from evpipe.nodes.sources.readers import Recording, RecordingError, open_recording
from evpipe.runtime.events import Events, Frame, Triggers
from evpipe.runtime.node import Node, NodeError, Spec
from evpipe.runtime.wire import Message, Trace

# Events per read from the file. Reading runs on a prefetch thread, ahead of the pacing loop.
READ_CHUNK_EVENTS = 1 << 16
PREFETCH_MESSAGES = 256

Item = tuple[int, str, Message]  # (due sensor time µs, output port, message)


class Replay(Node):
    """Plays a recording (any format `open_recording` reads) as a live source: events, APS frames and IMU.

    **Timebase.** Timestamps are normalised at ingest: downstream sees int64 µs since the recording's
    start, the first record (event, frame or IMU sample) of the file, whatever the file's clock (Unix
    µs for AEDAT4, seconds for ECD text, the camera counter for Prophesee). ``t_start``/``t_stop`` are
    in the same timebase. The file-clock value of t = 0 is reported as ``t_origin_us``. With
    ``loops`` > 1 the recording is played again and again, each pass shifted by the length of the
    played range, so time keeps increasing.

    **Packets.** ``packet: time`` (default) emits one events message per ``packet_us`` slice
    [t0, t0 + packet_us) of the grid that starts at ``t_start``, empty slices included, so consumers
    see sensor time advance even when nothing moves; each has ``t_range`` (t0, t0 + packet_us - 1)
    and meta ``watermark_us`` = t0 + packet_us - 1: every event at or before it has been sent.
    ``packet: count`` emits ``packet_events`` events per message (the last one of a pass shorter).
    Events meta: ``width``, ``height`` (after the ROI crop). Frames: kind frame, ``image`` uint8 (H, W)
    gray or (H, W, 3) RGB (float images of 16-bit files become uint8), meta ``t`` (exposure midpoint)
    and ``exposure_us``. IMU: kind imu, arrays ``t`` int64 (N,), ``accel`` float32 (N, 3) in g,
    ``gyro`` float32 (N, 3) in deg/s, grouped on the ``packet_us`` grid. Triggers (EVT 3.0 ``EXT_TRIGGER``,
    ROS bags): kind triggers, arrays ``t`` int64, ``edge`` uint8 (1 rising, 0 falling), ``channel`` uint8,
    grouped on the same grid and due at the end of their slot. ROS bags: ``topics`` picks the topic per stream.

    **Order and pacing.** All streams are merged in sensor-time order of the instant each item is
    complete: a time slice at its end, a count packet at its last event, an IMU or trigger group at the end
    of its grid slot, a frame at the end of its exposure — with time slices, at the end of the slice that
    holds its exposure end (on ties: events, then IMU, then frames, then triggers). So with time slices
    every event up to a frame's exposure end, or an IMU sample's or trigger edge's time, is sent before it.
    ``pace: realtime`` releases each item when that instant (divided by ``speed``) has passed on the wall
    clock; ``fast`` sends as fast as lossless edges take them. Reading and packetising run on a thread
    ahead of the pacing loop.

    **Bad input.** ``on_error: raise`` stops at the first bad item with a one-line error naming the
    file, the position and the fix; ``skip`` drops bad items and counts them in the report's
    ``issues`` (and the reader warns once per kind). ROI and polarity filtering are counted too.

    Report: ``produced`` (events ``messages``, ``events`` and their order-independent ``checksum``,
    ``frames``, ``imu_messages``, ``imu_samples``, ``trigger_messages``, ``triggers``: counted before each item
    is sent), ``removed``, ``issues``, ``recording`` and, in realtime, ``pacing`` (lag of each item behind its
    due instant).
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.output("events", "events", "event packets in sensor-time order")
        spec.output("frames", "frame", "APS frames of the recording (none for event-only formats)")
        spec.output("imu", "imu", "IMU samples of the recording (none for formats without IMU)")
        spec.output("triggers", "triggers", "external trigger edges (EVT 3.0 .raw, ROS bags; none for other formats)")
        spec.param("path", str, doc="recording file (or RPG/ECD sequence folder)", input_path=True)
        spec.param("topics", dict, None, "ROS bags: the topic per stream, e.g. {events: /dvs/events, frames: "
                   "/dvs/image_raw}; a stream left out is taken when the bag has one topic of it")
        spec.param("sensor_size", list, None, "[width, height] for formats whose header has none (Prophesee .raw)")
        spec.param("t_start", int, 0, "µs after the recording's start where playback begins", minimum=0)
        spec.param("t_stop", int, None, "µs after the recording's start where playback ends (exclusive); null: "
                   "the end")
        spec.param("roi", list, None, "[x0, y0, x1, y1] half-open pixel box to crop to; coordinates shift to the "
                   "box's corner; null keeps the whole sensor")
        spec.param("polarity", str, "both", "which events to keep", choices=["both", "on", "off"])
        spec.param("on_error", str, "raise", "bad items: raise (stop with an error) or skip (drop and count)",
                   choices=["raise", "skip"])
        spec.param("packet", str, "time", "events per message: a time slice or a fixed count",
                   choices=["time", "count"])
        spec.param("packet_us", int, 1000, "time slice length (also the IMU grouping grid)", minimum=1)
        spec.param("packet_events", int, 10_000, "events per message with packet: count", minimum=1)
        spec.param("pace", str, "realtime", "realtime (sensor time follows wall time) or fast",
                   choices=["realtime", "fast"])
        spec.param("speed", float, 1.0, "realtime speed factor (2.0 = twice real time)", minimum=1e-3)
        spec.param("loops", int, 1, "times the recording is played", minimum=1)
        spec.param("frames", bool, True, "emit the recording's APS frames")
        spec.param("imu", bool, True, "emit the recording's IMU samples")
        spec.param("triggers", bool, True, "emit the recording's external trigger edges")
        spec.param("checksum", bool, True, "checksum what is produced (about 5 ns per event)")

    # ------------------------------------------------------------------------------------ setup

    def start(self) -> None:
        p = self.params
        self.produced = {"messages": 0, "events": 0, "checksum": 0, "frames": 0, "imu_messages": 0,
                         "imu_samples": 0, "trigger_messages": 0, "triggers": 0}
        self.removed = {"roi": 0, "polarity": 0}
        self.error: str | None = None
        self.pacer: Pacer | None = None
        self.feed: Iterator[Item] | None = None
        sensor_size = None
        if p.sensor_size is not None:
            if len(p.sensor_size) != 2 or not all(isinstance(v, int) and v > 0 for v in p.sensor_size):
                self._fail(f"parameter 'sensor_size' must be [width, height] (positive integers), got {p.sensor_size}")
            sensor_size = tuple(p.sensor_size)
        try:
            self.recording: Recording = open_recording(p.path, sensor_size=sensor_size, on_error=p.on_error,
                                                       topics=p.topics)
            first, end = self.recording.time_range()
        except (RecordingError, ValueError, OSError) as exc:
            self._fail(str(exc))
        self.origin = first
        duration = end - first
        self.t_stop = duration if p.t_stop is None else min(p.t_stop, duration)
        if p.t_start >= self.t_stop:
            self._fail(f"{p.path}: t_start={p.t_start} µs is not before the end of playback ({self.t_stop} µs: "
                       f"t_stop={p.t_stop}, recording length {duration} µs)")
        self.span = self.t_stop - p.t_start
        width, height = self.recording.sensor_size
        self.roi = None
        if p.roi is not None:
            if (len(p.roi) != 4 or not all(isinstance(v, int) for v in p.roi)
                    or not (0 <= p.roi[0] < p.roi[2] <= width and 0 <= p.roi[1] < p.roi[3] <= height)):
                self._fail(f"parameter 'roi' must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= {width} and "
                           f"0 <= y0 < y1 <= {height} (the {width}x{height} sensor of {p.path}), got {p.roi}")
            self.roi = tuple(p.roi)
            width, height = self.roi[2] - self.roi[0], self.roi[3] - self.roi[1]
        self.size = (width, height)

    def _fail(self, message: str) -> None:
        # NodeError: the worker prints this one line and the graph stops, with no traceback — bad input is
        # the user's to fix, and a stack trace would bury the message.
        self.error = message
        recording = getattr(self, "recording", None)
        if recording is not None:
            recording.close()
        raise NodeError(f"{self.name}: {message}")

    # ---------------------------------------------------------------------------------- produce

    def produce(self) -> Iterator[tuple[str, Message]]:
        p = self.params
        self.pacer = Pacer(p.pace == "realtime", p.speed, p.t_start)
        try:
            self.feed = prefetch(self._items(), PREFETCH_MESSAGES)
            for due, port, msg in self.feed:
                self.pacer.wait(due)
                self._count(port, msg)  # before yielding: the runtime may stop the generator right after sending
                yield port, msg
        except RecordingError as exc:
            self._fail(str(exc))

    def _items(self) -> Iterator[Item]:
        for k in range(self.params.loops):
            streams = [self._event_items(k)]
            if self.params.imu:
                streams.append(self._imu_items(k))
            if self.params.frames:
                streams.append(self._frame_items(k))
            if self.params.triggers:
                streams.append(self._trigger_items(k))
            yield from heapq.merge(*streams, key=itemgetter(0))

    def _file_window(self) -> tuple[int, int]:
        return self.origin + self.params.t_start, self.origin + self.t_stop

    def _event_items(self, k: int) -> Iterator[Item]:
        p = self.params
        shift = k * self.span
        start, stop = self.params.t_start + shift, self.t_stop + shift
        chunks = self.recording.events(*self._file_window(), chunk_events=READ_CHUNK_EVENTS)
        pending = Events.empty()
        if p.packet == "count":
            for chunk in chunks:
                pending = Events.concatenate([pending, self._ingest(chunk, shift)])
                n_full = len(pending) // p.packet_events
                for j in range(n_full):
                    packet = pending[j * p.packet_events:(j + 1) * p.packet_events]
                    yield int(packet.t[-1]), "events", Message.from_events(packet, width=self.size[0],
                                                                          height=self.size[1])
                pending = pending[n_full * p.packet_events:]
            if len(pending):
                yield int(pending.t[-1]), "events", Message.from_events(pending, width=self.size[0],
                                                                       height=self.size[1])
            return
        slice_us = p.packet_us
        slice_start = start
        for chunk in chunks:
            # Completeness comes from the unfiltered chunk: its last event proves every earlier slice has ended.
            t_known = int(chunk.t[-1]) - self.origin + shift
            pending = Events.concatenate([pending, self._ingest(chunk, shift)])
            n_complete = (t_known - slice_start) // slice_us if t_known >= slice_start else 0
            ends = slice_start + slice_us * np.arange(1, n_complete + 1, dtype=np.int64)
            cuts = np.searchsorted(pending.t, ends, side="left")
            lo = 0
            for end, hi in zip(ends.tolist(), cuts.tolist(), strict=True):
                yield end, "events", self._slice_message(pending[lo:hi], end - slice_us, end)
                lo = hi
            pending = pending[lo:]
            slice_start += n_complete * slice_us
        while slice_start < stop:  # the rest of the pass, the last slice cut at the pass end
            end = min(slice_start + slice_us, stop)
            hi = int(np.searchsorted(pending.t, end, side="left"))
            yield end, "events", self._slice_message(pending[:hi], slice_start, end)
            pending = pending[hi:]
            slice_start = end

    def _slice_message(self, events: Events, t0: int, t1: int) -> Message:
        """Events of the time slice [t0, t1)."""
        msg = Message.from_events(events, width=self.size[0], height=self.size[1], watermark_us=t1 - 1)
        msg.t_range = (t0, t1 - 1)
        if not len(events):
            msg.trace = Trace(sensor_t=t1 - 1)
        return msg

    def _ingest(self, chunk: Events, shift: int) -> Events:
        """Normalise time, crop to the ROI, filter polarity; counts what is removed."""
        t = chunk.t - (self.origin - shift)
        x, y, p = chunk.x, chunk.y, chunk.p
        keep = None
        if self.roi is not None:
            x0, y0, x1, y1 = self.roi
            keep = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
            self.removed["roi"] += int(len(t) - np.count_nonzero(keep))
        if self.params.polarity != "both":
            wanted = p == (1 if self.params.polarity == "on" else -1)
            self.removed["polarity"] += int(np.count_nonzero(~wanted if keep is None else keep & ~wanted))
            keep = wanted if keep is None else keep & wanted
        if keep is not None:
            t, x, y, p = t[keep], x[keep], y[keep], p[keep]
        if self.roi is not None:
            x = (x - np.uint16(self.roi[0])).astype(np.uint16)
            y = (y - np.uint16(self.roi[1])).astype(np.uint16)
        return Events(t, x, y, p)

    def _frame_items(self, k: int) -> Iterator[Item]:
        shift = k * self.span - self.origin
        for frame in self.recording.frames(*self._file_window()):
            image = frame.image
            if self.roi is not None:
                x0, y0, x1, y1 = self.roi
                image = image[y0:y1, x0:x1]
            if image.dtype != np.uint8:  # 16-bit and float files: [0, 1] floats
                image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
            out = Frame(np.ascontiguousarray(image), frame.t + shift, frame.exposure_us)
            yield self._frame_due(out.exposure_end, k), "frames", Message.from_frame(out)

    def _frame_due(self, exposure_end: int, k: int) -> int:
        """A frame is complete at its exposure end; with time slices it waits for the end of that slice, so
        every event up to its exposure end is sent before it."""
        if self.params.packet == "count":
            return exposure_end
        grid_start = self.params.t_start + k * self.span
        slice_us = self.params.packet_us
        return grid_start + -(-(exposure_end - grid_start) // slice_us) * slice_us

    def _imu_items(self, k: int) -> Iterator[Item]:
        shift = k * self.span - self.origin
        grid_start = self.params.t_start + k * self.span
        slot_us = self.params.packet_us
        for batch in self.recording.imu(*self._file_window()):
            t = batch.t + shift
            slots = (t - grid_start) // slot_us
            bounds = np.flatnonzero(np.diff(slots)) + 1
            for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(t)], strict=True):
                arrays = {"t": t[lo:hi], "accel": np.asarray(batch.accel[lo:hi], np.float32),
                          "gyro": np.asarray(batch.gyro[lo:hi], np.float32)}
                t_range = (int(t[lo]), int(t[hi - 1]))
                due = grid_start + (int(slots[lo]) + 1) * slot_us
                yield due, "imu", Message("imu", arrays, {}, t_range, Trace(sensor_t=t_range[1]))

    def _trigger_items(self, k: int) -> Iterator[Item]:
        """Trigger edges grouped on the ``packet_us`` grid like IMU samples, due at the end of their slot; a slot's
        group is held until a later edge (or the end) shows it complete, so it does not depend on the reader's
        batches."""
        shift = k * self.span - self.origin
        grid_start = self.params.t_start + k * self.span
        slot_us = self.params.packet_us
        pending = Triggers.empty()
        for batch in self.recording.triggers(*self._file_window()):
            pending = Triggers.concatenate([pending, Triggers(batch.t + shift, batch.edge, batch.channel)])
            slots = (pending.t - grid_start) // slot_us
            complete = int(np.searchsorted(slots, slots[-1], side="left"))
            yield from self._trigger_groups(pending[:complete], grid_start, slot_us)
            pending = pending[complete:]
        yield from self._trigger_groups(pending, grid_start, slot_us)

    @staticmethod
    def _trigger_groups(triggers: Triggers, grid_start: int, slot_us: int) -> Iterator[Item]:
        slots = (triggers.t - grid_start) // slot_us
        bounds = np.flatnonzero(np.diff(slots)) + 1
        for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(slots)], strict=True):
            if hi > lo:
                yield grid_start + (int(slots[lo]) + 1) * slot_us, "triggers", Message.from_triggers(triggers[lo:hi])

    def _count(self, port: str, msg: Message) -> None:
        produced = self.produced
        if port == "events":
            a = msg.arrays
            produced["messages"] += 1
            produced["events"] += len(a["t"])
            if self.params.checksum:
                produced["checksum"] = (produced["checksum"] + msg.events().checksum()) % (1 << 64)
        elif port == "frames":
            produced["frames"] += 1
        elif port == "triggers":
            produced["trigger_messages"] += 1
            produced["triggers"] += len(msg.arrays["t"])
        else:
            produced["imu_messages"] += 1
            produced["imu_samples"] += len(msg.arrays["t"])

    # ------------------------------------------------------------------------------------- stop

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.close()  # stopped early: end the reading thread before the file closes under it
        report: dict[str, Any] = {"produced": self.produced, "removed": self.removed}
        recording = getattr(self, "recording", None)
        if recording is not None:
            report["issues"] = recording.issues.by_kind()
            report["recording"] = {"path": str(recording.path), "format": recording.format,
                                   "sensor_size": list(recording.sensor_size), "output_size": list(self.size),
                                   "t_origin_us": self.origin, "t_start": self.params.t_start,
                                   "t_stop": self.t_stop, "loops": self.params.loops}
            recording.close()
        if self.pacer is not None:
            report["pacing"] = self.pacer.summary()
        if self.error is not None:
            report["error"] = self.error
        self.report(report)
