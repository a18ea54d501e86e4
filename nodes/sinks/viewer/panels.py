"""The newest data of every stream the viewer shows, shared between the node thread and the web server.

The node's ``process`` only stores a reference (O(1), no copy, no drawing), so the graph never waits
for the viewer; the server draws a panel only when a browser is ready for its next picture.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evpipe.nodes.sinks.viewer.render import encode_jpeg, render_events, render_frame, render_voxel
from evpipe.runtime.wire import Message, now_ns

DRAWN_KINDS = ("events", "frame", "voxel")
MAX_WINDOW_EVENTS = 2_000_000  # events kept per panel however long the window, bounding memory and drawing time


@dataclass
class Panel:
    """One stream: its newest message (frames, voxels) or its recent event packets (events)."""

    id: int
    stream: str
    kind: str
    received: int = 0
    version: int = 0  # bumped by every message; a browser that has seen this version needs nothing new
    latest: Message | None = None
    packets: deque[Message] = field(default_factory=deque)
    window_events: int = 0
    sensor: tuple[int, int] = (0, 0)  # (height, width) of an event stream: from its metadata or the largest x/y seen


@dataclass(frozen=True)
class Picture:
    """A drawn panel: JPEG bytes and what the page shows beside them."""

    panel: int
    version: int
    jpeg: bytes
    info: dict[str, Any]


class PanelStore:
    """Thread-safe map of stream name -> :class:`Panel`; ``event_window_us`` of events make one event picture."""

    def __init__(self, event_window_us: int) -> None:
        self.event_window_us = event_window_us
        self._lock = threading.Lock()
        self._panels: dict[str, Panel] = {}

    def declare(self, stream: str, kind: str) -> None:
        """Make a panel for a connected input before its first message arrives."""
        with self._lock:
            self._panel(stream, kind)

    def add(self, msg: Message) -> None:
        """Keep ``msg`` (a reference, no copy) as its stream's newest data."""
        with self._lock:
            panel = self._panel(msg.stream, msg.kind)
            panel.kind = msg.kind
            panel.received += 1
            panel.version += 1
            if msg.kind != "events":
                panel.latest = msg
                return
            panel.packets.append(msg)
            panel.window_events += len(msg.arrays["t"])
            if "width" in msg.meta and "height" in msg.meta:
                panel.sensor = (int(msg.meta["height"]), int(msg.meta["width"]))
            elif len(msg.arrays["x"]):
                panel.sensor = (max(panel.sensor[0], int(msg.arrays["y"].max()) + 1),
                                max(panel.sensor[1], int(msg.arrays["x"].max()) + 1))
            oldest_kept = msg.t_range[1] - self.event_window_us
            while len(panel.packets) > 1 and (panel.packets[0].t_range[1] < oldest_kept
                                              or panel.window_events > MAX_WINDOW_EVENTS):
                panel.window_events -= len(panel.packets.popleft().arrays["t"])

    def _panel(self, stream: str, kind: str) -> Panel:
        panel = self._panels.get(stream)
        if panel is None:
            panel = self._panels[stream] = Panel(len(self._panels), stream, kind)
        return panel

    def versions(self) -> list[tuple[int, int]]:
        """(panel id, version) of every panel that has data."""
        with self._lock:
            return [(p.id, p.version) for p in self._panels.values() if p.version]

    def describe(self) -> list[dict[str, Any]]:
        """What the page lists: id, stream, kind and messages received, per panel."""
        with self._lock:
            return [{"id": p.id, "stream": p.stream, "kind": p.kind, "received": p.received}
                    for p in self._panels.values()]

    def draw(self, panel_id: int, max_width: int, quality: int) -> Picture:
        """Draw a panel's newest data as JPEG (called by the server, outside the node's thread)."""
        with self._lock:
            panel = next(p for p in self._panels.values() if p.id == panel_id)
            version, kind, latest, packets, sensor = (panel.version, panel.kind, panel.latest, list(panel.packets),
                                                      panel.sensor)
        newest = packets[-1] if kind == "events" else latest
        assert newest is not None, "draw() is only called for panels with data"
        info: dict[str, Any] = {"stream": panel.stream, "kind": kind, "sensor_t_us": int(newest.trace.sensor_t),
                                "age_ms": round((now_ns() - newest.trace.emit_ns) / 1e6, 2)}
        start = time.perf_counter()
        try:
            if kind == "events":
                rgb = render_events(packets, *sensor)
                info["events"] = int(sum(len(m.arrays["t"]) for m in packets))
                info["window_ms"] = round((packets[-1].t_range[1] - packets[0].t_range[0]) / 1e3, 1)
            elif kind == "voxel":
                rgb = render_voxel(newest.arrays["voxel"])
                info["bins"] = int(newest.arrays["voxel"].shape[0])
            else:
                rgb = render_frame(newest.arrays["image"])
        except (ValueError, KeyError) as exc:  # a malformed message shows as an error on its panel, not a crash
            rgb = np.full((120, 320, 3), 255, np.uint8)
            info["error"] = f"cannot draw this {kind} message: {exc}"
        info["height"], info["width"] = int(rgb.shape[0]), int(rgb.shape[1])
        jpeg = encode_jpeg(rgb, max_width, quality)
        info["draw_ms"] = round((time.perf_counter() - start) * 1e3, 2)
        return Picture(panel_id, version, jpeg, info)
