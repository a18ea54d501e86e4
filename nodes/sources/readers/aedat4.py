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
* A damaged compressed packet can make dv-processing 2.0.4 spin forever in ``LZ4F_decompress`` with the
  GIL held, which no thread of this process could interrupt. So dv-processing runs in a forked child
  (:class:`_Decoder`) and every call must answer within ``DECODE_TIMEOUT_S``; a call that does not is a
  damaged file (``RecordingError``, kind ``corrupt``), and the child is killed.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

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


# A call reads at most about a window of events, a second of frames or of IMU: milliseconds; this allows for a
# heavily loaded machine while a spinning decoder is still caught well before a user gives up.
DECODE_TIMEOUT_S = 3.0


class DecoderTimeoutError(Exception):
    """dv-processing did not answer a call within the deadline (the child has been killed)."""


def _serve(path: str, conn: Connection) -> None:
    """The child: dv-processing on ``path``, answering (method, args) requests with ("ok", value) or
    ("error", exception type name, message)."""
    try:
        reader = dv.io.MonoCameraRecording(path)
    except Exception as exc:
        conn.send(("error", type(exc).__name__, str(exc)))
        return
    conn.send(("ok", None))
    calls = {"info": lambda: _info(reader), "events": lambda a, b: _events(reader, a, b),
             "frames": lambda a, b: _frames(reader, a, b), "imu": lambda a, b: _imu(reader, a, b),
             "triggers": lambda a, b: _triggers(reader, a, b)}
    while True:
        try:
            method, args = conn.recv()
        except EOFError:
            return
        if method == "close":
            return
        try:
            conn.send(("ok", calls[method](*args)))
        except Exception as exc:
            conn.send(("error", type(exc).__name__, str(exc)))


def _info(reader: Any) -> dict[str, Any]:
    resolution = {"event": reader.getEventResolution() if reader.isEventStreamAvailable() else None,
                  "frame": reader.getFrameResolution() if reader.isFrameStreamAvailable() else None}
    return {"camera": reader.getCameraName(), "events": reader.isEventStreamAvailable(),
            "frames": reader.isFrameStreamAvailable(), "imu": reader.isImuStreamAvailable(),
            "triggers": reader.isTriggerStreamAvailable(),
            "resolution": {k: None if v is None else tuple(v) for k, v in resolution.items()},
            "time_range": tuple(int(v) for v in reader.getTimeRange())}


def _events(reader: Any, start: int, end: int) -> dict[str, np.ndarray] | None:
    store = reader.getEventsTimeRange(start, end)
    if store is None or not store.size():
        return None
    packet = store.numpy()
    return {"t": np.array(packet["timestamp"], dtype=np.int64), "x": np.array(packet["x"], dtype=np.int16),
            "y": np.array(packet["y"], dtype=np.int16), "p": np.array(packet["polarity"], dtype=np.int8)}


def _frames(reader: Any, start: int, end: int) -> list[tuple[int, int, np.ndarray]]:
    """(exposure start, exposure µs, pixels) of each frame, pixels owned (independent of dv's frame)."""
    return [(int(f.timestamp), f.exposure // datetime.timedelta(microseconds=1), np.array(f.image))
            for f in reader.getFramesTimeRange(start, end) or []]


def _imu(reader: Any, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    samples = reader.getImuTimeRange(start, end) or []
    if not len(samples):
        return None
    return (np.array([s.timestamp for s in samples], dtype=np.int64),
            np.array([(s.accelerometerX, s.accelerometerY, s.accelerometerZ) for s in samples], dtype=np.float32),
            np.array([(s.gyroscopeX, s.gyroscopeY, s.gyroscopeZ) for s in samples], dtype=np.float32))


def _triggers(reader: Any, start: int, end: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(times, edges) of the external-signal edges (1 rising, 0 falling); other trigger types are not edges."""
    edges = {dv.TriggerType.EXTERNAL_SIGNAL_RISING_EDGE: 1, dv.TriggerType.EXTERNAL_SIGNAL_FALLING_EDGE: 0}
    found = [(int(x.timestamp), edges[x.type]) for x in reader.getTriggersTimeRange(start, end) or []
             if x.type in edges]
    if not found:
        return None
    times, values = zip(*found, strict=True)
    return np.array(times, np.int64), np.array(values, np.uint8)


class _Decoder:
    """dv-processing's ``MonoCameraRecording`` in a forked child (the parent has dv-processing loaded already, so
    the child starts in milliseconds); each call must answer within ``timeout_s``, else the child is killed and
    :class:`DecoderTimeoutError` raised. The child's errors come back as RuntimeError or ValueError, as in-process."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        context = multiprocessing.get_context("fork")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_serve, args=(str(path), child_conn), daemon=True,
                                        name=f"aedat4-decoder {path.name}")
        self._process.start()
        child_conn.close()
        try:
            self._answer("open")
        except (RuntimeError, ValueError, DecoderTimeoutError):
            self.close()
            raise

    def call(self, method: str, *args: Any) -> Any:
        self._conn.send((method, args))
        return self._answer(method, *args)

    def _answer(self, method: str, *args: Any) -> Any:
        if not self._conn.poll(self.timeout_s):
            self.close()
            raise DecoderTimeoutError(f"{method}{args if args else ''}")
        try:
            status, *value = self._conn.recv()
        except EOFError:  # the child died (a native crash)
            code = self._process.exitcode
            self.close()
            raise RuntimeError(f"dv-processing's decoder exited with code {code} during {method}") from None
        if status == "error":
            name, message = value
            error = RuntimeError if name == "RuntimeError" else ValueError
            raise error(message if name in ("RuntimeError", "ValueError") else f"{name}: {message}")
        return value[0]

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("close", ()))
            self._process.join(0.5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


class Aedat4Recording(Recording):
    """An AEDAT4 file (see the module docstring)."""

    format = "aedat4"
    # dv-processing on a damaged file: RuntimeError (packets), UnicodeDecodeError (the XML description)
    LIBRARY_ERRORS = (RuntimeError, ValueError)

    def _open(self) -> None:
        try:
            self._decoder = _Decoder(self.path, DECODE_TIMEOUT_S)
        except RuntimeError as exc:
            raise self.error(
                f"dv-processing cannot open it ({first_line(exc)}). An AEDAT4 file keeps its packet index "
                "at its end, so a truncated or partly written file is unreadable: re-copy it, or re-export "
                "it with DV",
                kind="truncated",
            ) from None
        except DecoderTimeoutError:
            raise self._hung("its header") from None
        info = self._call("info")
        self.camera = info["camera"]
        self._has_events, self._has_frames, self._has_imu = info["events"], info["frames"], info["imu"]
        self._has_triggers = info["triggers"]
        self._file_time_range = info["time_range"]
        for stream, available in (("event", self._has_events), ("frame", self._has_frames)):
            if available:
                resolution = info["resolution"][stream]
                if resolution is None:
                    raise self.error(f"the {stream} stream's description gives no resolution: the file header "
                                     "is damaged; re-copy or re-export it", kind="corrupt")
                self._header_sensor_size = tuple(resolution)
                break

    def _close(self) -> None:
        decoder = getattr(self, "_decoder", None)
        if decoder is not None:
            decoder.close()
            self._decoder = None

    def _hung(self, what: str) -> Exception:
        return self.error(f"dv-processing did not finish decoding {what} within {DECODE_TIMEOUT_S:g} s: a damaged "
                          "compressed packet makes its LZ4 decoder spin; re-copy or re-export the file",
                          kind="corrupt")

    def _call(self, method: str, *args: int) -> Any:
        """A dv-processing call in the decoder child; a hang is a damaged file."""
        try:
            return self._decoder.call(method, *args)
        except DecoderTimeoutError:
            what = "its header" if method == "info" else f"the {method} of [{args[0]}, {args[1]}) µs"
            raise self._hung(what) from None

    def _time_range(self) -> tuple[int, int]:
        start, end = self._file_time_range
        return start, end + 1

    def _read_events(self, t_start: int | None, t_stop: int | None, chunk_events: int) -> Iterator[RawEvents]:
        if not self._has_events:
            return
        first, end = self.time_range()
        t = first if t_start is None else max(first, t_start)
        stop = end if t_stop is None else min(end, t_stop)
        window = _FIRST_WINDOW_US
        while t < stop:
            window_end = min(t + window, stop)
            packet = self._call("events", t, window_end)
            n = 0 if packet is None else len(packet["t"])
            if n:
                yield RawEvents(**packet, unit="t_us", positions=packet["t"])
            # Aim the next window at chunk_events events, changing at most 4x per step.
            window = int(np.clip(window * chunk_events / max(n, 1), window // 4 + 1, window * 4))
            t = window_end

    def _read_frames(self, t_start: int | None, t_stop: int | None) -> Iterator[tuple[str, int, Frame]]:
        if not self._has_frames:
            return
        reach_back = None if t_start is None else t_start - _MAX_EXPOSURE_US
        for start, end in self._windows(reach_back, t_stop, _FRAME_WINDOW_US):
            for timestamp, exposure, image in self._call("frames", start, end):
                if image.ndim == 3 and image.shape[2] == 1:
                    image = image[:, :, 0]
                elif image.ndim == 3 and image.shape[2] in (3, 4):
                    image = np.ascontiguousarray(image[:, :, 2::-1])  # BGR(A) -> RGB
                yield "t_us", timestamp, Frame(image=image, t=timestamp + exposure // 2, exposure_us=exposure)

    def _read_imu(self, t_start: int | None, t_stop: int | None) -> Iterator[Imu]:
        if not self._has_imu:
            return
        for start, end in self._windows(t_start, t_stop, _IMU_WINDOW_US):
            samples = self._call("imu", start, end)
            if samples is not None:
                t_us, accel, gyro = samples
                yield Imu(t=t_us, accel=accel, gyro=gyro)

    def _read_triggers(self, t_start: int | None, t_stop: int | None) -> Iterator[Triggers]:
        if not self._has_triggers:
            return
        for start, end in self._windows(t_start, t_stop, _IMU_WINDOW_US):
            found = self._call("triggers", start, end)
            if found is not None:
                times, values = found
                yield Triggers(times, values, np.zeros(len(times), np.uint8))

    def _windows(self, t_start: int | None, t_stop: int | None, step_us: int) -> Iterator[tuple[int, int]]:
        """[start, end) windows of ``step_us`` covering the file's time range clipped to [t_start, t_stop)."""
        first, last = self.time_range()
        t = first if t_start is None else max(first, t_start)
        stop = last if t_stop is None else min(last, t_stop)
        while t < stop:
            end = min(t + step_us, stop)
            yield t, end
            t = end
