"""Streamed statistics of a recording (``evpipe info``) and their human-readable table."""

from __future__ import annotations

import io

import numba
import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from evpipe.runtime.events import Events

from .base import DEFAULT_CHUNK_EVENTS, Recording, RecordingError


@numba.njit(cache=True, nogil=True)
def _count_duplicates(t: np.ndarray, key: np.ndarray) -> int:
    """Events whose key repeats within their run of equal (sorted) timestamps."""
    duplicates = 0
    start = 0
    n = t.shape[0]
    while start < n:
        stop = start + 1
        while stop < n and t[stop] == t[start]:
            stop += 1
        if stop - start > 1:
            keys = np.sort(key[start:stop])
            for i in range(1, keys.shape[0]):
                if keys[i] == keys[i - 1]:
                    duplicates += 1
        start = stop
    return duplicates


class _EventStats:
    """Count, span, per-millisecond rate and exact duplicates over a time-ordered packet stream.

    Memory stays bounded: only the current millisecond's count and the events sharing the latest
    timestamp (where duplicates of the next packet can hide) are carried between packets.
    """

    def __init__(self) -> None:
        self.count = 0
        self.t_first: int | None = None
        self.t_last: int | None = None
        self.peak_per_ms = 0
        self.bin_index = -1
        self.bin_count = 0
        self.duplicates = 0
        self.carry_t = np.empty(0, np.int64)
        self.carry_key = np.empty(0, np.int64)

    def add(self, packet: Events) -> None:
        if not len(packet):
            return
        if self.t_first is None:
            self.t_first = int(packet.t[0])
        self.count += len(packet)
        self.t_last = int(packet.t[-1])
        # Millisecond bins are sorted (so are the times): run lengths give the counts.
        ms = (packet.t - self.t_first) // 1000
        starts = np.flatnonzero(np.concatenate(([True], ms[1:] != ms[:-1])))
        bins, counts = ms[starts], np.diff(np.append(starts, len(ms)))
        if bins[0] == self.bin_index:
            counts[0] += self.bin_count
        else:
            self.peak_per_ms = max(self.peak_per_ms, self.bin_count)
        self.peak_per_ms = max(self.peak_per_ms, int(counts[:-1].max(initial=0)))
        self.bin_index, self.bin_count = int(bins[-1]), int(counts[-1])
        # An event is a duplicate when (t, x, y, p) equals an earlier event's.
        key = (packet.x.astype(np.int64) << 17) | (packet.y.astype(np.int64) << 1) | (packet.p > 0)
        t = np.concatenate((self.carry_t, packet.t))
        key = np.concatenate((self.carry_key, key))
        complete = t < t[-1]  # timestamp groups that cannot continue into the next packet
        self.duplicates += self._count_duplicates(t[complete], key[complete])
        self.carry_t, self.carry_key = t[~complete], key[~complete]

    @staticmethod
    def _count_duplicates(t: np.ndarray, key: np.ndarray) -> int:
        return int(_count_duplicates(t, key)) if len(t) > 1 else 0

    def finish(self) -> dict:
        self.duplicates += self._count_duplicates(self.carry_t, self.carry_key)
        self.carry_t, self.carry_key = self.carry_t[:0], self.carry_key[:0]
        self.peak_per_ms = max(self.peak_per_ms, self.bin_count)
        if self.t_first is None or self.t_last is None:
            return {"count": 0}
        duration_us = self.t_last - self.t_first
        n_bins = duration_us // 1000 + 1
        return {
            "count": self.count,
            "t_first_us": self.t_first,
            "t_last_us": self.t_last,
            "duration_s": duration_us / 1e6,
            "rate_mean_per_s": self.count / (duration_us / 1e6) if duration_us else None,
            "rate_mean_per_ms": self.count / n_bins,
            "rate_peak_per_ms": self.peak_per_ms,
        }


def _rate_hz(times: list[int]) -> float | None:
    return (len(times) - 1) / ((times[-1] - times[0]) / 1e6) if len(times) > 1 and times[-1] > times[0] else None


def summarize(recording: Recording, *, progress: bool = False, chunk_events: int = DEFAULT_CHUNK_EVENTS) -> dict:
    """Stream every event, frame and IMU sample of ``recording`` once and summarise them.

    Keys: ``path``, ``format``, ``sensor_size`` [w, h], ``sensor_size_source``, ``t_offset_us``,
    ``time_range_us`` [first, last + 1] (None when empty), ``events`` (count, t_first_us, t_last_us,
    duration_s, rate_mean_per_s, rate_mean_per_ms, rate_peak_per_ms), ``frames`` (count, t_first_us,
    t_last_us, rate_hz, shape, exposure_us_mean), ``imu`` (count, rate_hz), ``triggers`` (count, rising,
    falling, channels, t_first_us, t_last_us), ``topics`` (ROS bags: per topic its type, encoding, messages,
    rate over bag time, bag time span, where its definition came from and which stream reads it), ``anomalies`` (events
    by kind: ``non_monotonic`` / ``out_of_sensor`` / ``bad_polarity`` dropped, ``duplicates`` kept,
    plus every other issue kind) and ``issues`` (the recording's issue list as dicts).
    """
    stats = _EventStats()
    with tqdm(desc=f"events {recording.path.name}", unit="ev", unit_scale=True, disable=not progress) as bar:
        for packet in recording.events(chunk_events=chunk_events):
            stats.add(packet)
            bar.update(len(packet))
    events = stats.finish()
    frame_times: list[int] = []
    exposures: list[int] = []
    shape = None
    for frame in tqdm(recording.frames(), desc="frames", unit="frame", disable=not progress):
        frame_times.append(frame.t)
        exposures.append(frame.exposure_us)
        shape = shape or list(frame.image.shape)
    imu_count = 0
    imu_span: list[int] = []
    for batch in recording.imu():
        imu_count += len(batch.t)
        imu_span = [imu_span[0] if imu_span else int(batch.t[0]), int(batch.t[-1])]
    trigger_times: list[int] = []
    edges = {"rising": 0, "falling": 0}
    channels: set[int] = set()
    for batch in recording.triggers():
        trigger_times.extend((int(batch.t[0]), int(batch.t[-1])))
        rising = int(np.count_nonzero(batch.edge))
        edges["rising"] += rising
        edges["falling"] += len(batch) - rising
        channels.update(np.unique(batch.channel).tolist())
    try:
        time_range = list(recording.time_range())
    except RecordingError:
        time_range = None
    anomalies = {"non_monotonic": 0, "duplicates": stats.duplicates, "out_of_sensor": 0, "bad_polarity": 0}
    for kind, count in recording.issues.by_kind().items():
        anomalies[kind] = anomalies.get(kind, 0) + count
    return {
        "path": str(recording.path),
        "format": recording.format,
        "sensor_size": list(recording.sensor_size),
        "sensor_size_source": recording.sensor_size_source,
        "t_offset_us": recording.t_offset if time_range is not None else None,
        "time_range_us": time_range,
        "events": events,
        "frames": {
            "count": len(frame_times),
            "t_first_us": frame_times[0] if frame_times else None,
            "t_last_us": frame_times[-1] if frame_times else None,
            "rate_hz": _rate_hz(frame_times),
            "shape": shape,
            "exposure_us_mean": float(np.mean(exposures)) if exposures else None,
        },
        "imu": {
            "count": imu_count,
            "rate_hz": (imu_count - 1) / ((imu_span[1] - imu_span[0]) / 1e6)
            if imu_count > 1 and imu_span[1] > imu_span[0]
            else None,
        },
        "triggers": {
            "count": edges["rising"] + edges["falling"],
            **edges,
            "channels": sorted(channels),
            "t_first_us": trigger_times[0] if trigger_times else None,
            "t_last_us": trigger_times[-1] if trigger_times else None,
        },
        "topics": recording.topic_summary(),
        "anomalies": anomalies,
        "issues": [
            {"stream": i.stream, "kind": i.kind, "position": i.position, "count": i.count, "detail": i.detail}
            for i in recording.issues
        ],
    }


def _number(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def format_description(summary: dict) -> str:
    """Render a `summarize` / `describe` result as a plain-text table."""
    table = Table(title=summary["path"], show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    width, height = summary["sensor_size"]
    table.add_row("format", summary["format"])
    table.add_row("sensor", f"{width} x {height} ({summary['sensor_size_source']})")
    if summary["time_range_us"] is not None:
        first, stop = summary["time_range_us"]
        table.add_row("time range", f"{first:,} .. {stop:,} µs (t_offset {summary['t_offset_us']:,} µs)")
    ev = summary["events"]
    table.add_row("events", _number(ev["count"]))
    if ev["count"]:
        table.add_row("duration", f"{ev['duration_s']:.6f} s")
        table.add_row("event rate", f"mean {_number(ev['rate_mean_per_ms'])} /ms, peak {ev['rate_peak_per_ms']:,} /ms")
    fr = summary["frames"]
    frames = _number(fr["count"])
    if fr["count"]:
        frames += f" at {_number(fr['rate_hz'], 2)} Hz, shape {tuple(fr['shape'])}"
        frames += f", exposure {_number(fr['exposure_us_mean'])} µs"
    table.add_row("frames", frames)
    imu = summary["imu"]
    table.add_row(
        "IMU samples", _number(imu["count"]) + (f" at {_number(imu['rate_hz'])} Hz" if imu["rate_hz"] else "")
    )
    trig = summary["triggers"]
    if trig["count"]:
        table.add_row("triggers", f"{trig['count']:,} ({trig['rising']:,} rising, {trig['falling']:,} falling) on "
                      f"channel(s) {', '.join(map(str, trig['channels']))}")
    for topic in summary["topics"]:
        rate = f"{topic['rate_hz']:,.1f} Hz" if topic["rate_hz"] else "–"
        use = topic["read_as"] or topic["problem"] or "not read"
        encoding = f", {topic['encoding']}" if topic["encoding"] else ""
        table.add_row(f"topic {topic['topic']}", f"{topic['type']}{encoding}: {topic['messages']:,} messages at {rate} "
                      f"(bag time), definition {topic['definition'] or '–'}; {use}")
    anomalies = ", ".join(f"{kind} {count:,}" for kind, count in summary["anomalies"].items())
    table.add_row("anomalies", anomalies)
    for issue in summary["issues"]:
        table.add_row(
            f"  {issue['kind']}",
            f"{issue['count']:,} at {issue['position']} ({issue['stream']}): {issue['detail']}",
        )
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None, force_terminal=False).print(table)
    return buffer.getvalue()
