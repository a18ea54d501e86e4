"""Node classes used by the runtime tests, loaded by dotted path the way users add their own nodes."""

from __future__ import annotations

import time

import numpy as np

from evpipe.runtime.events import Frame
from evpipe.runtime.node import ANY_KIND, Node, Spec
from evpipe.runtime.wire import Message


class SlowSink(Node):
    """Takes ``delay_ms`` per message (a consumer that cannot keep up) and reports the sequence numbers it saw."""

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("in", ANY_KIND)
        spec.param("delay_ms", float, 20.0, "time spent per message")

    def start(self) -> None:
        self.seqs: list[int] = []

    def process(self, port: str, msg: Message) -> None:
        self.seqs.append(msg.seq)
        time.sleep(self.params.delay_ms / 1000)

    def stop(self) -> None:
        self.report({"seqs": self.seqs})


class FrameSource(Node):
    """Emits a few gray frames."""

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.output("frames", "frame")
        spec.param("count", int, 3)

    def produce(self):
        for i in range(self.params.count):
            yield "frames", Message.from_frame(Frame(np.full((4, 4), i, np.uint8), t=i * 1000))
