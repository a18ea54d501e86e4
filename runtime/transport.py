"""ZeroMQ transport for graph edges. The only module that touches data sockets.

Each edge is its own PUSH -> PULL pair; the consumer binds, the producer connects, so a producer
that starts first queues messages until the consumer is there (nothing lost before connection).

Delivery policies:

* ``lossless`` — the consumer's receiver thread moves messages into a bounded queue; when it is
  full the thread stops reading, ZeroMQ's high-water marks fill, and the sender blocks.
* ``latest`` — ZeroMQ's CONFLATE does not work with multipart messages and high-water marks keep
  the *oldest* messages, so instead a receiver thread drains the socket continuously into a
  one-slot mailbox: the newest message wins and every overwritten one is counted. The sender
  never blocks (a full pipe, which the draining makes rare, is a counted drop at the sender).

End of stream is a ``control`` message with ``command: eos``; it is never dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from evpipe.runtime import security
from evpipe.runtime.counters import Counters
from evpipe.runtime.wire import Limits, Message, WireError, decode, encode

log = logging.getLogger("evpipe.transport")

EOS = "eos"


@dataclass
class _Slot:
    edge: str
    port: str
    policy: str
    capacity: int
    queue: deque = field(default_factory=deque)
    eos: bool = False
    eos_delivered: bool = False


class Mailbox:
    """Where receiver threads leave messages for the node's compute thread.

    ``get`` returns the pending message that arrived first across all edges, so a node with
    several inputs sees them in arrival order.
    """

    def __init__(self, counters: Counters, on_eos: Callable[[str], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._on_eos = on_eos  # told when an edge's end-of-stream arrives (the producer waits for it)
        self._slots: dict[str, _Slot] = {}
        self._arrivals = 0
        self.counters = counters
        self.closed = False

    def add_edge(self, edge: str, port: str, policy: str, capacity: int) -> None:
        self._slots[edge] = _Slot(edge, port, policy, capacity)

    def put(self, edge: str, msg: Message) -> None:
        slot = self._slots[edge]
        with self._cond:
            if msg.kind == "control" and msg.meta.get("command") == EOS:
                slot.eos = True
                if self._on_eos is not None:
                    self._on_eos(edge)
            elif slot.policy == "latest":
                if slot.queue:
                    slot.queue.clear()
                    self.counters.add_in(edge, "dropped_latest")
                self._arrivals += 1
                slot.queue.append((self._arrivals, msg))
            else:
                while len(slot.queue) >= slot.capacity and not self.closed:
                    self._cond.wait(0.1)
                self._arrivals += 1
                slot.queue.append((self._arrivals, msg))
            self._cond.notify_all()

    def close_edge(self, edge: str) -> None:
        """Mark an edge finished without an EOS message (its EOS was lost with a crashed predecessor)."""
        with self._cond:
            slot = self._slots[edge]
            if not slot.eos:
                slot.eos = True
                self._cond.notify_all()

    def get(self, timeout: float) -> tuple[str, str, Message] | None:
        """Next (edge, port, message); an EOS is returned once per edge after its data. None on timeout."""
        with self._cond:
            if not self._cond.wait_for(self._has_pending, timeout):
                return None
            heads = [s for s in self._slots.values() if s.queue]
            if heads:
                slot = min(heads, key=lambda s: s.queue[0][0])
                _, msg = slot.queue.popleft()
                self._cond.notify_all()
                return slot.edge, slot.port, msg
            slot = next(s for s in self._slots.values() if s.eos and not s.eos_delivered)
            slot.eos_delivered = True
            return slot.edge, slot.port, Message.control(EOS)

    def all_closed(self) -> bool:
        with self._cond:
            return all(s.eos_delivered for s in self._slots.values())

    def pending(self) -> bool:
        with self._cond:
            return self._has_pending()

    def _has_pending(self) -> bool:
        return any(s.queue or (s.eos and not s.eos_delivered) for s in self._slots.values())

    def shutdown(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class Inbox(threading.Thread):
    """Receiver thread of one input edge: bind, receive, validate, hand to the mailbox."""

    def __init__(self, ctx: zmq.Context, endpoint: str, edge: str, port: str, policy: str, capacity: int,
                 mailbox: Mailbox, limits: Limits, curve: dict[str, str] | None = None) -> None:
        super().__init__(name=f"inbox:{edge}", daemon=True)
        self.edge, self.mailbox, self.limits = edge, mailbox, limits
        mailbox.add_edge(edge, port, policy, capacity)
        self.counters = mailbox.counters
        self.last_seq = -1
        # Token bucket for control messages: a flood of them must not cost the node its time.
        self._control_tokens = float(limits.max_control_per_s)
        self._control_refill = time.monotonic()
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, 2 if policy == "latest" else capacity)
        # Hard guard inside ZeroMQ: a frame over the limit is refused before it is allocated (the peer is
        # disconnected and reconnects). Anything smaller is checked, counted and logged by decode().
        self.sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve:
            security.apply_server(self.sock, curve)
        self.sock.bind(endpoint)
        self._stopping = threading.Event()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stopping.is_set():
            if not poller.poll(100):
                continue
            frames = self.sock.recv_multipart(copy=False)
            self.counters.add_in(self.edge, "received")
            try:
                msg = decode(frames, self.limits)
            except WireError as exc:
                self.counters.add_in(self.edge, "rejected")
                log.warning("rejected message on %s: %s", self.edge, exc)
                continue
            if msg.kind == "control" and not self._take_control_token():
                self.counters.add_in(self.edge, "rejected")
                log.warning("rejected control message on %s: over max_control_per_s=%d", self.edge,
                            self.limits.max_control_per_s)
                continue
            if msg.kind != "control":
                if self.last_seq >= 0 and msg.seq > self.last_seq + 1:
                    self.counters.add_in(self.edge, "gaps", msg.seq - self.last_seq - 1)
                self.last_seq = msg.seq
            self.mailbox.put(self.edge, msg)
        self.sock.close()

    def _take_control_token(self) -> bool:
        now = time.monotonic()
        rate = self.limits.max_control_per_s
        self._control_tokens = min(float(rate), self._control_tokens + (now - self._control_refill) * rate)
        self._control_refill = now
        if self._control_tokens < 1.0:
            return False
        self._control_tokens -= 1.0
        return True

    def stop(self) -> None:
        self._stopping.set()


class Outlet:
    """Sender side of one output edge."""

    def __init__(self, ctx: zmq.Context, endpoint: str, edge: str, policy: str, capacity: int, counters: Counters,
                 curve: dict[str, Any] | None = None) -> None:
        self.edge, self.policy, self.counters = edge, policy, counters
        self.seq = 0
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, 2 if policy == "latest" else capacity)
        self.sock.setsockopt(zmq.LINGER, 30_000)
        if curve:
            security.apply_client(self.sock, curve)
        self.sock.connect(endpoint)

    def send(self, msg: Message, abort: threading.Event) -> bool:
        """Send one data message: ``latest`` edges never block; ``lossless`` ones wait for the consumer."""
        msg.seq = self.seq
        self.seq += 1
        frames = encode(msg)
        if self.policy == "latest":
            try:
                self.sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                self.counters.add_out(self.edge, "dropped_send")
                return False
        elif not self._send_blocking(frames, abort):
            return False
        self.counters.add_out(self.edge, "sent")
        nbytes = sum(f.nbytes if isinstance(f, memoryview) else len(f) for f in frames)  # len() is the first dim
        self.counters.add_out(self.edge, "bytes", nbytes)
        return True

    def send_eos(self, abort: threading.Event) -> bool:
        """End of stream: never dropped, whatever the policy."""
        return self._send_blocking(encode(Message.control(EOS)), abort)

    def _send_blocking(self, frames: list[Any], abort: threading.Event) -> bool:
        try:  # the common case: room in the pipe, no poll needed
            self.sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            pass
        # Poll so a shutdown can interrupt a sender blocked by a consumer that is gone.
        while not abort.is_set():
            if self.sock.poll(100, zmq.POLLOUT):
                self.sock.send_multipart(frames, copy=False)
                return True
        return False

    def close(self, linger_ms: int | None = None) -> None:
        """Close; queued messages still go out for up to LINGER (``linger_ms`` overrides it, 0 drops them)."""
        self.sock.close(linger=linger_ms)
