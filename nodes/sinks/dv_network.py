"""The DV network sink: a graph's events, frames and IMU served to DV's GUI (or any ``io.NetworkReader``)."""

from __future__ import annotations

import resource
import time
from typing import Any

import dv_processing as dv
import numpy as np

from evpipe.nodes.dv_io import (
    DvIoError,
    events_to_dv,
    frame_to_dv,
    free_stale_socket,
    imu_to_dv,
    parse_address,
    retire_writer,
    tls_files,
)
from evpipe.runtime.node import Node, NodeError, Spec
from evpipe.runtime.wire import Message

_FRAME_SOURCES = {"sensor": dv.FrameSource.SENSOR, "reconstruction": dv.FrameSource.RECONSTRUCTION,
                  "synthetic": dv.FrameSource.SYNTHETIC, "accumulation": dv.FrameSource.ACCUMULATION,
                  "visualization": dv.FrameSource.VISUALIZATION, "other": dv.FrameSource.OTHER}
_PORTS = ("events", "frames", "imu")
# A client counts once it has stayed connected this long: evpipe's own DV source opens a short probe
# connection (see `evpipe.nodes.dv_io.probe_server`) before its real one.
_CLIENT_SETTLE_S = 0.3


class DvNetworkSink(Node):
    """Serves what arrives on ``events``, ``frames`` and ``imu`` as DV network streams, one per address.

    DV serves one stream per server socket, so each input has its own address parameter
    (``tcp://HOST:PORT`` or ``unix:///path``; TLS on TCP with ``tls_cert``, ``tls_key`` and ``tls_ca``,
    the CA that clients' certificates must be signed by). In DV's GUI add a network input module per
    stream and point it at the address. Frames are sent stamped at their exposure start, as DV
    expects; float images in [0, 1] (e.g. predictions) are sent as uint8, tagged ``frame_source``.

    Writing never blocks, so a viewer never stalls the graph. dv-processing's writer queues packets
    for its I/O thread; past ``max_queued_packets`` queued packets the sink drops what arrives
    (counted per stream). That bounds the shared queue when the I/O thread falls behind, but not a
    client that stops reading: dv-processing moves packets from that queue into per-client buffers
    that grow without a bound evpipe can see or set (measured in benchmarks/RELIABILITY.md), so the
    report gives the sink's peak memory. Events outside ``sensor_size`` and frames of another size
    are dropped and counted (a DV viewer sizes its canvas from the stream). Packets written while no
    client is connected are discarded by dv-processing; ``wait_for_clients`` holds the graph's start
    until that many clients are connected to every configured stream.

    Report (``dv_network``): per stream packets/events written, dropped (queue full, out of sensor,
    bad frame shape), the largest writer queue seen, clients at the end, the process's peak resident
    memory (``peak_rss_mb``), and the time per event spent
converting to dv-processing's store and queueing it (dv-processing has no bulk constructor from
arrays, so events are appended one by one: this bounds the event rate the sink can serve).
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("events", "events", "event packets to serve")
        spec.input("frames", "frame", "frames to serve (gray or RGB, uint8 or float in [0, 1])")
        spec.input("imu", "imu", "IMU samples to serve")
        spec.param("events_address", str, None, "serve events here: tcp://HOST:PORT or unix:///path")
        spec.param("frames_address", str, None, "serve frames here")
        spec.param("imu_address", str, None, "serve IMU samples here")
        spec.param("sensor_size", list, None, "[width, height] of the events and frames (required for those streams)")
        spec.param("camera_name", str, "evpipe", "source name DV shows for these streams")
        spec.param("frame_source", str, "sensor", "what the frames are, as DV labels them",
                   choices=list(_FRAME_SOURCES))
        spec.param("tls_cert", str, None, "server certificate chain (PEM): serve TCP streams over TLS")
        spec.param("tls_key", str, None, "private key (PEM) of tls_cert")
        spec.param("tls_ca", str, None, "CA certificate (PEM) that clients' certificates must be signed by")
        spec.param("max_clients", int, 10, "clients each stream accepts", minimum=1)
        spec.param("max_queued_packets", int, 64, "per stream: drop new packets while this many wait to be sent",
                   minimum=1)
        spec.param("wait_for_clients", int, 0, "hold the graph's start until this many clients are connected to "
                   "every stream", minimum=0)
        spec.param("wait_timeout_s", float, 60.0, "how long wait_for_clients may hold the start", minimum=0.0)

    def start(self) -> None:
        p = self.params
        addresses = {port: getattr(p, f"{port}_address") for port in _PORTS if getattr(p, f"{port}_address")}
        if not addresses:
            self._fail("set at least one of events_address, frames_address, imu_address")
        self.size: tuple[int, int] | None = None
        if addresses.keys() & {"events", "frames"}:
            size = p.sensor_size
            if size is None or len(size) != 2 or not all(isinstance(v, int) and 0 < v < 65536 for v in size):
                self._fail(f"parameter 'sensor_size' must be [width, height] (positive integers) to serve events "
                           f"or frames, got {size!r}")
            self.size = (size[0], size[1])
        try:
            tls = tls_files(p.tls_cert, p.tls_key, p.tls_ca, server=True)
            where = {port: parse_address(text) for port, text in addresses.items()}
        except ValueError as exc:
            self._fail(str(exc))
        self.writers: dict[str, dv.io.NetworkWriter] = {}
        self.counts = {port: {"packets": 0, "events": 0, "dropped_queue_full": 0, "dropped_out_of_sensor": 0,
                              "dropped_bad_shape": 0, "peak_queue": 0} for port in addresses}
        self.unserved = {port: 0 for port in _PORTS if port not in addresses}
        self.events_write_ns = 0  # converting and queueing events for dv-processing
        for port, address in where.items():
            if tls is not None and address.scheme != "tcp":
                self._fail(f"{port}_address {address}: TLS is available on tcp:// addresses only")
            try:
                self.writers[port] = self._writer(port, address, tls)
            except (DvIoError, RuntimeError) as exc:
                self._fail(f"{port}_address {address}: cannot serve there ({str(exc).splitlines()[0]})")
        self.log.info("serving %s", ", ".join(f"{port} on {where[port]}" for port in self.writers))
        if p.wait_for_clients:
            self._wait_for_clients()

    def _writer(self, port: str, address: Any, tls: Any) -> dv.io.NetworkWriter:
        p = self.params
        if port == "events":
            stream = dv.io.Stream.EventStream(0, "events", p.camera_name, self.size)
        elif port == "frames":
            stream = dv.io.Stream.FrameStream(0, "frames", p.camera_name, self.size)
        else:
            stream = dv.io.Stream.IMUStream(0, "imu", p.camera_name)
        if address.scheme == "unix":
            free_stale_socket(address.path)
            return dv.io.NetworkWriter(dv.Path(address.path), stream, p.max_clients)
        if tls is not None:
            return dv.io.NetworkWriter(address.host, address.port, stream, dv.Path(tls.cert), dv.Path(tls.key),
                                       dv.Path(tls.ca), p.max_clients)
        return dv.io.NetworkWriter(address.host, address.port, stream, p.max_clients)

    def _wait_for_clients(self) -> None:
        """Return once every writer has had ``wait_for_clients`` clients for `_CLIENT_SETTLE_S`."""
        p = self.params
        deadline = time.monotonic() + p.wait_timeout_s
        since = None
        while time.monotonic() < deadline:
            if all(w.getClientCount() >= p.wait_for_clients for w in self.writers.values()):
                since = since or time.monotonic()
                if time.monotonic() - since >= _CLIENT_SETTLE_S:
                    return
            else:
                since = None
            time.sleep(0.005)
        self.log.warning("starting with fewer than %d clients after %.0f s", p.wait_for_clients, p.wait_timeout_s)

    def _fail(self, message: str) -> None:
        for writer in getattr(self, "writers", {}).values():
            retire_writer(writer)
        raise NodeError(f"{self.name}: {message}")

    def process(self, port: str, msg: Message) -> None:
        writer = self.writers.get(port)
        if writer is None:
            if not self.unserved[port]:
                self.log.warning("input %r receives data but %s_address is not set; it is dropped", port, port)
            self.unserved[port] += 1
            return
        counts = self.counts[port]
        queued = writer.getQueuedPacketCount()
        counts["peak_queue"] = max(counts["peak_queue"], queued)
        if queued >= self.params.max_queued_packets:
            counts["dropped_queue_full"] += 1
            return
        if port == "events":
            events = msg.events()
            inside = (events.x < self.size[0]) & (events.y < self.size[1])
            if not inside.all():
                counts["dropped_out_of_sensor"] += int(np.count_nonzero(~inside))
                events = events[inside]
            if not len(events):
                return
            t0 = time.perf_counter_ns()
            writer.writeEvents(events_to_dv(events))
            self.events_write_ns += time.perf_counter_ns() - t0
            counts["events"] += len(events)
        elif port == "frames":
            frame = msg.frame()
            if frame.image.shape[:2] != (self.size[1], self.size[0]) or frame.image.ndim not in (2, 3):
                counts["dropped_bad_shape"] += 1
                return
            writer.writeFrame(frame_to_dv(frame, _FRAME_SOURCES[self.params.frame_source]))
        else:
            writer.writeImu(imu_to_dv(msg))
        counts["packets"] += 1

    def stop(self) -> None:
        writers = getattr(self, "writers", {})
        deadline = time.monotonic() + 5.0  # let connected clients receive what was written
        while any(w.getClientCount() and w.getQueuedPacketCount() for w in writers.values()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        events = sum(c["events"] for c in getattr(self, "counts", {}).values())
        report = {"streams": getattr(self, "counts", {}), "unserved": getattr(self, "unserved", {}),
                  "clients": {port: w.getClientCount() for port, w in writers.items()},
                  "write_us_per_event": self.events_write_ns / events / 1e3 if events else None,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        for writer in writers.values():
            retire_writer(writer)
        self.report({"dv_network": report})
