"""Synthetic event source for load tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from evpipe.runtime.events import Events
from evpipe.runtime.node import Node, Spec
from evpipe.runtime.wire import Message


class EventGenerator(Node):
    """Emits packets of uniformly random events (a noise-only sensor) at a set rate or as fast as possible.

    Model: events arrive as a Poisson process at ``event_rate`` events/s of sensor time, each at a
    uniformly random pixel with a random polarity. A pool of ``pool_size`` packets is drawn once; packet
    k reuses pool packet k mod pool_size with time shifted forward by whole pool spans, so generation
    costs almost nothing and the stream stays time-ordered. ``pace`` = "realtime" sleeps so sensor time
    follows wall time; "fast" sends as fast as consumers take it (lossless edges block it).
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.output("events", "events", "event packets, time-ordered")
        spec.param("packets", int, 100, "number of packets to emit", minimum=1)
        spec.param("packet_events", int, 10_000, "events per packet", minimum=1)
        spec.param("event_rate", float, 10e6, "events per second of sensor time", minimum=1.0)
        spec.param("width", int, 346, "sensor width", minimum=1, maximum=65535)
        spec.param("height", int, 260, "sensor height", minimum=1, maximum=65535)
        spec.param("pace", str, "fast", "realtime or fast", choices=["realtime", "fast"])
        spec.param("speed", float, 1.0, "realtime pacing factor (2.0 = twice real time)", minimum=1e-3)
        spec.param("pool_size", int, 8, "distinct packets drawn up front", minimum=1)
        spec.param("seed", int, 0, "random seed")
        spec.param("checksum", bool, True, "checksum what is produced (about 5 ns per event; off for raw throughput)")

    def start(self) -> None:
        p = self.params
        rng = np.random.default_rng(p.seed)
        n, pool = p.packet_events, min(p.pool_size, p.packets)
        dt = rng.exponential(1e6 / p.event_rate, size=n * pool)
        t = np.cumsum(dt).astype(np.int64)
        self._span = int(t[-1]) + 1
        self._pool = [
            Events(t[i * n:(i + 1) * n].copy(),
                   rng.integers(0, p.width, n, dtype=np.uint16),
                   rng.integers(0, p.height, n, dtype=np.uint16),
                   rng.choice(np.array([-1, 1], dtype=np.int8), n))
            for i in range(pool)
        ]

    def produce(self) -> Iterator[tuple[str, Message]]:
        p = self.params
        wall0 = time.monotonic()
        self._produced = {"messages": 0, "events": 0, "checksum": 0}
        for k in range(p.packets):
            cycle, base = divmod(k, len(self._pool))
            packet = self._pool[base]
            if cycle:
                packet = Events(packet.t + cycle * self._span, packet.x, packet.y, packet.p)
            if p.pace == "realtime":
                delay = (packet.t[-1] / 1e6) / p.speed - (time.monotonic() - wall0)
                if delay > 0:
                    time.sleep(delay)
            self._count(packet)  # before yielding: the runtime may stop the generator right after sending
            yield "events", Message.from_events(packet, width=p.width, height=p.height)

    def _count(self, packet: Events) -> None:
        produced = self._produced
        produced["messages"] += 1
        produced["events"] += len(packet)
        if self.params.checksum:
            produced["checksum"] = (produced["checksum"] + packet.checksum()) % (1 << 64)

    def stop(self) -> None:
        self.report({"produced": self._produced})
