"""The AEDAT4 recorder: events, frames and IMU written with dv-processing's ``io.MonoCameraWriter``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dv_processing as dv
import numpy as np

from evpipe.nodes.sinks.ordering import StreamOrder
from evpipe.runtime.events import Frame
from evpipe.runtime.node import Node, NodeError, Spec
from evpipe.runtime.wire import Message


def events_store(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray) -> dv.EventStore:
    """A fresh dv-processing EventStore holding these events (t int64 µs, x/y uint16, p int8 ±1).

    Always a new store filled event by event: writing an ``EventStore.sliceTime(...)`` result was seen
    to duplicate events in the file (../shared/data/README.md), so slices never reach the writer.
    dv-processing 2.0 has no bulk constructor from arrays; push_back costs about 1.4 µs per event.
    """
    store = dv.EventStore()
    push = store.push_back
    for ti, xi, yi, on in zip(t.tolist(), x.tolist(), y.tolist(), (p > 0).tolist(), strict=True):
        push(ti, xi, yi, on)
    return store


class Aedat4Recorder(Node):
    """Records its inputs into an AEDAT4 file (iniVation DV's format): events, APS frames, IMU and trigger edges.

    The writer is created at the first message, with the sensor size from ``sensor_size``, the events'
    ``width``/``height`` meta or the first frame's shape. Timestamps are written as received (µs; a
    replayed recording's times start at 0): frames with their exposure start as AEDAT4 expects
    (``Frame.exposure_start``), so reading the file back gives the same exposure midpoints; trigger edges as
    DV's external-signal rising / falling triggers (AEDAT4 has no trigger channel: channels are not kept). Colour
    frames are written BGR, float frames as uint8. ``stop()`` (also on Ctrl-C) closes the writer, which
    writes the file's packet index: a file is complete only after it. Every stream must arrive in time
    order; an item older than the last one written on its stream is dropped and counted.

    Report: ``path``, ``events``, ``event_messages``, ``checksum`` (of the events written), ``frames``,
    ``imu_samples``, ``triggers``, ``dropped_out_of_order``.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("events", "events", "event packets, time-ordered")
        spec.input("frames", "frame", "frames (uint8 or float [0, 1]; gray or RGB)")
        spec.input("imu", "imu", "IMU samples: t, accel [g], gyro [deg/s]")
        spec.input("triggers", "triggers", "external trigger edges (AEDAT4 stores no channel)")
        spec.param("path", str, doc="output .aedat4 file (its folder is created)")
        spec.param("sensor_size", list, None, "[width, height]; null: from the events' meta or the first frame")
        spec.param("camera_name", str, "evpipe", "camera name stored in the file")
        spec.param("compression", str, "lz4", "packet compression", choices=["none", "lz4", "zstd"])

    def start(self) -> None:
        self.path = Path(self.params.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeError(f"{self.name}: cannot create the folder of {self.path} ({exc.strerror})") from None
        self.writer: dv.io.MonoCameraWriter | None = None
        self.order = StreamOrder()
        self.written = {"events": 0, "event_messages": 0, "checksum": 0, "frames": 0, "imu_samples": 0,
                        "triggers": 0}

    def _open(self, msg: Message) -> dv.io.MonoCameraWriter:
        size = self.params.sensor_size
        if size is None and "width" in msg.meta and "height" in msg.meta:
            size = [int(msg.meta["width"]), int(msg.meta["height"])]
        if size is None and msg.kind == "frame":
            size = [int(msg.arrays["image"].shape[1]), int(msg.arrays["image"].shape[0])]
        if size is None or len(size) != 2:
            raise NodeError(f"{self.name}: the sensor size is unknown (the first message, {msg.kind}, carries no "
                             "width/height); set parameter 'sensor_size' to [width, height]")
        compression = {"none": dv.CompressionType.NONE, "lz4": dv.CompressionType.LZ4,
                       "zstd": dv.CompressionType.ZSTD}[self.params.compression]
        config = dv.io.MonoCameraWriter.DAVISConfig(self.params.camera_name, (int(size[0]), int(size[1])), compression)
        try:
            return dv.io.MonoCameraWriter(str(self.path), config)
        except RuntimeError as exc:
            raise NodeError(f"{self.name}: cannot write {self.path} ({exc})") from None

    def process(self, port: str, msg: Message) -> None:
        if self.writer is None:
            self.writer = self._open(msg)
        if port == "events":
            self._write_events(msg)
        elif port == "frames":
            self._write_frame(msg.frame())
        elif port == "triggers":
            self._write_triggers(msg)
        else:
            self._write_imu(msg)

    def _write_events(self, msg: Message) -> None:
        events = msg.events()
        if not len(events):
            return
        keep = self.order.keep("events", events.t)
        if not keep.all():
            events = events[keep]
        self.writer.writeEvents(events_store(events.t, events.x, events.y, events.p))
        self.written["events"] += len(events)
        self.written["event_messages"] += 1
        self.written["checksum"] = (self.written["checksum"] + events.checksum()) % (1 << 64)

    def _write_frame(self, frame: Frame) -> None:
        if not self.order.keep("frames", np.array([frame.exposure_start], np.int64))[0]:
            return
        image = frame.image
        if image.dtype != np.uint8:
            image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        if image.ndim == 3:
            image = image[:, :, ::-1]  # RGB -> BGR, as DV stores colour
        dv_frame = dv.Frame(frame.exposure_start, frame.exposure_us, 0, 0, np.ascontiguousarray(image),
                            dv.FrameSource.SENSOR)
        self.writer.writeFrame(dv_frame)
        self.written["frames"] += 1

    def _write_imu(self, msg: Message) -> None:
        t, accel, gyro = msg.arrays["t"], msg.arrays["accel"], msg.arrays["gyro"]
        keep = self.order.keep("imu", t)
        for ti, a, g in zip(t[keep].tolist(), accel[keep].tolist(), gyro[keep].tolist(), strict=True):
            self.writer.writeImu(dv.IMU(ti, 0.0, *a, *g, 0.0, 0.0, 0.0))
        self.written["imu_samples"] += int(np.count_nonzero(keep))

    def _write_triggers(self, msg: Message) -> None:
        triggers = msg.triggers()
        keep = self.order.keep("triggers", triggers.t)
        for ti, rising in zip(triggers.t[keep].tolist(), triggers.edge[keep].tolist(), strict=True):
            kind = dv.TriggerType.EXTERNAL_SIGNAL_RISING_EDGE if rising else dv.TriggerType.EXTERNAL_SIGNAL_FALLING_EDGE
            self.writer.writeTrigger(dv.Trigger(ti, kind))
        self.written["triggers"] += int(np.count_nonzero(keep))

    def stop(self) -> None:
        # Destroying the writer flushes buffered packets and writes the packet index that completes the file.
        self.writer = None
        report: dict[str, Any] = {"path": str(self.path), **self.written, "dropped_out_of_order": self.order.dropped}
        self.report(report)
