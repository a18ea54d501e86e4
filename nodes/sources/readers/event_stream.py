"""Event Stream (``.es``) version 2 files of the DVS type, as written by sepia / neuromorphic-drivers.

Layout: the 12 ASCII bytes ``Event Stream``, version bytes (major, minor, patch; major must be 2),
a type byte (0 generic, 1 DVS, 2 ATIS, 4 colour; only DVS holds polarity events), then width and
height as little-endian uint16. Data bytes, decoded by a Numba state machine:

* ``0xFF``: the clock advances by 127 µs (overflow), no event;
* ``0xFE``: a reset marker, no event;
* any other byte starts an event: the clock advances by ``byte >> 1`` µs, polarity is ``byte & 1``
  (1 = ON), and the next four bytes are x and y as little-endian uint16.

Timestamps are µs from the stream start.
"""

from __future__ import annotations

from typing import ClassVar

import numba
import numpy as np

from .base import ByteStreamRecording, RawEvents

MAGIC = b"Event Stream"
_TYPES = {0: "generic", 1: "DVS", 2: "ATIS", 4: "colour"}


@numba.njit(cache=True, nogil=True)
def _decode_dvs(data: np.ndarray, t: int):
    """Decode whole DVS events from ``data``. Returns (t, x, y, p, byte index), bytes used, clock."""
    n = data.shape[0]
    capacity = n // 5 + 1
    t_out = np.empty(capacity, np.int64)
    x_out = np.empty(capacity, np.uint16)
    y_out = np.empty(capacity, np.uint16)
    p_out = np.empty(capacity, np.int8)
    i_out = np.empty(capacity, np.int64)
    k = 0
    i = 0
    while i < n:
        byte = data[i]
        if byte == 0xFF:
            t += 127
            i += 1
        elif byte == 0xFE:
            i += 1
        else:
            if i + 5 > n:
                break  # a partial event: the caller re-reads it with the next block
            t += byte >> 1
            t_out[k] = t
            p_out[k] = byte & 1
            x_out[k] = np.uint16(data[i + 1]) | (np.uint16(data[i + 2]) << 8)
            y_out[k] = np.uint16(data[i + 3]) | (np.uint16(data[i + 4]) << 8)
            i_out[k] = i
            k += 1
            i += 5
    return t_out[:k], x_out[:k], y_out[:k], p_out[:k], i_out[:k], i, t


class EventStreamRecording(ByteStreamRecording):
    """An Event Stream ``.es`` file of the DVS type (see the module docstring)."""

    format = "event-stream"
    CLOCK_STARTS_AT_STREAM_START: ClassVar[bool] = True
    UNIT_NAME = "5-byte DVS event"

    def _read_header(self) -> int:
        self._file.seek(0)
        head = self._file.read(20)
        if head[:12] != MAGIC:
            raise self.error(f"not an Event Stream file (expected the magic {MAGIC!r}, got {head[:12]!r})")
        if len(head) < 16:
            raise self.error("the Event Stream header is truncated", kind="truncated")
        major, minor, patch, event_type = head[12], head[13], head[14], head[15]
        if major != 2:
            raise self.error(f"Event Stream version {major}.{minor}.{patch} is not supported (only 2.x)")
        if event_type != 1:
            name = _TYPES.get(event_type, f"unknown ({event_type})")
            raise self.error(f"Event Stream type {name} is not supported (only DVS polarity events)")
        if len(head) < 20:
            raise self.error("the Event Stream header is truncated before its sensor size", kind="truncated")
        width = int.from_bytes(head[16:18], "little")
        height = int.from_bytes(head[18:20], "little")
        self.version = (major, minor, patch)
        self._header_sensor_size = (width, height) if width and height else None
        return 20

    def _initial_state(self) -> tuple:
        return (0,)

    def _decode(self, buf: bytes, offset: int, state: tuple, at_eof: bool) -> tuple[RawEvents, int, tuple]:
        data = np.frombuffer(buf, dtype=np.uint8)
        t, x, y, p, index, used, clock = _decode_dvs(data, state[0])
        raw = RawEvents(t=t, x=x, y=y, p=p, unit="byte", positions=offset + index)
        return raw, int(used), (int(clock),)
