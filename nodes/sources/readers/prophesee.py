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

EVT 3.0 (16-bit words): decoded by the shared codec in `evt3` (see its docstring for the word types
and the two timing choices); its EXT_TRIGGER words are the recording's ``triggers()``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from evpipe.runtime.events import Triggers

from .base import ByteStreamRecording, RawEvents
from .evt3 import INITIAL_STATE, decode_evt3, evt3_issues

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


class Evt3Recording(_RawRecording):
    """Prophesee EVT 3.0 ``.raw`` (see the module docstring for the timing choices)."""

    format = "evt3"
    VERSION = "evt3"
    UNIT_NAME = "16-bit EVT 3.0 word"

    def _initial_state(self) -> tuple:
        return INITIAL_STATE

    def _decode(self, buf: bytes, offset: int, state: tuple, at_eof: bool) -> tuple[RawEvents, int, tuple]:
        n = len(buf) // 2
        words = np.frombuffer(buf, dtype="<u2", count=n)
        decoded = decode_evt3(words, state)
        for kind, first, count, detail in evt3_issues(decoded, words):
            self.report("events", kind, "byte", offset + 2 * first, count, detail)
        raw = RawEvents(t=decoded.t, x=decoded.x, y=decoded.y, p=decoded.p, unit="byte",
                        positions=offset + 2 * decoded.event_words)
        return raw, 2 * n, decoded.state

    def _read_triggers(self, t_start: int | None, t_stop: int | None) -> Iterator[Triggers]:
        # Its own pass over the words (anomalies are the events pass's to report); seeks before every read,
        # so it may interleave with an events pass on the same file.
        offset, state = self._data_start, INITIAL_STATE
        while offset + 1 < self._file_size:
            self._file.seek(offset)
            buf = self._file.read(self.BLOCK_BYTES)
            n = len(buf) // 2
            if n == 0:
                return
            decoded = decode_evt3(np.frombuffer(buf, dtype="<u2", count=n), state)
            if len(decoded.trigger_t):
                yield Triggers(decoded.trigger_t, decoded.trigger_edge, decoded.trigger_channel)
            if t_stop is not None and len(decoded.t) and int(decoded.t[-1]) >= t_stop:
                return
            offset += 2 * n
            state = decoded.state
