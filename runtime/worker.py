"""One node in its own process: sockets, the compute loop, tracing and shutdown.

Started by the supervisor as ``python -m evpipe.runtime.worker`` with a JSON spec on stdin. Life
cycle: bind inputs, connect outputs, ``node.start()``, report *ready*, wait for *start*, then
process (or produce) until every input has ended, ``node.stop()``, send end-of-stream downstream,
report final counters, exit 0. SIGTERM asks a source to stop producing and any other node to
finish what it has; the graph then drains.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

import msgpack
import zmq

from evpipe.runtime import security
from evpipe.runtime.counters import Counters
from evpipe.runtime.graph import resolve_node_type
from evpipe.runtime.logs import configure_logging
from evpipe.runtime.node import Node, NodeError
from evpipe.runtime.report import NodeTimings
from evpipe.runtime.transport import Inbox, Mailbox, Outlet
from evpipe.runtime.wire import Limits, Message, Trace, now_ns

EXIT_FATAL = 3
EOS_ACK_TIMEOUT_S = 30.0
# An end-of-stream can die with a crashed consumer. When the supervisor says an edge's producer has
# finished (and flushed), the edge counts as ended once it has also been quiet this long.
CLOSED_EDGE_IDLE_S = 1.0


class Control(threading.Thread):
    """Talks to the supervisor: sends reports from a queue, receives commands into events."""

    def __init__(self, ctx: zmq.Context, endpoint: str, identity: str, abort: threading.Event,
                 supervisor_pid: int) -> None:
        super().__init__(name="control", daemon=True)
        self.supervisor_pid = supervisor_pid  # from the spec: the supervisor may die before we get here
        self.abort = abort
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, identity.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.connect(endpoint)
        self.outbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.started = threading.Event()
        self.stop_requested = threading.Event()
        self.upstream_done: set[str] = set()  # input edges whose producer has finished
        self.eos_acked: set[str] = set()  # output edges whose consumer confirmed our end-of-stream
        self.clock_offsets_ns: dict[str, int] = {}  # shared with the node: updated when hosts are measured

    def send(self, payload: dict[str, Any]) -> None:
        self.outbox.put(payload)

    def run(self) -> None:
        while True:
            if os.getppid() != self.supervisor_pid and not self.abort.is_set():
                # The supervisor is gone (killed): nobody will collect our output, so stop at once.
                logging.getLogger("evpipe.worker").error("supervisor exited; stopping")
                self.abort.set()
                self.stop_requested.set()
            if self.sock.poll(20, zmq.POLLIN):
                command = msgpack.unpackb(self.sock.recv(), raw=False)
                if command.get("cmd") == "start":
                    self.started.set()
                elif command.get("cmd") == "stop":
                    self.stop_requested.set()
                elif command.get("cmd") == "upstream_done":
                    self.upstream_done.update(command["edges"])
                elif command.get("cmd") == "eos_ack":
                    self.eos_acked.add(command["edge"])
                elif command.get("cmd") == "clock":
                    self.clock_offsets_ns.update(command["offsets"])
            try:
                while True:
                    payload = self.outbox.get_nowait()
                    if payload is None:
                        self.sock.close()
                        return
                    self.sock.send(msgpack.packb(payload, use_bin_type=True))
            except queue.Empty:
                pass

    def close(self) -> None:
        self.outbox.put(None)
        self.join(5)


class Worker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.limits = Limits(**spec["limits"])
        self.ctx = zmq.Context()  # control only
        self.data_ctx = zmq.Context()  # edges: terminating it waits until sent data has been handed over
        self.abort = threading.Event()
        self.control = Control(self.ctx, spec["control"], f"{self.name}#{spec['incarnation']}", self.abort,
                               spec.get("supervisor_pid", os.getppid()))
        self.counters = Counters(spec["counters"], [e["id"] for e in spec["inputs"]],
                                 [e["id"] for e in spec["outputs"]], create=True)
        self.mailbox = Mailbox(self.counters, on_eos=lambda edge: self.control.send({"type": "eos", "edge": edge}))
        keys_dirs = {e["curve_server"]["keys_dir"] for e in spec["inputs"] if e.get("curve_server")}
        # ZAP handler: CURVE clients whose public key is not in the keys folder are refused.
        self.authenticator = security.start_authenticator(self.data_ctx, keys_dirs.pop()) if keys_dirs else None
        self.inboxes = [
            Inbox(self.data_ctx, e["endpoint"], e["id"], e["dst_port"], e["policy"], e["capacity"], self.mailbox,
                  self.limits, e.get("curve_server"))
            for e in spec["inputs"]
        ]
        self.outlets: dict[str, list[Outlet]] = {}
        for e in spec["outputs"]:
            outlet = Outlet(self.data_ctx, e["endpoint"], e["id"], e["policy"], e["capacity"], self.counters,
                            e.get("curve_client"))
            self.outlets.setdefault(e["src_port"], []).append(outlet)
        cls = resolve_node_type(spec["type"])
        self.node: Node = cls(self.name, spec["params"])
        self.node.attach_emitter(self._emit)
        self.control.clock_offsets_ns.update(spec.get("clock_offsets_ns", {}))
        self.node.clock_offsets_ns = self.control.clock_offsets_ns
        self.node.attach_reporter(lambda data: self.control.send({"type": "report", "data": data}))
        self._current: tuple[Trace, int] | None = None  # trace and in_ns of the message being processed
        self.timings = NodeTimings()

    # -- sending ---------------------------------------------------------------------------------
    def _emit(self, port: str, msg: Message) -> None:
        out_ns = now_ns()
        if self._current is not None:
            trace, in_ns = self._current
            msg.trace = trace.extended(self.name, in_ns, out_ns)
        else:  # a source: the data became available now
            msg.trace = Trace(msg.trace.sensor_t, out_ns, [(self.name, out_ns, out_ns)])
        msg.stream = f"{self.name}.{port}"
        for outlet in self.outlets.get(port, ()):
            outlet.send(msg, self.abort)

    def _finish_outputs(self) -> None:
        """End of stream on every output, then wait until each same-host consumer confirms it received it.

        libzmq drops what an ipc pipe still holds when its sender closes while the receiver is at its
        high-water mark (LINGER does not cover that), so a lossless producer keeps its sockets open
        until the end-of-stream — the last message of the edge, hence everything before it — arrived.
        Edges to other hosts (TCP, where LINGER does deliver) and a consumer that never confirms (it
        crashed with the end-of-stream) are bounded by EOS_ACK_TIMEOUT_S.
        """
        for outlets in self.outlets.values():
            for outlet in outlets:
                outlet.send_eos(self.abort)
        waiting = {e["id"] for e in self.spec["outputs"] if e.get("ack", False)}
        deadline = time.monotonic() + EOS_ACK_TIMEOUT_S
        while waiting - self.control.eos_acked and not self.abort.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _close(self) -> None:
        for inbox in self.inboxes:
            inbox.stop()
        self.mailbox.shutdown()
        for inbox in self.inboxes:
            inbox.join()
        for outlets in self.outlets.values():
            for outlet in outlets:
                outlet.close(linger_ms=0 if self.abort.is_set() else None)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.data_ctx.term()

    def _end(self, payload: dict[str, Any]) -> None:
        self.control.send({"type": "timings", "data": self.timings.as_dict()})
        self.control.send(payload)
        self.control.close()
        self.ctx.term()

    # -- main loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """0 when the stream ended (or a stop drained it); 3 on a NodeError; any other exception is a
        crash (traceback, exit 1) that the supervisor answers with a restart."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor coordinates Ctrl-C
        signal.signal(signal.SIGTERM, lambda *_: self.control.stop_requested.set())
        self.control.start()
        for inbox in self.inboxes:
            inbox.start()
        try:
            self.node.start()
        except NodeError as exc:
            return self._fatal(str(exc), started=False)
        # What start() built (a model and its runtime) lives as long as the process; frozen, it is left out
        # of the collector's full passes, each a stall of the stream (measured in the live deblur graph's
        # nodes: generation-2 passes of 8-108 ms before, under 1.5 ms with this).
        gc.collect()
        gc.freeze()
        self.control.send({"type": "ready", "pid": os.getpid()})
        while not self.control.started.wait(0.05):
            if self.control.stop_requested.is_set():
                break
        try:
            if self.node.is_source():
                self._run_source()
            else:
                self._run_consumer()
        except NodeError as exc:
            return self._fatal(str(exc), started=True)
        except BaseException:
            self.node.stop()  # keep what was accepted (a recorder's file stays readable), then crash
            raise
        self.node.stop()
        self._finish_outputs()
        self._close()
        self._end({"type": "done"})
        return 0

    def _fatal(self, message: str, *, started: bool) -> int:
        """A NodeError: one line for the user, no restart (the input or the configuration must change)."""
        print(message, file=sys.stderr, flush=True)  # the one line the user needs, no logging prefix
        if started:
            self.node.stop()
        self.abort.set()
        self._close()
        self._end({"type": "fatal", "message": message})
        return EXIT_FATAL

    def _run_source(self) -> None:
        for port, msg in self.node.produce():
            in_ns = now_ns()
            self.node.emit(port, msg)
            self.timings.add(None, in_ns, now_ns())  # compute: sending (producing runs in the generator)
            self.counters.add_processed()
            if self.control.stop_requested.is_set():
                break

    def _run_consumer(self) -> None:
        self.control.upstream_done.update(self.spec.get("closed_edges", ()))
        last_activity = time.monotonic()
        while not self.mailbox.all_closed() and not self.abort.is_set():
            item = self.mailbox.get(timeout=0.1)
            if item is None:
                if self.control.stop_requested.is_set() and not self.mailbox.pending():
                    return
                if time.monotonic() - last_activity > CLOSED_EDGE_IDLE_S:
                    for edge in list(self.control.upstream_done):
                        self.mailbox.close_edge(edge)
                continue
            edge, port, msg = item
            if msg.kind != "control":
                in_ns = now_ns()
                self._current = (msg.trace, in_ns)
                self.node.process(port, msg)
                self._current = None
                self.timings.add(self._queued_ns(msg.trace, in_ns), in_ns, now_ns())
                self.counters.add_in(edge, "processed")
                self.counters.add_processed()
            last_activity = time.monotonic()  # after process(): a long computation is not idleness


    def _queued_ns(self, trace: Trace, in_ns: int) -> int | None:
        """Upstream emitted -> taken here, with a remote upstream's stamp moved onto this host's clock."""
        if not trace.hops:
            return None
        upstream, _, out_ns = trace.hops[-1]
        return in_ns - (out_ns - self.control.clock_offsets_ns.get(upstream, 0))


def main() -> int:
    spec = json.loads(sys.stdin.read())
    configure_logging(spec.get("log_level", "INFO"))
    return Worker(spec).run()


if __name__ == "__main__":
    sys.exit(main())
