"""Event filters: region of interest, polarity, time window."""

from __future__ import annotations

import numpy as np

from evpipe.runtime.events import Events
from evpipe.runtime.node import Node, Spec
from evpipe.runtime.wire import Message


class EventFilter(Node):
    """Keeps events inside a region of interest, of the chosen polarity and time window; counts what it removes.

    With the defaults it passes every event unchanged (no copy).
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("events", "events")
        spec.output("events", "events")
        spec.param("roi", list, None, "[x0, y0, x1, y1] half-open pixel box; null keeps all")
        spec.param("polarity", str, "both", "which events to keep", choices=["both", "on", "off"])
        spec.param("t_start", int, None, "drop events before this time (µs)")
        spec.param("t_stop", int, None, "drop events at or after this time (µs)")

    def start(self) -> None:
        roi = self.params.roi
        if roi is not None and (len(roi) != 4 or roi[0] >= roi[2] or roi[1] >= roi[3]):
            raise ValueError(f"{self.name}: roi must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {roi}")
        self.removed = 0

    def process(self, port: str, msg: Message) -> None:
        events = msg.events()
        keep = self._mask(events)
        if keep is not None:
            self.removed += int(len(events) - np.count_nonzero(keep))
            events = events[keep]
            msg = Message.from_events(events, **msg.meta)
        self.emit("events", msg)

    def _mask(self, ev: Events) -> np.ndarray | None:
        p = self.params
        mask = None

        def both(m: np.ndarray) -> np.ndarray:
            return m if mask is None else mask & m

        if p.roi is not None:
            x0, y0, x1, y1 = p.roi
            mask = both((ev.x >= x0) & (ev.x < x1) & (ev.y >= y0) & (ev.y < y1))
        if p.polarity != "both":
            mask = both(ev.p == (1 if p.polarity == "on" else -1))
        if p.t_start is not None:
            mask = both(ev.t >= p.t_start)
        if p.t_stop is not None:
            mask = both(ev.t < p.t_stop)
        return mask

    def stop(self) -> None:
        self.report({"removed_events": self.removed})
