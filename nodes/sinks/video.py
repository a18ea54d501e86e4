"""The video sink: an MP4 of one or several streams side by side, aligned by sensor time."""

from __future__ import annotations

import bisect
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from evpipe.nodes.sinks.render import events_to_rgb, image_to_rgb, label, resize_to_height, side_by_side, voxel_to_rgb
from evpipe.nodes.transforms.voxelizer import EventBuffer, event_watermark
from evpipe.runtime.node import ANY_KIND, Node, NodeError, Spec
from evpipe.runtime.wire import Message

DRAWN_KINDS = ("frame", "voxel", "events")


def message_time(msg: Message) -> int:
    """The sensor time (µs) a frame or voxel message shows: a frame's ``t``, a voxel grid's ``t_target``."""
    if msg.kind == "frame":
        return int(msg.meta["t"])
    return int(msg.meta.get("t_target", msg.t_range[1]))


class _Panel:
    """One stream's column: what it has received and what it shows at the current output time."""

    def __init__(self, name: str, msg: Message) -> None:
        self.name = name
        self.kind = msg.kind
        if msg.kind == "events":
            self.size = (int(msg.meta["width"]), int(msg.meta["height"]))
            self.buffer = EventBuffer()
        else:
            array = msg.arrays["image"] if msg.kind == "frame" else msg.arrays["voxel"]
            shape = array.shape[:2] if msg.kind == "frame" else array.shape[1:]
            self.size = (int(shape[1]), int(shape[0]))
        self.times: list[int] = []  # frame/voxel items sorted by time; events: each message's newest time
        self.items: list[Message] = []
        self.shown: Message | None = None
        self.watermark: int | None = None
        self.first_t: int | None = None

    def add(self, msg: Message) -> None:
        if self.kind == "events":
            events = msg.events()
            if len(events):
                self.buffer.append(events)  # in time order: sources emit events sorted
                self.first_t = int(events.t[0]) if self.first_t is None else self.first_t
                self.times.append(int(events.t[-1]))
            mark = event_watermark(msg)
        else:
            mark = message_time(msg)
            index = bisect.bisect_right(self.times, mark)  # voxel grids of several anchors may interleave
            self.times.insert(index, mark)
            self.items.insert(index, msg)
            self.first_t = mark if self.first_t is None else min(self.first_t, mark)
        if mark is not None and (self.watermark is None or mark > self.watermark):
            self.watermark = mark

    @property
    def pending(self) -> int:
        """Messages received and not yet drawn."""
        return len(self.times)

    def image(self, t: int, window_us: int) -> np.ndarray:
        """The picture at output time ``t``: the latest frame/voxel at or before it (held), or the events in
        (t - window_us, t]; white before the first item."""
        width, height = self.size
        if self.kind == "events":
            self.buffer.release_before(t - window_us + 1)
            del self.times[:bisect.bisect_right(self.times, t)]
            hi = int(np.searchsorted(self.buffer.t, t, side="right"))
            return events_to_rgb(self.buffer.events(0, hi), height, width)
        n = bisect.bisect_right(self.times, t)
        if n:
            self.shown = self.items[n - 1]
            del self.times[:n], self.items[:n]
        if self.shown is None:
            return np.full((height, width, 3), 255, np.uint8)
        if self.kind == "frame":
            return image_to_rgb(self.shown.arrays["image"])
        return voxel_to_rgb(self.shown.arrays["voxel"])


class VideoWriter(Node):
    """Writes an H.264 MP4 (PyAV) of frames, voxel grids and events, several streams side by side.

    Connect any number of edges to ``in``; each producing stream (``node.port``) becomes a panel, left
    to right in the order of ``panels`` (default: every stream, sorted). The layout is fixed once every
    named panel has sent a message (unnamed: once a stream is ``layout_wait_us`` of sensor time past
    the first item), or when a panel already holds ``max_pending`` messages — then without the streams
    still missing (an event-only recording has no frames). Output frames are taken on a sensor-time
    grid every 1/``fps`` s: each panel shows its latest frame or voxel grid at or before that time
    (sample and hold: predictions and ground truth at the same times line up exactly), or its events
    of the last ``events_window_us`` (red ON, blue OFF, on white). A time is drawn once every panel's
    stream has reached it (frames by their time, events by their watermark), so panels are aligned
    however the streams are delayed; a panel more than ``max_pending`` items behind the others is not
    waited for (counted as ``forced``). The file plays at ``playback_fps`` (default ``fps``: real
    time; lower gives slow motion). Panels are scaled to a common height (``height``, default the
    tallest) and labelled with their stream. ``stop()`` (also on Ctrl-C) draws what remains, flushes
    the encoder and closes the file.

    Report: ``path``, ``frames`` written, ``size`` [width, height], ``panels``, ``fps``,
    ``playback_fps``, ``forced``, ``ignored`` (messages per stream that are not drawn).
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("in", ANY_KIND, "frames, voxel grids or events; connect several edges for side-by-side panels")
        spec.param("path", str, doc="output .mp4 file (its folder is created)")
        spec.param("fps", float, 25.0, "output frames per second of sensor time", minimum=0.01)
        spec.param("playback_fps", float, 0.0, "frame rate of the file; 0: fps (real time)", minimum=0.0)
        spec.param("panels", list, None, "stream names (node.port) left to right; null: every stream, sorted")
        spec.param("layout_wait_us", int, 1_000_000, "panels: null: sensor time to wait for streams to appear "
                   "before the layout is fixed", minimum=0)
        spec.param("height", int, 0, "panel height in pixels; 0: the tallest panel's own height", minimum=0)
        spec.param("labels", bool, True, "write each panel's stream name on it")
        spec.param("events_window_us", int, 0, "events drawn per output frame; 0: one frame period", minimum=0)
        spec.param("crf", int, 20, "H.264 quality (0 lossless .. 51 worst)", minimum=0, maximum=51)
        spec.param("max_pending", int, 256, "items a panel may hold before lagging panels are not waited for",
                   minimum=1)

    def start(self) -> None:
        p = self.params
        self.path = Path(p.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeError(f"{self.name}: cannot create the folder of {self.path} ({exc.strerror})") from None
        self.period_us = 1e6 / p.fps
        self.window_us = p.events_window_us or max(round(self.period_us), 1)
        self.panels: dict[str, _Panel] = {}
        self.order: list[str] | None = None  # fixed at the first output frame
        self.next_index: int | None = None  # grid index of the next output time
        self.container: Any = None
        self.stream: Any = None
        self.frames_written = 0
        self.forced = 0
        self.ignored: dict[str, int] = {}

    def process(self, port: str, msg: Message) -> None:
        name = msg.stream
        if msg.kind not in DRAWN_KINDS or (self.params.panels is not None and name not in self.params.panels) or (
                self.order is not None and name not in self.order) or (
                msg.kind == "events" and name not in self.panels and not {"width", "height"} <= msg.meta.keys()):
            self.ignored[name] = self.ignored.get(name, 0) + 1
            return
        if name not in self.panels:
            self.panels[name] = _Panel(name, msg)
        self.panels[name].add(msg)
        self._advance(final=False)

    def _layout_ready(self) -> bool:
        """Every named panel has appeared; with no names, some stream has gone ``layout_wait_us`` past the
        earliest item. Or a panel holds ``max_pending`` messages: the layout is fixed without the missing."""
        if self.panels and max(p.pending for p in self.panels.values()) > self.params.max_pending:
            return True
        if self.params.panels is not None:
            return all(n in self.panels for n in self.params.panels)
        firsts = [p.first_t for p in self.panels.values() if p.first_t is not None]
        marks = [p.watermark for p in self.panels.values() if p.watermark is not None]
        return bool(firsts and marks) and max(marks) - min(firsts) >= self.params.layout_wait_us

    def _grid(self, index: int) -> int:
        return round(index * self.period_us)

    def _advance(self, final: bool) -> None:
        if self.order is None:
            wanted = self.params.panels
            if not (final or self._layout_ready()):
                return  # wait for the streams to appear (a panel needs a first message for its size)
            self.order = [n for n in (wanted or sorted(self.panels)) if n in self.panels]
            if not self.order:
                return
            first = min(self.panels[n].first_t for n in self.order if self.panels[n].first_t is not None)
            self.next_index = int(np.ceil(first / self.period_us))
        panels = [self.panels[n] for n in self.order]
        marks = [p.watermark for p in panels if p.watermark is not None]
        if not marks:
            return
        end = max(marks)
        while True:
            t = self._grid(self.next_index)
            reached = all(p.watermark is not None and p.watermark >= t for p in panels)
            if final:
                if self._grid(self.next_index - 1) >= end:
                    return  # the last drawn time already shows everything (events up to it, the latest frame)
            elif not reached:
                if max(p.pending for p in panels) <= self.params.max_pending or t > end:
                    return
                self.forced += 1
            self._write(t, panels)
            self.next_index += 1

    def _write(self, t: int, panels: list[_Panel]) -> None:
        images = [p.image(t, self.window_us) for p in panels]
        height = self.params.height or max(image.shape[0] for image in images)
        if self.params.labels:
            images = [label(resize_to_height(image, height), p.name) for image, p in zip(images, panels, strict=True)]
        row = side_by_side(images, height)
        if self.container is None:
            self._open(row.shape[1], row.shape[0])
        frame = av.VideoFrame.from_ndarray(row, format="rgb24")
        frame.pts = self.frames_written
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames_written += 1

    def _open(self, width: int, height: int) -> None:
        rate = Fraction(self.params.playback_fps or self.params.fps).limit_denominator(1000)
        try:
            self.container = av.open(str(self.path), "w")
        except (av.error.FFmpegError, OSError) as exc:
            raise NodeError(f"{self.name}: cannot write {self.path} ({exc})") from None
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(self.params.crf), "preset": "veryfast"}

    def stop(self) -> None:
        if hasattr(self, "panels"):
            self._advance(final=True)
            if self.container is not None:
                for packet in self.stream.encode():  # flush the encoder's delayed frames
                    self.container.mux(packet)
                self.container.close()
        size = [self.stream.width, self.stream.height] if self.stream is not None else None
        self.report({"path": str(self.path), "frames": self.frames_written, "size": size, "panels": self.order or [],
                     "fps": self.params.fps, "playback_fps": self.params.playback_fps or self.params.fps,
                     "forced": self.forced, "ignored": self.ignored})

