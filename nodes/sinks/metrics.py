"""The metrics sink: end-to-end latency, per-node breakdown, throughput, and a delivery ledger."""

from __future__ import annotations

from collections import defaultdict

from evpipe.runtime.events import events_checksum
from evpipe.runtime.node import ANY_KIND, Node, Spec
from evpipe.runtime.report import LatencyRecorder
from evpipe.runtime.wire import Message, now_ns


class Metrics(Node):
    """Measures every message it receives: latency from its trace, counts, and for events a checksum.

    The report (printed by `evpipe run`, written by --report) gets end-to-end latency p50/p90/p99/max
    per path, queueing vs compute per node, throughput, and per stream the number of messages and
    events and an order-independent event checksum — so lossless delivery can be proven, not assumed.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("in", ANY_KIND, "any stream; connect several edges to measure several paths")
        spec.param("warmup", int, 5, "messages skipped per path before latency is recorded", minimum=0)
        spec.param("checksum", bool, True, "checksum every event (about 5 ns per event; off for raw throughput)")
        spec.param("live_interval_s", float, 1.0, "how often a sliding-window summary goes to the live status",
                   minimum=0.1)

    def start(self) -> None:
        self.latency = LatencyRecorder(self.params.warmup)
        self.next_live_ns = 0
        self.streams: dict[str, dict[str, int]] = defaultdict(lambda: {"messages": 0, "events": 0, "checksum": 0})

    def process(self, port: str, msg: Message) -> None:
        recv_ns = now_ns()
        self.latency.add(msg.trace, recv_ns, self.name, self.clock_offsets_ns)
        if recv_ns >= self.next_live_ns:
            self.next_live_ns = recv_ns + int(self.params.live_interval_s * 1e9)
            self.report({"live_latency": self.latency.recent(5.0, recv_ns)})
        ledger = self.streams[msg.stream]
        ledger["messages"] += 1
        if msg.kind == "events":
            a = msg.arrays
            ledger["events"] += len(a["t"])
            if self.params.checksum:
                ledger["checksum"] = (ledger["checksum"] + events_checksum(a["t"], a["x"], a["y"], a["p"])) % (1 << 64)

    def stop(self) -> None:
        self.report({"latency": self.latency.summary(), "streams": dict(self.streams)})
