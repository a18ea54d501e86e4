"""Example of a user-written node: a hot-pixel filter, loaded by dotted path from a graph YAML.

Any importable ``Node`` subclass works the same way; see ``custom_node_example.yaml``:

    nodes:
      hot: {type: "evpipe.configs.custom_node_example:HotPixelFilter", params: {max_rate_hz: 5000}}

A node declares its ports and parameters in ``setup`` (so ``evpipe graph`` can validate a graph
without running it), gets validated parameters as ``self.params``, and calls ``self.emit``; the
runtime does sockets, threads, tracing and shutdown.
"""

from __future__ import annotations

import numpy as np

from evpipe.runtime.node import Node, Spec
from evpipe.runtime.wire import Message


class HotPixelFilter(Node):
    """Drops events from pixels that fire faster than ``max_rate_hz`` (averaged over ``window_us``)."""

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("events", "events")
        spec.output("events", "events")
        spec.param("width", int, 346, "sensor width", minimum=1)
        spec.param("height", int, 260, "sensor height", minimum=1)
        spec.param("max_rate_hz", float, 5000.0, "pixels above this event rate are muted", minimum=0.0)
        spec.param("window_us", int, 100_000, "rate estimation window", minimum=1)

    def start(self) -> None:
        self.counts = np.zeros((self.params.height, self.params.width), np.int32)
        self.window_start: int | None = None
        self.hot = np.zeros_like(self.counts, dtype=bool)
        self.removed = 0

    def process(self, port: str, msg: Message) -> None:
        events = msg.events()
        if len(events) == 0:
            self.emit("events", msg)
            return
        if self.window_start is None:
            self.window_start = int(events.t[0])
        np.add.at(self.counts, (events.y, events.x), 1)
        if events.t[-1] - self.window_start >= self.params.window_us:
            limit = self.params.max_rate_hz * self.params.window_us / 1e6
            self.hot = self.counts > limit
            self.counts[:] = 0
            self.window_start = int(events.t[-1])
        keep = ~self.hot[events.y, events.x]
        self.removed += int(len(events) - np.count_nonzero(keep))
        self.emit("events", Message.from_events(events[keep], **msg.meta))

    def stop(self) -> None:
        self.report({"hot_pixels": int(self.hot.sum()), "removed_events": self.removed})
