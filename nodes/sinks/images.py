"""The images sink: every frame, voxel grid or events packet it receives as a PNG file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evpipe.nodes.sinks.render import events_to_rgb, image_to_rgb, voxel_to_rgb
from evpipe.runtime.node import ANY_KIND, Node, NodeError, Spec
from evpipe.runtime.wire import Message


class ImageWriter(Node):
    """Writes PNGs to ``dir``: ``<node>_<port>_<index:06d>.png`` per producing stream, plus ``index.csv``.

    Frames are written as they are (uint8 gray or RGB; float images in [0, 1] as 8-bit gray/RGB),
    voxel grids and events packets as red/blue pictures (`render`); events need ``width``/``height``
    in their meta. ``every`` keeps one message in N per stream. ``index.csv`` lists ``file``,
    ``stream``, ``kind``, ``t_us`` (a frame's time, a voxel grid's target time, an events packet's
    last time), ``seq``. Other kinds are counted as ignored. ``stop()`` closes the index.

    Report: ``dir``, ``written`` per stream, ``ignored`` per stream.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("in", ANY_KIND, "frames, voxel grids or events; several edges allowed")
        spec.param("dir", str, doc="output folder (created)")
        spec.param("every", int, 1, "write one message in this many per stream", minimum=1)

    def start(self) -> None:
        self.dir = Path(self.params.dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.index_file = open(self.dir / "index.csv", "w", newline="")  # noqa: SIM115 - open until stop()
        except OSError as exc:
            raise NodeError(f"{self.name}: cannot write to {self.dir} ({exc.strerror})") from None
        self.index = csv.writer(self.index_file)
        self.index.writerow(["file", "stream", "kind", "t_us", "seq"])
        self.seen: dict[str, int] = {}
        self.written: dict[str, int] = {}
        self.ignored: dict[str, int] = {}

    def process(self, port: str, msg: Message) -> None:
        stream = msg.stream or port
        picture = self._picture(msg)
        if picture is None:
            self.ignored[stream] = self.ignored.get(stream, 0) + 1
            return
        n = self.seen.get(stream, 0)
        self.seen[stream] = n + 1
        if n % self.params.every:
            return
        image, t = picture
        index = self.written.get(stream, 0)
        name = f"{stream.replace('.', '_')}_{index:06d}.png"
        Image.fromarray(image).save(self.dir / name, compress_level=1)
        self.index.writerow([name, stream, msg.kind, t, msg.seq])
        self.written[stream] = index + 1

    @staticmethod
    def _picture(msg: Message) -> tuple[np.ndarray, int] | None:
        """(uint8 image (H, W) or (H, W, 3), time µs) of a message, or None when it has no picture."""
        if msg.kind == "frame":
            image = msg.arrays["image"]
            if image.dtype != np.uint8:
                rgb = image_to_rgb(image)
                image = rgb[:, :, 0] if image.ndim == 2 else rgb
            return np.ascontiguousarray(image), int(msg.meta["t"])
        if msg.kind == "voxel":
            return voxel_to_rgb(msg.arrays["voxel"]), int(msg.meta.get("t_target", msg.t_range[1]))
        if msg.kind == "events" and {"width", "height"} <= msg.meta.keys():
            events = msg.events()
            return events_to_rgb(events, int(msg.meta["height"]), int(msg.meta["width"])), int(msg.t_range[1])
        return None

    def stop(self) -> None:
        if hasattr(self, "index_file"):
            self.index_file.close()
        report: dict[str, Any] = {"dir": str(getattr(self, "dir", self.params.dir)),
                                  "written": getattr(self, "written", {}), "ignored": getattr(self, "ignored", {})}
        self.report(report)
