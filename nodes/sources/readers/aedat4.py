"""AEDAT4 recordings (iniVation DV) through dv-processing's ``io.MonoCameraRecording``.

Reads events, APS frames and IMU of one camera. Timestamps stay absolute Unix µs, as in the file;
``t_offset`` is the recording's first timestamp. All access goes through dv-processing's time-range
queries (``get*TimeRange(start, end)``, half-open), which seek with the file's packet index, so a
window in the middle of a long file is read without decoding what comes before it. Events are fetched
in windows whose length adapts to the event rate so a chunk is about ``chunk_events`` events, and are
copied out of dv-processing's stores at once (dv-processing slices share memory with their parent
store; the data README records a slicing/writing pitfall).

* Frames: dv-processing's ``Frame.timestamp`` is the start of exposure, so ``Frame.t`` is
  ``timestamp + exposure // 2`` (the exposure midpoint). Colour frames arrive BGR(A) and are given
  as RGB.
* IMU: the raw AEDAT4 fields, accelerometer in g and gyroscope in deg/s.
* Triggers: DV's external-signal rising / falling edges (``EXTERNAL_SIGNAL_RISING_EDGE`` /
  ``_FALLING_EDGE``) as edges 1 / 0 on channel 0; other trigger types (APS exposure markers, pulses,
  timestamp resets) are not edges and are left out.
* A truncated AEDAT4 file cannot be read at all: its packet index sits at the end of the file.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import dv_processing as dv
import numpy as np

from evpipe.runtime.events import Frame, Imu, Triggers

from .base import RawEvents, Recording, first_line

_FIRST_WINDOW_US = 10_000
_FRAME_WINDOW_US = 1_000_000
_IMU_WINDOW_US = 1_000_000
# Frames are fetched by exposure start; reaching back this far catches every frame whose midpoint
# lies in the window (APS exposures are far shorter).
_MAX_EXPOSURE_US = 1_000_000


class Aedat4Recording(Recording):
    """An AEDAT4 file (see the module docstring)."""

    format = "aedat4"
    # dv-processing on a damaged file: RuntimeError (packets), UnicodeDecodeError (the XML description)
    LIBRARY_ERRORS = (RuntimeError, ValueError)

    def _open(self) -> None:
        try:
            self._reader = dv.io.MonoCameraRecording(str(self.path))
        except RuntimeError as exc:
            raise self.error(
                f"dv-processing cannot open it ({first_line(exc)}). An AEDAT4 file keeps its packet index "
                "at its end, so a truncated or partly written file is unreadable: re-copy it, or re-export "
                "it with DV",
                kind="truncated",
            ) from None
        reader = self._reader
        self.camera = reader.getCameraName()
        self._has_events = reader.isEventStreamAvailable()
        self._has_frames = reader.isFrameStreamAvailable()
        self._has_imu = reader.isImuStreamAvailable()
        self._has_triggers = reader.isTriggerStreamAvailable()
        for stream, available, get_resolution in (("event", self._has_events, reader.getEventResolution),
                                                  ("frame", self._has_frames, reader.getFrameResolution)):
            if available:
                resolution = get_resolution()
                if resolution is None:
                    raise self.error(f"the {stream} stream's description gives no resolution: the file header "
                                     "is damaged; re-copy or re-export it", kind="corrupt")
                self._header_sensor_size = tuple(resolution)
                break

    def _close(self) -> None:
        self._reader = None

    def _time_range(self) -> tuple[int, int]:
        start, end = self._reader.getTimeRange()
        return int(start), int(end) + 1

    def _read_events(self, t_start: int | None, t_stop: int | None, chunk_events: int) -> Iterator[RawEvents]:
        if not self._has_events:
            return
        first, end = self.time_range()
        t = first if t_start is None else max(first, t_start)
        stop = end if t_stop is None else min(end, t_stop)
        window = _FIRST_WINDOW_US
        while t < stop:
            window_end = min(t + window, stop)
            store = self._reader.getEventsTimeRange(t, window_end)
            n = 0 if store is None else store.size()
            if n:
                packet = store.numpy()
                times = np.array(packet["timestamp"], dtype=np.int64)
                yield RawEvents(
                    t=times,
                    x=np.array(packet["x"], dtype=np.int16),
                    y=np.array(packet["y"], dtype=np.int16),
                    p=np.array(packet["polarity"], dtype=np.int8),
                    unit="t_us",
                    positions=times,
                )
            # Aim the next window at chunk_events events, changing at most 4x per step.
            window = int(np.clip(window * chunk_events / max(n, 1), window // 4 + 1, window * 4))
            t = window_end

    def _read_frames(self, t_start: int | None, t_stop: int | None) -> Iterator[tuple[str, int, Frame]]:
        if not self._has_frames:
            return
        first, end = self.time_range()
        t = first if t_start is None else max(first, t_start - _MAX_EXPOSURE_US)
        stop = end if t_stop is None else min(end, t_stop)
        while t < stop:
            window_end = min(t + _FRAME_WINDOW_US, stop)
            for frame in self._reader.getFramesTimeRange(t, window_end) or []:
                exposure = frame.exposure // datetime.timedelta(microseconds=1)
                image = np.array(frame.image)  # own the pixels, independent of dv's frame
                if image.ndim == 3 and image.shape[2] == 1:
                    image = image[:, :, 0]
                elif image.ndim == 3 and image.shape[2] in (3, 4):
                    image = np.ascontiguousarray(image[:, :, 2::-1])  # BGR(A) -> RGB
                yield (
                    "t_us",
                    int(frame.timestamp),
                    Frame(image=image, t=int(frame.timestamp) + exposure // 2, exposure_us=exposure),
                )
            t = window_end

    def _read_imu(self, t_start: int | None, t_stop: int | None) -> Iterator[Imu]:
        if not self._has_imu:
            return
        first, end = self.time_range()
        t = first if t_start is None else max(first, t_start)
        stop = end if t_stop is None else min(end, t_stop)
        while t < stop:
            window_end = min(t + _IMU_WINDOW_US, stop)
            samples = self._reader.getImuTimeRange(t, window_end) or []
            if len(samples):
                yield Imu(
                    t=np.array([s.timestamp for s in samples], dtype=np.int64),
                    accel=np.array(
                        [(s.accelerometerX, s.accelerometerY, s.accelerometerZ) for s in samples],
                        dtype=np.float32,
                    ),
                    gyro=np.array([(s.gyroscopeX, s.gyroscopeY, s.gyroscopeZ) for s in samples], dtype=np.float32),
                )
            t = window_end

    def _read_triggers(self, t_start: int | None, t_stop: int | None) -> Iterator[Triggers]:
        if not self._has_triggers:
            return
        first, end = self.time_range()
        t = first if t_start is None else max(first, t_start)
        stop = end if t_stop is None else min(end, t_stop)
        edges = {dv.TriggerType.EXTERNAL_SIGNAL_RISING_EDGE: 1, dv.TriggerType.EXTERNAL_SIGNAL_FALLING_EDGE: 0}
        while t < stop:
            window_end = min(t + _IMU_WINDOW_US, stop)
            found = [(int(x.timestamp), edges[x.type]) for x in self._reader.getTriggersTimeRange(t, window_end) or []
                     if x.type in edges]
            if found:
                times, values = zip(*found, strict=True)
                yield Triggers(np.array(times, np.int64), np.array(values, np.uint8), np.zeros(len(times), np.uint8))
            t = window_end
