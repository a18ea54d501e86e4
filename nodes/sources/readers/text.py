"""RPG / Event Camera Dataset text recordings: ``events.txt`` plus optional ``images.txt`` and ``imu.txt``.

* ``events.txt`` (any name): one event per line, ``t x y p`` with t in seconds (decimal text, converted
  to integer µs exactly, rounding half up below 1 µs), integer pixel coordinates and polarity 0/1.
  Parsed block by block with a compiled (Numba) line parser, never a Python loop per line. Blank and
  ``#`` comment lines are ignored; any other line that is not four numbers is a ``garbage_line``
  reported with its 1-based line number.
* ``images.txt`` beside it: ``t path`` per line, the path relative to the folder. Exposure is not
  recorded, so ``Frame.t`` is the listed time and ``exposure_us`` 0.
* ``imu.txt`` beside it: ``t ax ay az gx gy gz`` in s, m/s² and rad/s, converted to g and deg/s.

Timestamps are seconds from the sequence start, so ``t_offset`` is 0. The sensor size comes from
``sensor_size=``, else the first image's size, else the largest coordinates (with a warning).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numba
import numpy as np

from evpipe.runtime.events import Frame, Imu

from .base import ByteStreamRecording, RawEvents, RecordingError, read_image, recording_image_size

STANDARD_GRAVITY = 9.80665  # m/s² per g
_POW10 = np.array([10**k for k in range(19)], dtype=np.int64)
_MANTISSA_LIMIT = 10**17  # digits beyond this precision are dropped (or counted in the exponent)
_INT64_MAX = np.iinfo(np.int64).max
_OK, _SKIP, _BAD = 0, 1, 2

EVENT_SCALES = np.array([6, 0, 0, 0], dtype=np.int64)  # t in s -> µs; x, y, p as they are
EVENT_INTEGRAL = np.array([False, True, True, True])
IMU_SCALES = np.array([6, 9, 9, 9, 9, 9, 9], dtype=np.int64)  # t -> µs; readings in units of 1e-9
IMU_INTEGRAL = np.zeros(7, dtype=np.bool_)


@numba.njit(cache=True, nogil=True)
def _parse_line(data, start, end, scales, integral, out):
    """Parse one line into ``out`` (int64, value * 10**scale per column). Returns _OK, _SKIP or _BAD."""
    ncols = scales.shape[0]
    i = start
    col = 0
    while True:
        while i < end and (data[i] == 32 or data[i] == 9 or data[i] == 13):
            i += 1
        if i >= end:
            break
        if col == 0 and data[i] == 35:  # '#': a comment line
            return _SKIP
        if col >= ncols:
            return _BAD
        negative = False
        if data[i] == 43 or data[i] == 45:  # '+' / '-'
            negative = data[i] == 45
            i += 1
        mantissa = np.int64(0)
        exponent = 0
        digits = 0
        while i < end and 48 <= data[i] <= 57:
            if mantissa < _MANTISSA_LIMIT:
                mantissa = mantissa * 10 + (data[i] - 48)
            else:
                exponent += 1
            digits += 1
            i += 1
        if i < end and data[i] == 46:  # '.'
            i += 1
            while i < end and 48 <= data[i] <= 57:
                if mantissa < _MANTISSA_LIMIT:
                    mantissa = mantissa * 10 + (data[i] - 48)
                    exponent -= 1
                digits += 1
                i += 1
        if digits == 0:
            return _BAD
        if i < end and (data[i] == 101 or data[i] == 69):  # 'e' / 'E'
            i += 1
            exp_negative = False
            if i < end and (data[i] == 43 or data[i] == 45):
                exp_negative = data[i] == 45
                i += 1
            exp_digits = 0
            exp_value = 0
            while i < end and 48 <= data[i] <= 57:
                if exp_value < 1000:
                    exp_value = exp_value * 10 + (data[i] - 48)
                exp_digits += 1
                i += 1
            if exp_digits == 0:
                return _BAD
            exponent += -exp_value if exp_negative else exp_value
        if i < end and not (data[i] == 32 or data[i] == 9 or data[i] == 13):
            return _BAD
        shift = exponent + scales[col]
        remainder = False
        if mantissa == 0:
            value = np.int64(0)
        elif shift >= 0:
            if shift > 18 or mantissa > _INT64_MAX // _POW10[shift]:
                return _BAD
            value = mantissa * _POW10[shift]
        elif shift < -18:
            value = np.int64(0)
            remainder = True
        else:
            power = _POW10[-shift]
            value = mantissa // power
            rest = mantissa - value * power
            remainder = rest != 0
            if 2 * rest >= power:
                value += 1
        if remainder and integral[col]:
            return _BAD
        out[col] = -value if negative else value
        col += 1
    if col == 0:
        return _SKIP
    return _OK if col == ncols else _BAD


@numba.njit(cache=True, nogil=True)
def parse_columns(data, scales, integral, at_eof):
    """Parse whole lines of numeric columns from ``data`` (uint8).

    Returns (values int64 (rows, ncols), line index of each row (rows,), line index of each bad line,
    bytes consumed, lines consumed). Line indices are 0-based within ``data``. Without ``at_eof`` a
    final line lacking its newline is left unconsumed.
    """
    n = data.shape[0]
    capacity = 1
    for j in range(n):
        if data[j] == 10:
            capacity += 1
    ncols = scales.shape[0]
    values = np.empty((capacity, ncols), np.int64)
    rows = np.empty(capacity, np.int64)
    bad = np.empty(capacity, np.int64)
    n_rows = 0
    n_bad = 0
    line = 0
    pos = 0
    while pos < n:
        end = pos
        while end < n and data[end] != 10:
            end += 1
        if end == n and not at_eof:
            break
        status = _parse_line(data, pos, end, scales, integral, values[n_rows])
        if status == _OK:
            rows[n_rows] = line
            n_rows += 1
        elif status == _BAD:
            bad[n_bad] = line
            n_bad += 1
        line += 1
        pos = end + 1
    return values[:n_rows], rows[:n_rows], bad[:n_bad], min(pos, n), line


def _line_text(data: bytes, line_index: int) -> str:
    """The text of a 0-based line of ``data``, shortened for an error message."""
    lines = data.split(b"\n", line_index + 1)
    text = lines[line_index] if line_index < len(lines) else b""
    return repr(text[:60].decode("utf-8", "replace")) + ("…" if len(text) > 60 else "")


class RpgTextRecording(ByteStreamRecording):
    """An RPG / ECD text sequence (see the module docstring). ``path`` is the events file or its folder."""

    format = "rpg-text"
    CLOCK_STARTS_AT_STREAM_START: ClassVar[bool] = True
    UNIT_NAME = "line"

    def __init__(self, path: str | Path, **kwargs: object) -> None:
        path = Path(path)
        if path.is_dir():
            if not (path / "events.txt").is_file():
                raise RecordingError(path, "the folder holds no events.txt (an RPG/ECD sequence folder has one)")
            path = path / "events.txt"
        super().__init__(path, **kwargs)

    def _read_header(self) -> int:
        self.folder = self.path.parent
        self._frame_list: list[tuple[int, int, Path]] | None = None
        self._frame_bad_lines: list[int] = []
        self._imu_loaded = False
        self._imu_cache: Imu | None = None
        frames = self._frames_listed()
        if frames:
            self._header_sensor_size = recording_image_size(frames[0][2])
        return 0

    def _initial_state(self) -> tuple:
        return (1,)  # 1-based number of the next line

    def _decode(self, buf: bytes, offset: int, state: tuple, at_eof: bool) -> tuple[RawEvents, int, tuple]:
        first_line = state[0]
        values, rows, bad, consumed, lines = parse_columns(
            np.frombuffer(buf, dtype=np.uint8), EVENT_SCALES, EVENT_INTEGRAL, at_eof
        )
        if len(bad):
            self.report(
                "events",
                "garbage_line",
                "line",
                first_line + int(bad[0]),
                len(bad),
                f"{len(bad)} line(s) are not 't x y p' numbers: first {_line_text(buf, int(bad[0]))}",
            )
        raw = RawEvents(
            t=values[:, 0],
            x=values[:, 1],
            y=values[:, 2],
            p=values[:, 3],
            unit="line",
            positions=first_line + rows,
        )
        return raw, int(consumed), (first_line + int(lines),)

    def _time_range(self) -> tuple[int, int]:
        # First and last event lines (head and tail of the file), not a full parse.
        times: list[int] = []
        head_size = min(self._file_size, 1 << 16)
        self._file.seek(0)
        head = self._file.read(head_size)
        values = parse_columns(np.frombuffer(head, np.uint8), EVENT_SCALES, EVENT_INTEGRAL, False)[0]
        self._file.seek(max(0, self._file_size - head_size))
        tail = self._file.read(head_size)
        if self._file_size > head_size:
            tail = tail[tail.find(b"\n") + 1 :]  # drop a partial first line
        tail_values = parse_columns(np.frombuffer(tail, np.uint8), EVENT_SCALES, EVENT_INTEGRAL, True)[0]
        if len(values):
            times.append(int(values[0, 0]))
        if len(tail_values):
            times.append(int(tail_values[-1, 0]))
        frames = self._frames_listed()
        if frames:
            times += [frames[0][1], frames[-1][1]]
        imu = self._imu_table()
        if imu is not None and len(imu.t):
            times += [int(imu.t[0]), int(imu.t[-1])]
        if not times:
            raise self.error("the sequence holds no events, frames or IMU samples, so it has no time range")
        return min(times), max(times) + 1

    # ------------------------------------------------------------------------ frames and IMU

    def _frames_listed(self) -> list[tuple[int, int, Path]]:
        """(line number, t µs, image path) per valid line of images.txt; empty without the file."""
        if self._frame_list is not None:
            return self._frame_list
        listing = self.folder / "images.txt"
        self._frame_list = []
        if not listing.is_file():
            return self._frame_list
        bad_lines: list[int] = []
        # images.txt has one short line per frame (thousands, not millions): a plain loop is fine.
        for number, line in enumerate(listing.read_text(errors="replace").splitlines(), start=1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            try:
                seconds = float(parts[0]) if len(parts) == 2 else math.nan
            except ValueError:
                seconds = math.nan
            if not math.isfinite(seconds):
                bad_lines.append(number)
                continue
            self._frame_list.append((number, round(seconds * 1e6), self.folder / parts[1]))
        self._frame_bad_lines = bad_lines
        return self._frame_list

    def _read_frames(self, t_start: int | None, t_stop: int | None) -> Iterator[tuple[str, int, Frame]]:
        listing = self.folder / "images.txt"
        frames = self._frames_listed()
        bad_lines = self._frame_bad_lines
        if bad_lines:
            self.report(
                "frames",
                "garbage_line",
                "line",
                bad_lines[0],
                len(bad_lines),
                f"{len(bad_lines)} line(s) of {listing.name} are not 't path'",
            )
        for number, t, image_path in frames:
            if (t_start is not None and t < t_start) or (t_stop is not None and t >= t_stop):
                continue
            image = read_image(self, image_path, "line", number)
            if image is not None:
                yield "line", number, Frame(image=image, t=t, exposure_us=0, meta={"file": str(image_path)})

    def _imu_table(self) -> Imu | None:
        if self._imu_loaded:
            return self._imu_cache
        self._imu_loaded = True
        path = self.folder / "imu.txt"
        if path.is_file():
            data = path.read_bytes()
            values, _, bad, _, _ = parse_columns(np.frombuffer(data, np.uint8), IMU_SCALES, IMU_INTEGRAL, True)
            if len(bad):
                self.report(
                    "imu",
                    "garbage_line",
                    "line",
                    int(bad[0]) + 1,
                    len(bad),
                    f"{len(bad)} line(s) of imu.txt are not 't ax ay az gx gy gz': first "
                    f"{_line_text(data, int(bad[0]))}",
                )
            readings = values[:, 1:].astype(np.float64) * 1e-9
            self._imu_cache = Imu(
                t=np.ascontiguousarray(values[:, 0]),
                accel=(readings[:, :3] / STANDARD_GRAVITY).astype(np.float32),
                gyro=np.degrees(readings[:, 3:]).astype(np.float32),
            )
        return self._imu_cache

    def _read_imu(self, t_start: int | None, t_stop: int | None) -> Iterator[Imu]:
        table = self._imu_table()
        if table is not None and len(table.t):
            yield table
