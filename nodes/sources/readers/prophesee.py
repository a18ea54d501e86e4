"""Prophesee ``.raw`` recordings in EVT 2.0 and EVT 3.0, decoded from the format specification.

File layout: ASCII header lines starting with ``%`` (``% evt 3.0`` or ``% format EVT3;height=..;
width=..``, optionally ``% geometry WxH``), then little-endian words. Timestamps are µs from the
stream start. The sensor size comes from ``sensor_size=``, else the header, else the largest
coordinates (with a `RecordingWarning`: the real sensor may be larger).

EVT 2.0 (32-bit words, vectorised numpy): type in bits 31..28. CD_OFF (0x0) / CD_ON (0x1) carry the
6 timestamp LSBs (27..22), x (21..11) and y (10..0); EVT_TIME_HIGH (0x8) carries the 28 timestamp
MSBs, so t = high << 6 | lsb; a time-high value that drops by more than half its range is a 34-bit
wrap. EXT_TRIGGER (0xA), OTHERS (0xE) and CONTINUED (0xF) carry no CD events and are skipped; other
types are reserved and reported as ``unknown_word``.

EVT 3.0 (16-bit words, a Numba state machine): EVT_ADDR_Y (0x0) sets y; EVT_ADDR_X (0x2) emits one
event at x with polarity bit 11; VECT_BASE_X (0x3) sets the base x and polarity; VECT_12 (0x4) and
VECT_8 (0x5) emit an event at base x + i for each set bit i of their 12/8-bit mask, then advance the
base by 12/8; EVT_TIME_LOW (0x6) and EVT_TIME_HIGH (0x8) set the low and high 12 bits of a 24-bit
µs clock, which wraps every 2**24 µs (a time-high drop of more than half its range counts a wrap).
CONTINUED_4 (0x7), EXT_TRIGGER (0xA), OTHERS (0xE) and CONTINUED_12 (0xF) are skipped.

Two timing choices, both following the specification rather than clamping time:

* Each TIME_LOW *replaces* the low 12 bits. The EVT 3.0 sample in ``shared/data`` has stray
  TIME_LOW words: right after each periodic TIME_HIGH comes a TIME_LOW about 11 µs ahead (e.g. 811),
  immediately followed by the correct one (800). No event lies between them, so applied literally the
  stray word affects no timestamp. A decoder that forces time to be monotonic (keeps the larger
  value) instead stamps the next ≤ 11 µs of events up to 11 µs late; one that mis-assembles the clock
  gets a 54 ms span instead of the real 8.8 ms.
* A TIME_HIGH that *changes* the high part restarts the low part at 0, so events before the next
  TIME_LOW get the start of the new 4096 µs period, never a time left over from the previous one.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numba
import numpy as np

from .base import ByteStreamRecording, RawEvents

_HEADER_LINE = re.compile(rb"^% ?(\S+) ?(.*)$")
_PRINTABLE = re.compile(rb"%[ -~]*")


def parse_raw_header(data: bytes) -> tuple[int, dict[str, str]]:
    """Split the ``%`` header off ``data``: (data start offset, {key: value}).

    A header line is printable ASCII starting with ``%`` and ending in a newline, so binary data that
    happens to begin with the byte ``%`` is not mistaken for one; ``% end`` closes the header early.
    """
    offset = 0
    fields: dict[str, str] = {}
    while data[offset : offset + 1] == b"%":
        end = data.find(b"\n", offset)
        line = data[offset:end].rstrip(b"\r") if end >= 0 else b""
        if end < 0 or not _PRINTABLE.fullmatch(line):
            break
        offset = end + 1
        if line.strip() == b"% end":
            break
        match = _HEADER_LINE.match(line)
        if match:
            fields[match.group(1).decode("ascii").lower()] = match.group(2).decode("ascii")
    return offset, fields


def raw_version(fields: dict[str, str]) -> str | None:
    """'evt2', 'evt21', 'evt3' or None from header fields (``% evt 3.0`` or ``% format EVT3;...``)."""
    version = fields.get("evt", "").strip()
    if not version and "format" in fields:
        version = fields["format"].split(";")[0].strip().upper().removeprefix("EVT")
    return {"2.0": "evt2", "2": "evt2", "2.1": "evt21", "21": "evt21", "3.0": "evt3", "3": "evt3"}.get(version)


def raw_geometry(fields: dict[str, str]) -> tuple[int, int] | None:
    """(width, height) from ``% geometry WxH`` or ``% format EVT3;height=H;width=W``, else None."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", fields.get("geometry", ""))
    if match:
        return int(match.group(1)), int(match.group(2))
    parts = dict(p.split("=", 1) for p in fields.get("format", "").split(";") if "=" in p)
    if "width" in parts and "height" in parts:
        return int(parts["width"]), int(parts["height"])
    return None


class _RawRecording(ByteStreamRecording):
    CLOCK_STARTS_AT_STREAM_START: ClassVar[bool] = True
    VERSION: ClassVar[str]

    def _read_header(self) -> int:
        self._file.seek(0)
        head = self._file.read(1 << 16)
        start, fields = parse_raw_header(head)
        if start >= len(head) and len(head) == 1 << 16:
            raise self.error("the '%' header is longer than 64 KiB; this is not a Prophesee .raw file")
        version = raw_version(fields)
        if version is not None and version != self.VERSION:
            raise self.error(f"the header declares {version}, not {self.VERSION}")
        self.header = fields
        self._header_sensor_size = raw_geometry(fields)
        return start


class Evt2Recording(_RawRecording):
    """Prophesee EVT 2.0 ``.raw`` (see the module docstring)."""

    format = "evt2"
    VERSION = "evt2"
    UNIT_NAME = "32-bit EVT 2.0 word"

    def _initial_state(self) -> tuple:
        return (-1, 0)  # (last raw time-high value or -1 before the first, wraps so far)

    def _decode(self, buf: bytes, offset: int, state: tuple, at_eof: bool) -> tuple[RawEvents, int, tuple]:
        n = len(buf) // 4
        words = np.frombuffer(buf, dtype="<u4", count=n)
        kind = words >> 28
        is_high = kind == 0x8
        is_cd = kind <= 0x1
        unknown = ~(is_high | is_cd | (kind == 0xA) | (kind == 0xE) | (kind == 0xF))
        if unknown.any():
            first = int(np.argmax(unknown))
            self.report(
                "events",
                "unknown_word",
                "byte",
                offset + 4 * first,
                int(np.count_nonzero(unknown)),
                f"reserved EVT 2.0 word type {int(kind[first]):#x} ({int(words[first]):#010x})",
            )
        last_high, wraps = state
        highs = (words[is_high] & 0x0FFFFFFF).astype(np.int64)
        if len(highs):
            previous = np.concatenate(([last_high if last_high >= 0 else highs[0]], highs[:-1]))
            wrap_count = wraps + np.cumsum(previous - highs > (1 << 27))
            full_highs = (highs + (wrap_count << 28)) << 6
            new_state = (int(highs[-1]), int(wrap_count[-1]))
        else:
            full_highs = highs
            new_state = state
        # For every word, the time base of the latest TIME_HIGH at or before it.
        high_index = np.maximum.accumulate(np.where(is_high, np.cumsum(is_high) - 1, -1))
        cd = np.flatnonzero(is_cd)
        cd_high = high_index[cd]
        carried = (last_high + (wraps << 28)) << 6 if last_high >= 0 else -1
        base = np.where(cd_high >= 0, full_highs[np.maximum(cd_high, 0)] if len(highs) else carried, carried)
        timed = base >= 0
        if not timed.all():
            first = int(cd[np.argmin(timed)])
            self.report(
                "events",
                "no_time_base",
                "byte",
                offset + 4 * first,
                int(np.count_nonzero(~timed)),
                "CD events before the first EVT_TIME_HIGH word",
            )
            cd, base = cd[timed], base[timed]
        w = words[cd]
        raw = RawEvents(
            t=base + ((w >> 22) & 0x3F).astype(np.int64),
            x=((w >> 11) & 0x7FF).astype(np.uint16),
            y=(w & 0x7FF).astype(np.uint16),
            p=(w >> 28).astype(np.int8),
            unit="byte",
            positions=offset + 4 * cd.astype(np.int64),
        )
        return raw, 4 * n, new_state


# Kernel state slots (int64): y (-1 before the first EVT_ADDR_Y), polarity, vector base x,
# time-high (-1 before the first EVT_TIME_HIGH), time-low, 24-bit wraps.
_Y, _POL, _BASE_X, _HIGH, _LOW, _WRAPS = range(6)
# Kernel counter slots: count and first word index of events without a row / time base, and of
# reserved word types.
_N_NO_Y, _FIRST_NO_Y, _N_NO_TIME, _FIRST_NO_TIME, _N_UNKNOWN, _FIRST_UNKNOWN = range(6)


@numba.njit(cache=True, nogil=True)
def _popcount12(v: int) -> int:
    count = 0
    while v:
        v &= v - 1
        count += 1
    return count


@numba.njit(cache=True, nogil=True)
def _decode_evt3(words: np.ndarray, state: np.ndarray):
    """Decode EVT 3.0 words. Returns (t, x, y, p, word index) per event, new state, counters."""
    capacity = 0
    for i in range(words.shape[0]):
        kind = words[i] >> 12
        if kind == 0x2:
            capacity += 1
        elif kind == 0x4:
            capacity += _popcount12(words[i] & 0xFFF)
        elif kind == 0x5:
            capacity += _popcount12(words[i] & 0xFF)
    t_out = np.empty(capacity, np.int64)
    x_out = np.empty(capacity, np.uint16)
    y_out = np.empty(capacity, np.uint16)
    p_out = np.empty(capacity, np.int8)
    w_out = np.empty(capacity, np.int64)
    s = state.copy()
    counters = np.zeros(6, np.int64)
    counters[_FIRST_NO_Y] = -1
    counters[_FIRST_NO_TIME] = -1
    counters[_FIRST_UNKNOWN] = -1
    k = 0
    for i in range(words.shape[0]):
        word = np.int64(words[i])
        kind = word >> 12
        if kind == 0x0:
            s[_Y] = word & 0x7FF
        elif kind == 0x2 or kind == 0x4 or kind == 0x5:
            if kind == 0x2:
                mask = np.int64(1)
                x0 = word & 0x7FF
                pol = (word >> 11) & 1
                width = 1
            else:
                mask = word & (0xFFF if kind == 0x4 else 0xFF)
                x0 = s[_BASE_X]
                pol = s[_POL]
                width = 12 if kind == 0x4 else 8
                s[_BASE_X] += width
            if s[_HIGH] < 0 or s[_Y] < 0:
                slot = _N_NO_TIME if s[_HIGH] < 0 else _N_NO_Y
                counters[slot] += _popcount12(mask)
                if counters[slot + 1] < 0:
                    counters[slot + 1] = i
                continue
            t = (s[_WRAPS] << 24) | (s[_HIGH] << 12) | s[_LOW]
            for bit in range(width):
                if (mask >> bit) & 1:
                    t_out[k] = t
                    # Saturate: a corrupt run of vectors must not wrap back into the sensor.
                    x_out[k] = min(x0 + bit, 65535)
                    y_out[k] = s[_Y]
                    p_out[k] = pol
                    w_out[k] = i
                    k += 1
        elif kind == 0x3:
            s[_BASE_X] = word & 0x7FF
            s[_POL] = (word >> 11) & 1
        elif kind == 0x6:
            s[_LOW] = word & 0xFFF
        elif kind == 0x8:
            high = word & 0xFFF
            if s[_HIGH] >= 0 and s[_HIGH] - high > 2048:
                s[_WRAPS] += 1
            if high != s[_HIGH]:
                s[_LOW] = 0
            s[_HIGH] = high
        elif kind == 0x7 or kind == 0xA or kind == 0xE or kind == 0xF:
            pass
        else:
            counters[_N_UNKNOWN] += 1
            if counters[_FIRST_UNKNOWN] < 0:
                counters[_FIRST_UNKNOWN] = i
    return t_out[:k], x_out[:k], y_out[:k], p_out[:k], w_out[:k], s, counters


class Evt3Recording(_RawRecording):
    """Prophesee EVT 3.0 ``.raw`` (see the module docstring for the timing choices)."""

    format = "evt3"
    VERSION = "evt3"
    UNIT_NAME = "16-bit EVT 3.0 word"

    def _initial_state(self) -> tuple:
        return (-1, 0, 0, -1, 0, 0)

    def _decode(self, buf: bytes, offset: int, state: tuple, at_eof: bool) -> tuple[RawEvents, int, tuple]:
        n = len(buf) // 2
        words = np.frombuffer(buf, dtype="<u2", count=n)
        t, x, y, p, index, new_state, counters = _decode_evt3(words, np.array(state, dtype=np.int64))
        for n_slot, kind, detail in (
            (_N_UNKNOWN, "unknown_word", "reserved EVT 3.0 word type"),
            (_N_NO_TIME, "no_time_base", "events before the first EVT_TIME_HIGH word"),
            (_N_NO_Y, "no_row_address", "events before the first EVT_ADDR_Y word"),
        ):
            if counters[n_slot]:
                first = int(counters[n_slot + 1])
                if kind == "unknown_word":
                    detail = f"{detail} {int(words[first]) >> 12:#x} ({int(words[first]):#06x})"
                self.report("events", kind, "byte", offset + 2 * first, int(counters[n_slot]), detail)
        raw = RawEvents(t=t, x=x, y=y, p=p, unit="byte", positions=offset + 2 * index)
        return raw, 2 * n, tuple(int(v) for v in new_state)
