"""Clock offsets between hosts, estimated by ping-pong (NTP's midpoint rule, best of several rounds).

Each host's supervisor serves its monotonic clock on ``port_base - 1`` (CURVE-protected like the
edges). Before starting its nodes it asks every other host: with t0/t2 the local send/receive times
and t1 the remote clock, offset = t1 - (t0 + t2) / 2 from the round with the smallest round trip;
the error is at most half that round trip. Latency stamps made on another host are moved onto the
local clock with these offsets.
"""

from __future__ import annotations

import threading
import time

import zmq

from evpipe.runtime import security


class ClockServer(threading.Thread):
    def __init__(self, ctx: zmq.Context, endpoint: str, curve: dict[str, str] | None) -> None:
        super().__init__(name="clock", daemon=True)
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve:
            security.apply_server(self.sock, curve)
        self.sock.bind(endpoint)
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            if self.sock.poll(100):
                self.sock.recv()
                self.sock.send(str(time.monotonic_ns()).encode())
        self.sock.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def estimate_offset(ctx: zmq.Context, endpoint: str, curve: dict[str, str] | None, rounds: int = 16,
                    timeout_s: float = 10.0) -> tuple[int, int] | None:
    """(offset_ns, round_trip_ns) of the remote clock relative to ours, or None if it does not answer."""
    deadline = time.monotonic() + timeout_s
    best: tuple[int, int] | None = None
    while best is None or rounds > 0:
        if time.monotonic() > deadline:
            return best
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        if curve:
            security.apply_client(sock, curve)
        sock.connect(endpoint)
        try:
            t0 = time.monotonic_ns()
            sock.send(b"t")
            if not sock.poll(500):
                continue  # not up yet (or refused): a fresh socket tries again
            t1 = int(sock.recv())
            t2 = time.monotonic_ns()
        finally:
            sock.close()
        rounds -= 1
        sample = (t1 - (t0 + t2) // 2, t2 - t0)
        if best is None or sample[1] < best[1]:
            best = sample
    return best
