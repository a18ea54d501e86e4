"""The `Recording` base class, the bad-input policy and the event checks every format reader shares.

A format reader implements a few private hooks (``_open``, ``_read_events``, ``_time_range`` and,
where the format has them, ``_read_frames`` / ``_read_imu`` / ``_read_triggers``); this module owns what is common:

* **Timebase.** Every reader yields int64 µs. Timestamps keep the clock of the file: absolute Unix
  µs for AEDAT4 (so frames, IMU and a re-written AEDAT4 agree with DV tools), µs from the stream
  start for Prophesee ``.raw``, Event Stream and RPG text (whose specs define that origin), and the
  file's own values for HDF5/NumPy files — except the DSEC layout, whose events are stored relative
  to a declared ``t_offset`` and are yielded absolute (``t + t_offset``) like AEDAT4.
  ``Recording.t_offset`` is the origin of that clock, so ``t - recording.t_offset`` is "µs since the
  recording's origin" for every format: the declared ``t_offset`` for DSEC, 0 for the formats whose
  clock starts at the stream start, and the first timestamp of the recording (``time_range()[0]``)
  for the rest (AEDAT4, plain HDF5, NumPy).
* **Bad input.** With ``on_error="raise"`` the first problem raises `RecordingError` naming the file,
  the position (byte offset, line, index or timestamp) and the fix. With ``on_error="skip"`` the
  offending items are dropped, counted in ``recording.issues`` and announced once per kind with a
  `RecordingWarning` — never silently. Events whose timestamp goes back in time (below the largest
  timestamp already delivered) are dropped; events with equal timestamps are legal.
* **Chunking.** ``events()`` yields time-ordered `Events` packets of exactly ``chunk_events`` events
  (the last one shorter); readers never load a whole large file.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np
from PIL import Image

from evpipe.runtime.events import Events, Frame, Imu, Triggers

DEFAULT_CHUNK_EVENTS = 1 << 20
_Item = TypeVar("_Item")
ON_ERROR_CHOICES = ("raise", "skip")

# Fixes suggested in error messages, by issue kind; readers add format-specific text in `detail`.
_SKIP_HINT = "pass on_error='skip' to drop them and continue (they are counted in recording.issues)"
FIXES: dict[str, str] = {
    "out_of_sensor": "pass sensor_size=(width, height) if the sensor is larger, or " + _SKIP_HINT,
    "non_monotonic": "timestamps must not go back in time; " + _SKIP_HINT,
    "bad_polarity": "polarity must be 0/1 or -1/+1; " + _SKIP_HINT,
    "bad_frame_shape": "frames must be (height, width) or (height, width, 3) of the sensor; " + _SKIP_HINT,
    "missing_frame": "restore the image file, or " + _SKIP_HINT,
    "truncated": "the file is cut short (an interrupted copy or recording); re-copy it, or pass "
    "on_error='skip' to read everything before the damage",
    "corrupt": "the file is damaged; re-copy it, or pass on_error='skip' to drop the unreadable part",
    "garbage_line": "each line must hold the numeric columns of the format; " + _SKIP_HINT,
    "unknown_word": "the data is corrupt or not in the format its header declares; " + _SKIP_HINT,
    "no_time_base": "the stream starts without a time-high word, so these events have no timestamp; " + _SKIP_HINT,
    "no_row_address": "the stream starts without a row (y) address, so these events have no y; " + _SKIP_HINT,
}


class RecordingError(ValueError):
    """A recording cannot be read as asked. The message names the file, the position and the fix."""

    def __init__(self, path: str | Path, message: str, *, position: str | None = None, kind: str = "error"):
        self.path = str(path)
        self.position = position
        self.kind = kind
        where = f" at {position}" if position else ""
        super().__init__(f"{path}{where}: {message}")


class RecordingWarning(UserWarning):
    """Something in a recording was corrected or dropped; details are in ``recording.issues``."""


@dataclass(frozen=True)
class Issue:
    """One group of anomalies: ``count`` items of ``kind`` in ``stream``, the first at ``unit offset``.

    ``stream`` is ``"events"``, ``"frames"``, ``"imu"``, ``"triggers"`` or ``"file"``; ``unit`` is
    ``"byte"``, ``"line"``, ``"index"``, ``"frame"``, ``"message"`` (a bag topic's message index) or
    ``"t_us"``. Items are dropped unless ``detail`` says they were corrected.
    """

    stream: str
    kind: str
    unit: str
    offset: int
    count: int
    detail: str

    @property
    def position(self) -> str:
        return f"{self.unit} {self.offset}"


class Issues:
    """Anomalies found while reading, in the order found. A group found again when the same region is
    re-read (same stream, kind and first position) is recorded once."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str, str, int], Issue] = {}

    def add(self, issue: Issue) -> None:
        self._items.setdefault((issue.stream, issue.kind, issue.unit, issue.offset), issue)

    def __iter__(self) -> Iterator[Issue]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def count(self, kind: str | None = None, stream: str | None = None) -> int:
        """Total items affected, optionally of one kind and/or stream."""
        return sum(
            i.count
            for i in self._items.values()
            if (kind is None or i.kind == kind) and (stream is None or i.stream == stream)
        )

    def by_kind(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for issue in self._items.values():
            totals[issue.kind] = totals.get(issue.kind, 0) + issue.count
        return totals

    def clear(self) -> None:
        self._items.clear()


@dataclass(frozen=True)
class RawEvents:
    """Events as a reader decoded them, before the shared checks.

    ``t`` int64 µs (N,); ``x``, ``y`` any integer dtype (N,) (signed allowed: negatives are out of
    the sensor); ``p`` any numeric (N,) with 0/1 or -1/+1. The position of event ``i`` in the file is
    ``positions[i]`` in ``unit``, or ``origin + i`` when ``positions`` is None.
    """

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray
    unit: str
    origin: int = 0
    positions: np.ndarray | None = None

    def position(self, i: int) -> int:
        return int(self.positions[i]) if self.positions is not None else self.origin + int(i)


def recording_image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image file from its header, or None when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except OSError:
        return None


def read_image(recording: Recording, path: Path, unit: str, offset: int) -> np.ndarray | None:
    """Load an image file as (H, W) uint8 gray, (H, W, 3) uint8 RGB, or float32 in [0, 1] for
    16-bit and float images. A missing or unreadable file is a ``missing_frame`` issue (None)."""
    try:
        with Image.open(path) as image:
            if image.mode in ("L", "RGB"):
                return np.asarray(image)
            if image.mode.startswith("I;16") or image.mode == "I":
                return (np.asarray(image, dtype=np.float64) / 65535.0).astype(np.float32)
            if image.mode == "F":
                return np.asarray(image, dtype=np.float32)
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        recording.report("frames", "missing_frame", unit, offset, 1, f"image {path} cannot be read ({exc})")
        return None


def check_coordinate_dtypes(recording: Recording, columns: dict) -> None:
    """Pixel coordinates must be stored as integers (a float column would be silently truncated)."""
    for name in ("x", "y"):
        dtype = columns[name].dtype
        if not np.issubdtype(dtype, np.integer):
            raise recording.error(f"event field {name} has dtype {dtype}; pixel coordinates must be integers")


def first_line(text: str) -> str:
    """First line of a (possibly multi-line, stack-trace laden) library error message."""
    return str(text).strip().splitlines()[0] if str(text).strip() else type(text).__name__


class Recording(ABC):
    """A recorded event-camera file, read in time-ordered chunks.

    Attributes: ``path`` (Path), ``format`` (str), ``sensor_size`` ((width, height) pixels),
    ``sensor_size_source`` (``"argument"``, ``"header"`` or ``"inferred"``), ``on_error``,
    ``issues`` (`Issues`). Use as a context manager or call `close`.
    """

    format: ClassVar[str]
    # True where the format's spec puts time zero at the stream start (t_offset is then 0).
    CLOCK_STARTS_AT_STREAM_START: ClassVar[bool] = False
    # What the library behind a reader (dv-processing, h5py, numpy) raises on a damaged file instead of a
    # documented error; anywhere in the reader, it becomes a RecordingError of kind "corrupt".
    LIBRARY_ERRORS: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(
        self,
        path: str | Path,
        *,
        sensor_size: tuple[int, int] | None = None,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.path = Path(path)
        self.on_error = on_error
        self.issues = Issues()
        self._warned: set[tuple[str, str]] = set()
        self._header_sensor_size: tuple[int, int] | None = None
        self._declared_t_offset: int | None = None
        self._cached_time_range: tuple[int, int] | None = None
        try:
            with self._library_errors():
                self._open()
                self.sensor_size, self.sensor_size_source = self._resolve_sensor_size(sensor_size)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- hooks for format readers

    @abstractmethod
    def _open(self) -> None:
        """Open the file and read its header; set ``_header_sensor_size`` / ``_declared_t_offset``."""

    @abstractmethod
    def _read_events(self, t_start: int | None, t_stop: int | None, chunk_events: int) -> Iterator[RawEvents]:
        """Yield raw event chunks in file order, starting at or before ``t_start`` where the format can
        seek (the caller trims exactly and stops after ``t_stop``)."""

    @abstractmethod
    def _time_range(self) -> tuple[int, int]:
        """(first, last + 1) µs over the first and last records of every stream."""

    def _read_frames(self, t_start: int | None, t_stop: int | None) -> Iterator[tuple[str, int, Frame]]:
        """Yield (position unit, position, frame); the caller checks shapes and trims the window."""
        return iter(())

    def _read_imu(self, t_start: int | None, t_stop: int | None) -> Iterator[Imu]:
        return iter(())

    def _read_triggers(self, t_start: int | None, t_stop: int | None) -> Iterator[Triggers]:
        """Yield trigger batches in file order; the caller trims the window and checks time order."""
        return iter(())

    @abstractmethod
    def _close(self) -> None:
        """Release file handles (called once, also after a failed or partial open)."""

    # ----------------------------------------------------------------------------- public API

    def time_range(self) -> tuple[int, int]:
        """(first, last + 1) timestamp in µs, half-open, over every stream the file holds.

        Taken from the first and last records of each stream (Prophesee and Event Stream files are
        scanned once, then cached); `describe` gives exact statistics for files with anomalies.
        """
        if self._cached_time_range is None:
            with self._library_errors():
                self._cached_time_range = self._time_range()
        return self._cached_time_range

    @property
    def t_offset(self) -> int:
        """Origin of the timestamps' clock in µs: ``t - t_offset`` is µs since the recording's origin."""
        if self._declared_t_offset is not None:
            return self._declared_t_offset
        if self.CLOCK_STARTS_AT_STREAM_START:
            return 0
        return self.time_range()[0]

    def events(
        self,
        t_start: int | None = None,
        t_stop: int | None = None,
        chunk_events: int = DEFAULT_CHUNK_EVENTS,
    ) -> Iterator[Events]:
        """Yield events with ``t_start <= t < t_stop`` (µs) in time order, ``chunk_events`` per packet.

        Every packet but the last holds exactly ``chunk_events`` events. Seeking is exact for files
        whose timestamps never go back in time.
        """
        if isinstance(chunk_events, bool) or not isinstance(chunk_events, (int, np.integer)) or chunk_events <= 0:
            raise ValueError(f"chunk_events must be a positive integer, got {chunk_events!r}")
        if t_start is not None and t_stop is not None and t_stop <= t_start:
            return
        check = _EventCheck(self)
        pending: list[Events] = []
        n_pending = 0
        for raw in self._guarded(self._read_events(t_start, t_stop, int(chunk_events))):
            packet = check(raw)
            done = False
            if t_start is not None or t_stop is not None:
                lo = 0 if t_start is None else int(np.searchsorted(packet.t, t_start, side="left"))
                hi = len(packet) if t_stop is None else int(np.searchsorted(packet.t, t_stop, side="left"))
                done = hi < len(packet)
                packet = packet[lo:hi]
            if len(packet):
                pending.append(packet)
                n_pending += len(packet)
            while n_pending >= chunk_events:
                merged = pending[0] if len(pending) == 1 else Events.concatenate(pending)
                yield merged[:chunk_events]
                rest = merged[chunk_events:]
                pending = [rest] if len(rest) else []
                n_pending = len(rest)
            if done:
                break
        if n_pending:
            yield pending[0] if len(pending) == 1 else Events.concatenate(pending)

    def frames(self, t_start: int | None = None, t_stop: int | None = None) -> Iterator[Frame]:
        """Yield intensity frames with ``t_start <= frame.t < t_stop`` (exposure midpoint, µs).

        Empty for formats without frames. Images are (height, width) or (height, width, 3) RGB;
        a frame of any other shape is a ``bad_frame_shape`` issue.
        """
        width, height = self.sensor_size
        for unit, offset, frame in self._guarded(self._read_frames(t_start, t_stop)):
            if (t_start is not None and frame.t < t_start) or (t_stop is not None and frame.t >= t_stop):
                continue
            shape = frame.image.shape
            if shape[:2] != (height, width) or not (len(shape) == 2 or (len(shape) == 3 and shape[2] == 3)):
                self.report(
                    "frames",
                    "bad_frame_shape",
                    unit,
                    offset,
                    1,
                    f"frame at t={frame.t} µs has shape {shape}, the sensor is {width}x{height}",
                )
                continue
            yield frame

    def imu(self, t_start: int | None = None, t_stop: int | None = None) -> Iterator[Imu]:
        """Yield IMU batches (`Imu`: t µs, accel in g, gyro in deg/s) within the window; empty if none."""
        for batch in self._guarded(self._read_imu(t_start, t_stop)):
            keep = np.ones(len(batch.t), dtype=bool)
            if t_start is not None:
                keep &= batch.t >= t_start
            if t_stop is not None:
                keep &= batch.t < t_stop
            if keep.all():
                yield batch
            elif keep.any():
                yield Imu(batch.t[keep], batch.accel[keep], batch.gyro[keep])

    def triggers(self, t_start: int | None = None, t_stop: int | None = None) -> Iterator[Triggers]:
        """Yield external trigger edges (`Triggers`: t µs, edge 1 rising / 0 falling, channel) within the
        window, in time order; empty for formats without them. An edge older than one already yielded is
        a ``non_monotonic`` issue."""
        t_max = np.iinfo(np.int64).min
        for batch in self._guarded(self._read_triggers(t_start, t_stop)):
            keep = np.ones(len(batch.t), dtype=bool)
            if t_start is not None:
                keep &= batch.t >= t_start
            if t_stop is not None:
                keep &= batch.t < t_stop
            running = np.maximum.accumulate(np.concatenate(([t_max], batch.t)))
            backwards = batch.t < running[:-1]
            if backwards.any():
                i = int(np.argmax(backwards))
                n = int(np.count_nonzero(backwards))
                self.report("triggers", "non_monotonic", "t_us", int(batch.t[i]), n,
                            f"{n} trigger edge(s) dropped: first, timestamp {int(batch.t[i])} µs goes back in time")
                keep &= ~backwards
            t_max = int(running[-1])
            if keep.any():
                yield batch if keep.all() else batch[keep]

    def topic_summary(self) -> list[dict]:
        """Per topic of a container format (ROS bags): name, type, messages, rate, time span, how it is read;
        empty for single-stream formats."""
        return []

    def close(self) -> None:
        if not getattr(self, "_closed", False):
            self._closed = True
            self._close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = getattr(self, "sensor_size", (0, 0))
        return f"{type(self).__name__}({str(self.path)!r}, format={self.format!r}, sensor_size=({w}, {h}))"

    # ------------------------------------------------------------------- helpers for readers

    @contextmanager
    def _library_errors(self) -> Iterator[None]:
        try:
            yield
        except RecordingError:
            raise
        except self.LIBRARY_ERRORS as exc:
            raise self.error(
                f"the file is damaged: {self.format} reading failed with {type(exc).__name__}: {first_line(exc)}; "
                "re-copy or re-export it",
                kind="corrupt",
            ) from exc

    def _guarded(self, items: Iterator[_Item]) -> Iterator[_Item]:
        """``items`` with the library's errors turned into RecordingError (see ``LIBRARY_ERRORS``)."""
        with self._library_errors():
            yield from items

    def report(self, stream: str, kind: str, unit: str, offset: int, count: int, detail: str) -> None:
        """Apply the bad-input policy to ``count`` items of ``kind``, the first at ``unit offset``."""
        fix = FIXES.get(kind, _SKIP_HINT)
        if self.on_error == "raise":
            raise RecordingError(self.path, f"{detail}; {fix}", position=f"{unit} {offset}", kind=kind)
        self.note(Issue(stream, kind, unit, int(offset), int(count), detail))

    def note(self, issue: Issue) -> None:
        """Record an issue without raising (dropped items under 'skip', or a correction) and warn once."""
        self.issues.add(issue)
        if (issue.stream, issue.kind) not in self._warned:
            self._warned.add((issue.stream, issue.kind))
            warnings.warn(
                f"{self.path}: {issue.detail} (first at {issue.position}); see recording.issues",
                RecordingWarning,
                stacklevel=3,
            )

    def error(self, message: str, *, position: str | None = None, kind: str = "error") -> RecordingError:
        """An error for a problem that makes the whole file unreadable (raised under either policy)."""
        return RecordingError(self.path, message, position=position, kind=kind)

    def _resolve_sensor_size(self, given: tuple[int, int] | None) -> tuple[tuple[int, int], str]:
        if given is not None:
            try:
                width, height = (int(v) for v in given)
            except (TypeError, ValueError):
                raise ValueError(f"sensor_size must be (width, height), got {given!r}") from None
            if not (0 < width <= 65535 and 0 < height <= 65535):
                raise ValueError(f"sensor_size must be two integers in 1..65535, got {given!r}")
            return (width, height), "argument"
        if self._header_sensor_size is not None:
            return self._header_sensor_size, "header"
        max_x = max_y = -1
        for raw in self._read_events(None, None, DEFAULT_CHUNK_EVENTS):
            if len(raw.t):
                max_x = max(max_x, int(raw.x.max()))
                max_y = max(max_y, int(raw.y.max()))
        if max_x < 0 or max_y < 0:
            raise self.error(
                "the file declares no sensor size and holds no events to infer it from; "
                "pass sensor_size=(width, height)"
            )
        size = (max_x + 1, max_y + 1)
        warnings.warn(
            f"{self.path}: the file declares no sensor size; inferred {size[0]}x{size[1]} from the largest "
            "coordinates (the real sensor may be larger: pass sensor_size=(width, height))",
            RecordingWarning,
            stacklevel=3,
        )
        return size, "inferred"


class _EventCheck:
    """Stateful per-pass checks: polarity values, sensor bounds and time order (across chunks)."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.width, self.height = recording.sensor_size
        self.t_max = np.iinfo(np.int64).min

    def __call__(self, raw: RawEvents) -> Events:
        t, x, y, p = raw.t, raw.x, raw.y, raw.p
        if len(t) == 0:
            return Events.empty()
        bad_polarity = (p != 0) & (p != 1) & (p != -1)
        outside = (x >= self.width) | (y >= self.height)
        if np.issubdtype(x.dtype, np.signedinteger) or np.issubdtype(y.dtype, np.signedinteger):
            outside |= (x < 0) | (y < 0)
        valid = ~(bad_polarity | outside)
        t_valid = t if valid.all() else t[valid]
        # The running maximum starts from the previous chunks' one: every event is checked against it, not only
        # a chunk's first.
        running_max = np.maximum(np.maximum.accumulate(t_valid), self.t_max)
        if len(t_valid):
            previous_max = np.concatenate(([self.t_max], running_max[:-1]))
            backwards = np.zeros(len(t), dtype=bool)
            backwards[np.flatnonzero(valid)] = t_valid < previous_max
        else:
            backwards = np.zeros(len(t), dtype=bool)
        problems = (
            ("bad_polarity", bad_polarity, "polarity value {p} is not 0/1 or -1/+1"),
            ("out_of_sensor", outside, "event at x={x}, y={y} lies outside the {w}x{h} sensor"),
            ("non_monotonic", backwards, "timestamp {t} µs goes back in time"),
        )
        if self.recording.on_error == "raise":
            firsts = [(int(np.argmax(mask)), kind, text) for kind, mask, text in problems if mask.any()]
            if firsts:
                i, kind, text = min(firsts)
                detail = text.format(t=int(t[i]), x=int(x[i]), y=int(y[i]), p=p[i], w=self.width, h=self.height)
                self.recording.report("events", kind, raw.unit, raw.position(i), 1, detail)
        for kind, mask, text in problems:
            n = int(np.count_nonzero(mask))
            if n:
                i = int(np.argmax(mask))
                detail = text.format(t=int(t[i]), x=int(x[i]), y=int(y[i]), p=p[i], w=self.width, h=self.height)
                self.recording.report(
                    "events", kind, raw.unit, raw.position(i), n, f"{n} event(s) dropped: first, {detail}"
                )
        keep = valid & ~backwards
        if len(running_max):
            self.t_max = max(self.t_max, int(running_max[-1]))
        if keep.all():
            return Events.from_arrays(t, x, y, p)
        return Events.from_arrays(t[keep], x[keep], y[keep], p[keep])


class ByteStreamRecording(Recording):
    """Base for formats decoded sequentially from a byte stream (Prophesee .raw, Event Stream, text).

    The reader decodes blocks of ``BLOCK_BYTES`` with an explicit decoder state. Each block start is
    kept as a checkpoint (byte offset, state, first timestamp) so later reads seek to the block that
    holds ``t_start`` instead of decoding from the beginning; the first full pass also caches the time
    range. Bytes left over at the end of the file (a partial word, event or line) are a ``truncated``
    issue.
    """

    BLOCK_BYTES: ClassVar[int] = 1 << 22

    def _open(self) -> None:
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - held open for the recording's lifetime
        except OSError as exc:
            raise self.error(f"cannot open the file ({exc.strerror})") from None
        self._file_size = self.path.stat().st_size
        self._data_start = self._read_header()
        # offset -> (decoder state at that offset, first timestamp decoded from the block there)
        self._checkpoints: dict[int, tuple[tuple, int | None]] = {}
        self._scan_range: tuple[int, int] | None = None

    def _close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()

    @abstractmethod
    def _read_header(self) -> int:
        """Parse the header; return the byte offset where the data starts."""

    @abstractmethod
    def _initial_state(self) -> tuple:
        """Decoder state at the data start (an immutable tuple)."""

    @abstractmethod
    def _decode(self, buf: bytes, offset: int, state: tuple, at_eof: bool) -> tuple[RawEvents, int, tuple]:
        """Decode whole units of ``buf`` (which starts at file byte ``offset``).

        Return (events, bytes consumed, state after them). At end of file (``at_eof``) a
        decoder consumes everything it can make sense of; what it leaves is reported as truncated.
        """

    def _start_for(self, t_start: int | None) -> tuple[int, tuple]:
        best = (self._data_start, self._initial_state())
        if t_start is None:
            return best
        best_offset = self._data_start
        for offset, (state, first_t) in self._checkpoints.items():
            # Strictly before t_start: events at t_start itself may end the previous block.
            if first_t is not None and first_t < t_start and offset > best_offset:
                best_offset, best = offset, (offset, state)
        return best

    def _read_events(self, t_start: int | None, t_stop: int | None, chunk_events: int) -> Iterator[RawEvents]:
        offset, state = self._start_for(t_start)
        from_start = offset == self._data_start
        first_t: int | None = None
        last_t: int | None = None
        block = self.BLOCK_BYTES
        while True:
            self._file.seek(offset)
            buf = self._file.read(block)
            at_eof = offset + len(buf) >= self._file_size
            raw, consumed, new_state = self._decode(buf, offset, state, at_eof)
            if consumed == 0 and not at_eof:
                block *= 2  # one unit (e.g. a text line) longer than the block
                continue
            block = self.BLOCK_BYTES
            has_events = len(raw.t) > 0
            self._checkpoints[offset] = (state, int(raw.t[0]) if has_events else None)
            if has_events:
                first_t = int(raw.t[0]) if first_t is None else first_t
                last_t = int(raw.t[-1])
                yield raw
            offset += consumed
            state = new_state
            if at_eof:
                if offset < self._file_size:
                    self.report(
                        "file",
                        "truncated",
                        "byte",
                        offset,
                        self._file_size - offset,
                        f"the last {self._file_size - offset} byte(s) do not form a whole {self.UNIT_NAME}",
                    )
                if from_start and first_t is not None and last_t is not None:
                    self._scan_range = (first_t, last_t + 1)
                return

    UNIT_NAME: ClassVar[str] = "record"

    def _time_range(self) -> tuple[int, int]:
        if self._scan_range is None:
            for _ in self._read_events(None, None, DEFAULT_CHUNK_EVENTS):
                pass
        if self._scan_range is None:
            raise self.error("the file holds no events, so it has no time range")
        return self._scan_range
