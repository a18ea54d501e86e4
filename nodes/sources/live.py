"""The machinery every live dv-processing source shares (camera, DV network stream).

An acquisition thread owns the dv-processing input: it connects, polls every stream the input
offers and moves what arrives, unconverted, into a bounded buffer; the node's ``produce`` loop
converts and checks it there and emits it. So a consumer that blocks a lossless edge never stalls
acquisition: the thread keeps draining the camera or socket, and if the buffer's byte limit is
reached the oldest items are dropped and counted — memory stays bounded and the loss is reported,
never silent. The acquisition thread does as little as possible because dv-processing's
NetworkReader holds at most 1000 packets and silently drops the rest when its reader falls behind
(tests/test_live_dv_hazards.py); past that point nothing can count the loss, so the source reports
how far behind acquisition fell (``input_backlog``: the longest burst of packets taken without the
input running empty) and warns when a burst reaches that limit.

When the input stops (``isRunning()`` false: the server went away, the camera was unplugged) the
disconnect is logged and reported, and the thread reconnects with exponential backoff
(``backoff_s`` doubling up to ``backoff_max_s``) until ``give_up_after_s`` have passed without a
connection (0: forever), after which the source ends. The first connection is retried the same way
(a server may start after the graph). Settings the input rejects end the node with that message; any
other error in the acquisition thread is raised in ``produce``: the node crashes and the supervisor
restarts it.

Accounting, exact for every event: ``received`` (as read from dv-processing) = ``emitted`` +
``dropped`` (``noise_filter``, ``non_monotonic``: older than an event already accepted,
``out_of_sensor``, ``overflow``: the buffer was full). The report also gives the link history
(connects, disconnects with why and how long until the reconnection), the time messages
waited in the buffer (queueing inside the source, which the trace-based latency does not see
because the runtime stamps a source's messages when they are emitted), and the arrival lag: wall
clock at arrival minus the newest event's timestamp. DV stamps events with Unix time, so on one
host or on clock-synchronised hosts the lag is the camera-to-evpipe delay; with another timebase
it is meaningless.

Triggers are read and counted by type in the report; the wire format has no trigger kind yet, so
they are not emitted.
"""

from __future__ import annotations

import datetime
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import dv_processing as dv
import numpy as np

from evpipe.nodes.dv_io import DvIoError, DvSettingsError, events_from_dv, frame_from_dv, imu_from_dv
from evpipe.nodes.sources.pacing import GIL_SWITCH_S
from evpipe.runtime.events import Events
from evpipe.runtime.node import Node, NodeError, Spec
from evpipe.runtime.report import describe_ms
from evpipe.runtime.wire import Message

_END = object()
_STAT_SAMPLES = 20_000  # latest samples kept for each statistic: memory stays bounded on endless streams
_EVENT_BYTES = 13  # t, x, y, p as evpipe carries them: what an events packet weighs in the buffer bound
_IMU_BYTES = 32  # t and six float32
# Packets dv-processing's NetworkReader queues before it discards newer ones (tests/test_live_dv_hazards.py).
_DV_READER_QUEUE = 1000


def declare_live_params(spec: Spec) -> None:
    """The parameters every live source has (buffering, noise filter, reconnection)."""
    spec.param("noise_filter_us", int, 0, "software background-activity filter: drop events without a neighbour "
               "event within this many µs (dv-processing's filter); 0: off", minimum=0)
    spec.param("max_buffer_mb", float, 64.0, "bound on data waiting to be emitted; beyond it the oldest messages "
               "are dropped and counted", minimum=0.1)
    spec.param("poll_interval_us", int, 500, "how often the input is polled when it has nothing new", minimum=50)
    spec.param("reconnect", bool, True, "reconnect after a disconnect (with exponential backoff)")
    spec.param("backoff_s", float, 0.1, "first reconnection delay; it doubles after each failed attempt",
               minimum=0.001)
    spec.param("backoff_max_s", float, 5.0, "longest reconnection delay", minimum=0.001)
    spec.param("give_up_after_s", float, 30.0, "end the stream after this long without a connection (0: never; "
               "note that a source waiting to reconnect only sees a stop request once data flows again)",
               minimum=0.0)


class LiveBuffer:
    """Bounded FIFO between the acquisition thread and ``produce``: (stream, dv object, receive ns) items.

    Holds dv-processing's own objects, unconverted, so the acquisition thread does as little as
    possible per packet. Bounded by the bytes of the queued data; putting past the bound drops the
    oldest items (never the one just put) and counts them.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: deque[Any] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.peak_bytes = 0
        self.dropped_messages = 0
        self.dropped_events = 0

    def put(self, stream: str, payload: Any, recv_ns: int, nbytes: int, n_events: int = 0) -> None:
        with self._cond:
            self._items.append((stream, payload, recv_ns, nbytes, n_events))
            self._bytes += nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1 and self._items[0] is not _END:
                old = self._items.popleft()
                self._bytes -= old[3]
                self.dropped_messages += 1
                self.dropped_events += old[4]
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._items.append(_END)
            self._cond.notify()

    def get(self, timeout: float) -> Any:
        """The oldest item, ``_END`` after `close`, or None when nothing arrived within ``timeout`` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items, timeout):
                return None
            item = self._items.popleft()
            if item is not _END:
                self._bytes -= item[3]
            return item


class LiveSource(Node):
    """Base of the live dv-processing sources (see the module docstring). Subclasses implement `_open`."""

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.output("events", "events", "event packets as the input delivers them (absolute DV time, µs)")
        spec.output("frames", "frame", "APS frames (t: exposure midpoint)")
        spec.output("imu", "imu", "IMU samples: t (N,) µs, accel (N, 3) g, gyro (N, 3) deg/s")
        declare_live_params(spec)

    # -- what a subclass provides ------------------------------------------------------------------
    def _open(self) -> Any:
        """Open the dv-processing input (a NetworkReader or a camera); raise DvIoError when impossible."""
        raise NotImplementedError

    def _streams(self, handle: Any) -> set[str]:
        """Which of events/frames/imu/triggers to poll on ``handle``."""
        raise NotImplementedError

    def _describe(self, handle: Any) -> dict[str, Any]:
        """Plain data about the open input for the report (camera name, resolution, stream)."""
        return {"camera": handle.getCameraName()}

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        p = self.params
        # The acquisition thread must get the GIL back quickly while the emitting thread is busy converting:
        # with Python's 5 ms switch interval it fell 288 packets behind a busy emitter, with 0.5 ms 78.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))
        self.buffer = LiveBuffer(int(p.max_buffer_mb * (1 << 20)))
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: Exception | None = None
        self.size: tuple[int, int] | None = None
        self._noise_filter: Any = None
        self._last_t = {"events": np.iinfo(np.int64).min, "frames": np.iinfo(np.int64).min}
        self.received: dict[str, Any] = {"event_packets": 0, "events": 0, "frames": 0, "imu_samples": 0,
                                         "triggers": {}}
        self.emitted = {"messages": 0, "events": 0, "events_checksum": 0, "frames": 0, "imu_messages": 0}
        self.dropped = {"noise_filter": 0, "non_monotonic": 0, "out_of_sensor": 0, "frames_non_monotonic": 0}
        self.link: dict[str, Any] = {"connects": 0, "disconnects": [], "failed_attempts": 0, "gave_up": False,
                                     "last_error": None, "input": None}
        # Packets taken in one burst, without the input running empty: how far acquisition fell behind.
        self.backlog = {"peak_packets": 0, "bursts_at_reader_limit": 0, "reader_limit": _DV_READER_QUEUE}
        self._buffer_wait_ns: deque[int] = deque(maxlen=_STAT_SAMPLES)
        self._arrival_lag_us: deque[int] = deque(maxlen=_STAT_SAMPLES)

    def produce(self) -> Iterator[tuple[str, Message]]:
        self._thread = threading.Thread(target=self._acquire, name=f"{self.name}-acquire", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self.buffer.get(timeout=0.2)
                if item is _END:
                    if isinstance(self._failure, DvSettingsError):
                        raise NodeError(f"{self.name}: {self._failure}")  # bad settings: the message, no traceback
                    if self._failure is not None:
                        raise self._failure
                    return
                if item is None:
                    continue
                stream, payload, recv_ns = item[:3]
                msg = self._convert(stream, payload)
                if msg is None:
                    continue
                self._count_emitted(stream, msg, recv_ns)  # before yielding: the runtime may stop right after
                yield stream, msg
        finally:
            self._halt.set()

    def halt(self) -> None:
        """Stop acquiring (also while waiting to reconnect); ``produce`` ends after what is buffered."""
        self._halt.set()

    def stop(self) -> None:
        self.halt()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.report({"live": self.summary()})

    def summary(self) -> dict[str, Any]:
        """Everything the report says about this source (plain data)."""
        dropped = {**self.dropped, "overflow_messages": self.buffer.dropped_messages,
                   "overflow_events": self.buffer.dropped_events}
        return {
            "received": self.received,
            "emitted": self.emitted,
            "dropped": dropped,
            "link": self.link,
            "input_backlog": self.backlog,
            "buffer": {"limit_bytes": self.buffer.max_bytes, "peak_bytes": self.buffer.peak_bytes,
                       "wait_ms": describe_ms(list(self._buffer_wait_ns))},
            "arrival_lag_ms": describe_ms(np.asarray(self._arrival_lag_us, np.int64) * 1000),
            "sensor_size": list(self.size) if self.size else None,
        }

    # -- acquisition thread ------------------------------------------------------------------------
    def _acquire(self) -> None:
        try:
            while not self._halt.is_set():
                handle = self._connect()
                if handle is None:
                    break
                streams = self._streams(handle)
                self._pump(handle, streams)
                del handle  # closes the input (a reader's socket, the camera's USB handle)
                if not self.params.reconnect:
                    break
        except Exception as exc:  # handed to produce(), which raises it: the node crashes and is restarted
            self.link["last_error"] = str(exc)
            self._failure = exc
        finally:
            self.buffer.close()

    def _connect(self) -> Any:
        """Open the input, retrying with backoff; None when halted or when ``give_up_after_s`` has passed."""
        p = self.params
        delay = p.backoff_s
        since = time.monotonic()
        while not self._halt.is_set():
            try:
                handle = self._open()
            except DvSettingsError:
                raise
            except DvIoError as exc:
                self.link["failed_attempts"] += 1
                self.link["last_error"] = str(exc)
                waited = time.monotonic() - since
                if p.give_up_after_s and waited >= p.give_up_after_s:
                    self.link["gave_up"] = True
                    self.log.error("giving up after %.1f s without a connection: %s", waited, exc)
                    return None
                if self.link["failed_attempts"] == 1 or self.link["failed_attempts"] % 10 == 0:
                    self.log.warning("cannot connect (%s); retrying in %.2f s", exc, delay)
                self._halt.wait(delay)
                delay = min(delay * 2, p.backoff_max_s)
                continue
            self._on_connected(handle, time.monotonic() - since)
            return handle
        return None

    def _on_connected(self, handle: Any, waited_s: float) -> None:
        self.link["connects"] += 1
        self.link["input"] = self._describe(handle)
        resolution = handle.getEventResolution() if handle.isEventStreamAvailable() else None
        if resolution is None and handle.isFrameStreamAvailable():
            resolution = handle.getFrameResolution()
        if resolution is not None:
            self.size = (int(resolution[0]), int(resolution[1]))
            if self.params.noise_filter_us:
                self._noise_filter = dv.noise.BackgroundActivityNoiseFilter(
                    self.size, datetime.timedelta(microseconds=self.params.noise_filter_us))
        if self.link["disconnects"]:
            last = self.link["disconnects"][-1]
            last["reconnected_after_s"] = round(waited_s, 3)
            self.log.warning("reconnected after %.2f s", waited_s)
            self.report({"link_event": {"reconnected_after_s": round(waited_s, 3)}})
        else:
            self.log.info("connected: %s", self.link["input"])

    def _pump(self, handle: Any, streams: set[str]) -> None:
        """Poll until the input stops (disconnect) or the source is halted."""
        idle_s = self.params.poll_interval_us / 1e6
        burst = 0
        try:
            while not self._halt.is_set():
                if self._poll(handle, streams):
                    burst += 1
                    self._note_backlog(burst)
                    continue
                burst = 0
                if not handle.isRunning():
                    while self._poll(handle, streams):  # what arrived before the end is still good data
                        burst += 1
                        self._note_backlog(burst)
                    self._on_disconnected("the input stopped")
                    return
                self._halt.wait(idle_s)
        except RuntimeError as exc:  # dv-processing reports a broken link (e.g. a TLS stream cut short) this way
            self._on_disconnected(f"read error: {str(exc).splitlines()[0]}")

    def _note_backlog(self, burst: int) -> None:
        """A burst of ``burst`` packets was taken without the input running empty. When it reaches the
        NetworkReader's queue limit, acquisition was that far behind (starved of CPU): dv-processing may have
        discarded newer packets, a loss nothing can count, so it is reported as such."""
        self.backlog["peak_packets"] = max(self.backlog["peak_packets"], burst)
        if burst == _DV_READER_QUEUE:
            self.backlog["bursts_at_reader_limit"] += 1
            self.log.warning("acquisition fell %d packets behind the input: dv-processing may have discarded newer "
                             "packets (is the machine overloaded?)", burst)

    def _on_disconnected(self, why: str) -> None:
        last_t = self._last_t["events"]
        record = {"at_unix_s": round(time.time(), 3), "why": why,
                  "last_event_t": int(last_t) if last_t > -1 else None, "reconnected_after_s": None}
        self.link["disconnects"].append(record)
        self.log.warning("disconnected (%s); %s", why, "reconnecting with backoff" if self.params.reconnect
                         else "reconnect is off, ending the stream")
        self.report({"link_event": {"disconnected_at_unix_s": record["at_unix_s"]}})

    def _poll(self, handle: Any, streams: set[str]) -> bool:
        """Take whatever each stream has now into the buffer, unconverted; True if anything arrived.

        The less this does, the less can be lost: dv-processing's NetworkReader queues at most 1000
        packets and silently discards newer ones while its reader is behind (measured; see
        benchmarks/RELIABILITY.md).
        """
        got = False
        recv_ns = time.monotonic_ns()
        if "events" in streams:
            store = handle.getNextEventBatch()
            if store is not None and store.size():
                n = store.size()
                self.received["event_packets"] += 1
                self.received["events"] += n
                self._arrival_lag_us.append(time.time_ns() // 1000 - store.getHighestTime())
                self.buffer.put("events", store, recv_ns, n * _EVENT_BYTES, n)
                got = True
        if "frames" in streams:
            frame = handle.getNextFrame()
            if frame is not None:
                self.received["frames"] += 1
                self.buffer.put("frames", frame, recv_ns, frame.image.nbytes)
                got = True
        if "imu" in streams:
            samples = handle.getNextImuBatch()
            if samples is not None and len(samples):
                self.received["imu_samples"] += len(samples)
                self.buffer.put("imu", samples, recv_ns, len(samples) * _IMU_BYTES)
                got = True
        if "triggers" in streams:
            triggers = handle.getNextTriggerBatch()
            if triggers is not None and len(triggers):
                counts = self.received["triggers"]
                for trigger in triggers:
                    counts[trigger.type.name] = counts.get(trigger.type.name, 0) + 1
                got = True
        return got

    # -- conversion (on the emitting thread) -------------------------------------------------------
    def _convert(self, stream: str, payload: Any) -> Message | None:
        """A dv object from the buffer -> the message to emit, after the checks; None if nothing is left."""
        if stream == "imu":
            return imu_from_dv(payload)
        if stream == "frames":
            frame = frame_from_dv(payload)
            if frame.t <= self._last_t["frames"]:
                self.dropped["frames_non_monotonic"] += 1
                return None
            self._last_t["frames"] = frame.t
            return Message.from_frame(frame)
        n = payload.size()
        if self._noise_filter is not None:
            self._noise_filter.accept(payload)
            payload = self._noise_filter.generateEvents()
            self.dropped["noise_filter"] += n - payload.size()
        events = self._checked(events_from_dv(payload))
        if not len(events):
            return None
        meta = {"width": self.size[0], "height": self.size[1]} if self.size else {}
        return Message.from_events(events, **meta)

    def _checked(self, events: Events) -> Events:
        """Drop (and count) events older than one already accepted, or outside the sensor."""
        floor = self._last_t["events"]
        running = np.maximum.accumulate(events.t)
        keep = events.t >= np.maximum(np.concatenate(([floor], running[:-1])), floor)
        self.dropped["non_monotonic"] += len(events) - int(np.count_nonzero(keep))
        if self.size is not None:
            inside = (events.x < self.size[0]) & (events.y < self.size[1])
            self.dropped["out_of_sensor"] += int(np.count_nonzero(keep & ~inside))
            keep &= inside
        if not keep.all():
            events = events[keep]
        if len(events):
            self._last_t["events"] = int(events.t[-1])
        return events

    def _count_emitted(self, port: str, msg: Message, recv_ns: int) -> None:
        self._buffer_wait_ns.append(time.monotonic_ns() - recv_ns)
        emitted = self.emitted
        emitted["messages"] += 1
        if port == "events":
            events = msg.events()
            emitted["events"] += len(events)
            emitted["events_checksum"] = (emitted["events_checksum"] + events.checksum()) % (1 << 64)
        elif port == "frames":
            emitted["frames"] += 1
        else:
            emitted["imu_messages"] += 1
