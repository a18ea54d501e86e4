"""The DV network source: a stream from DV software or any dv-processing ``io.NetworkWriter``."""

from __future__ import annotations

from typing import Any

from evpipe.nodes.dv_io import open_reader, parse_address, stream_kind, tls_files
from evpipe.nodes.sources.live import LiveSource
from evpipe.runtime.node import NodeError, Spec

_PORT_OF_KIND = {"events": "events", "frame": "frames", "imu": "imu", "trigger": "triggers"}


class DvNetworkSource(LiveSource):
    """Reads one DV network stream (TCP, UNIX socket, or TLS over TCP) and emits it as a live source.

    A DV server serves one stream per address (DV's network output modules, or an ``io.NetworkWriter``
    built for one stream type): connect one source per stream, e.g. one for events and one for the
    frames of a DAVIS. The stream's type decides the output port: events on ``events`` (meta ``width``,
    ``height`` from the stream's resolution), frames on ``frames``, IMU on ``imu``; a trigger stream is
    read and counted. Timestamps stay DV's absolute Unix µs.

    Acquisition runs on its own thread with a bounded buffer, the stream is checked (time order,
    sensor bounds), optionally noise-filtered, and a lost connection is reconnected with backoff:
    see `evpipe.nodes.sources.live`. The report (``live``) counts everything received, emitted and
    dropped, the link history, buffer waits and the arrival lag.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        super().setup(spec)
        spec.param("address", str, doc="tcp://HOST:PORT or unix:///path/to/socket of the DV stream")
        spec.param("tls_cert", str, None, "client certificate chain (PEM) for a TLS server; with tls_key")
        spec.param("tls_key", str, None, "private key (PEM) of tls_cert")
        spec.param("connect_timeout_s", float, 2.0, "how long to wait for the server's stream header",
                   minimum=0.01)

    def start(self) -> None:
        super().start()
        p = self.params
        try:
            self.address = parse_address(p.address)
        except ValueError as exc:
            raise NodeError(f"{self.name}: parameter 'address': {exc}") from None
        try:
            self.tls = tls_files(p.tls_cert, p.tls_key, server=False)
        except ValueError as exc:
            raise NodeError(f"{self.name}: {exc}") from None
        if self.tls is not None and self.address.scheme != "tcp":
            raise NodeError(f"{self.name}: TLS is available on tcp:// addresses only, not {self.address}")

    def _open(self) -> Any:
        reader = open_reader(self.address, self.tls, self.params.connect_timeout_s)
        self.kind = stream_kind(reader)  # before any data: an unsupported stream type fails here
        return reader

    def _streams(self, handle: Any) -> set[str]:
        return {_PORT_OF_KIND[self.kind]}

    def _describe(self, handle: Any) -> dict[str, Any]:
        definition = handle.getStreamDefinition()
        resolution = definition.getResolution()
        return {"address": str(self.address), "tls": self.tls is not None, "stream": definition.mName,
                "kind": self.kind, "camera": handle.getCameraName(),
                "resolution": list(resolution) if resolution is not None else None}

