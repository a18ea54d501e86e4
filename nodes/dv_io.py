"""dv-processing I/O shared by the camera source, the DV network source and the DV network sink.

* **Addresses.** A DV network stream is ``tcp://HOST:PORT`` or ``unix:///path/to/socket``
  (`parse_address`). TLS applies to TCP only: the server holds a certificate chain, its private key
  and the CA file its clients' certificates must be signed by; a client presents its own chain and
  key. dv-processing 2.0.4's ``NetworkReader`` takes no CA file, so a client does not verify the
  server — the server authenticates clients.
* **Conversions** between dv-processing's containers and evpipe's: `events_from_dv` / `events_to_dv`
  (``EventStore`` <-> `Events`, polarity bool <-> ±1), `frame_from_dv` / `frame_to_dv` (DV stamps a
  frame at its exposure start and stores colour as BGR; evpipe stamps the exposure midpoint and
  stores RGB), `imu_from_dv` / `imu_to_dv` (IMU messages: ``t`` int64 (N,) µs, ``accel`` float32
  (N, 3) in g, ``gyro`` float32 (N, 3) in deg/s).
* **Two dv-processing 2.0.4 hazards**, measured here and worked around:

  1. ``NetworkReader(...)`` blocks, holding the GIL, until the server's stream header arrives; a
     plain client talking to a TLS server never gets one and hangs the whole process. `probe_server`
     therefore checks the header with Python sockets (with a timeout) before dv-processing connects.
  2. Destroying a ``NetworkWriter`` while a client is connected deadlocks: its I/O thread needs the
     GIL to run the error callback while the destructor, holding the GIL, joins that thread.
     `retire_writer` keeps such a writer alive until the process exits, when the kernel closes its
     sockets.
"""

from __future__ import annotations

import ctypes
import datetime
import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

import dv_processing as dv
import numpy as np

from evpipe.runtime.events import Events, Frame
from evpipe.runtime.wire import Message, Trace

# DV stream type identifiers (the flatbuffer identifiers in a stream definition) -> evpipe port kind.
STREAM_KINDS = {"EVTS": "events", "FRME": "frame", "IMUS": "imu", "TRIG": "trigger"}
_HEADER_ID = b"IOHE"  # identifier of the IOHeader a DV server sends first on every connection


class DvIoError(RuntimeError):
    """A DV stream or camera cannot be opened or used; the message says what to check."""


class DvSettingsError(DvIoError):
    """Settings the input rejects: retrying cannot help, so a source stops with this message."""


@dataclass(frozen=True)
class DvAddress:
    """Where a DV network stream lives: ``scheme`` "tcp" (``host``, ``port``) or "unix" (``path``)."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"tcp://{self.host}:{self.port}" if self.scheme == "tcp" else f"unix://{self.path}"


def parse_address(text: str) -> DvAddress:
    """``tcp://HOST:PORT`` or ``unix:///absolute/path`` -> `DvAddress`; ValueError says what is wrong."""
    if not isinstance(text, str) or "://" not in text:
        raise ValueError(f"{text!r} is not a DV stream address; use tcp://HOST:PORT or unix:///path/to/socket")
    scheme, rest = text.split("://", 1)
    if scheme == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"{text!r}: a UNIX socket address needs an absolute path (unix:///tmp/dv.sock)")
        return DvAddress("unix", path=rest)
    if scheme != "tcp":
        raise ValueError(f"{text!r}: unknown scheme {scheme!r}; use tcp:// or unix://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected tcp://HOST:PORT with a port in 1..65535")
    return DvAddress("tcp", host=host.strip("[]"), port=int(port))


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS link: a certificate chain and its private key, plus (servers) the clients' CA."""

    cert: str
    key: str
    ca: str | None = None


def tls_files(cert: str | None, key: str | None, ca: str | None = None, *, server: bool) -> TlsFiles | None:
    """Validated TLS settings from node parameters, or None for a plain link; ValueError names the problem."""
    given = {"tls_cert": cert, "tls_key": key, **({"tls_ca": ca} if server else {})}
    if not any(given.values()):
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ValueError(f"TLS needs {', '.join(given)} together; missing {', '.join(missing)}")
    for name, value in given.items():
        if not Path(value).is_file():
            raise ValueError(f"parameter {name!r}: {value} is not a file")
    return TlsFiles(cert, key, ca)


# ------------------------------------------------------------------------------------ connecting


def probe_server(address: DvAddress, tls: TlsFiles | None, timeout_s: float) -> None:
    """Connect with Python sockets and wait for the DV stream header; DvIoError says why there is none.

    This is what makes opening a `NetworkReader` safe (see the module docstring, hazard 1).
    """
    family = socket.AF_UNIX if address.scheme == "unix" else socket.AF_INET
    target = address.path if address.scheme == "unix" else (address.host, address.port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(target)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # as dv-processing's reader: the server checks the client
            context.load_cert_chain(tls.cert, tls.key)
            sock = context.wrap_socket(sock)
        head = b""
        while len(head) < 12:
            chunk = sock.recv(12 - len(head))
            if not chunk:
                raise DvIoError(f"{address}: the server closed the connection before sending a stream header"
                                + ("" if tls else " (does it expect TLS? set tls_cert and tls_key)"))
            head += chunk
    except TimeoutError:
        hint = " (it may expect TLS: set tls_cert and tls_key)" if tls is None else ""
        raise DvIoError(f"{address}: no DV stream header within {timeout_s:g} s{hint}") from None
    except ssl.SSLError as exc:
        raise DvIoError(f"{address}: TLS handshake failed ({exc.reason or exc}); check that the server uses TLS "
                        "and accepts this client certificate") from None
    except OSError as exc:
        raise DvIoError(f"{address}: cannot connect ({exc.strerror or exc})") from None
    finally:
        sock.close()
    if head[8:12] != _HEADER_ID:
        raise DvIoError(f"{address}: the server is not a DV stream (no IOHeader; first bytes {head.hex()})")
    (length,) = struct.unpack("<I", head[:4])
    if length > 1 << 20:
        raise DvIoError(f"{address}: implausible DV stream header of {length} bytes")


def open_reader(address: DvAddress, tls: TlsFiles | None, timeout_s: float) -> dv.io.NetworkReader:
    """A connected `NetworkReader` (probed first); DvIoError when the server is absent or incompatible."""
    probe_server(address, tls, timeout_s)
    try:
        if address.scheme == "unix":
            return dv.io.NetworkReader(dv.Path(address.path))
        if tls is not None:
            return dv.io.NetworkReader(address.host, address.port, dv.Path(tls.cert), dv.Path(tls.key))
        return dv.io.NetworkReader(address.host, address.port)
    except RuntimeError as exc:
        raise DvIoError(f"{address}: {str(exc).splitlines()[0]}") from None


def stream_kind(reader: dv.io.NetworkReader) -> str:
    """The evpipe kind of the one stream a DV network server serves ("events", "frame", "imu", "trigger")."""
    type_id = reader.getStreamDefinition().mTypeIdentifier
    if type_id not in STREAM_KINDS:
        raise DvIoError(f"unsupported DV stream type {type_id!r} (supported: {', '.join(STREAM_KINDS)})")
    return STREAM_KINDS[type_id]


def free_stale_socket(path: str) -> None:
    """Remove a UNIX socket file nobody listens on (left by a crashed server), so a new server can bind.

    A regular file, or a socket that still accepts connections, is left alone (DvIoError).
    """
    target = Path(path)
    if not target.exists():
        return
    if not target.is_socket():
        raise DvIoError(f"unix://{path}: the path exists and is not a socket; choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        target.unlink()  # stale: its server is gone
        return
    finally:
        probe.close()
    raise DvIoError(f"unix://{path}: another server is listening on this socket")


def retire_writer(writer: dv.io.NetworkWriter) -> None:
    """Keep ``writer`` alive until the process exits instead of destroying it (hazard 2).

    An extra reference that is never released: the object survives interpreter shutdown too (where
    destruction would deadlock the same way), and the kernel closes its sockets at exit.
    """
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(writer))


# ---------------------------------------------------------------------------------- conversions


def events_from_dv(store: dv.EventStore) -> Events:
    """A dv ``EventStore`` -> `Events` (copied out of dv-processing's memory)."""
    a = store.numpy()
    return Events(np.ascontiguousarray(a["timestamp"], np.int64), a["x"].astype(np.uint16),
                  a["y"].astype(np.uint16), np.where(a["polarity"], 1, -1).astype(np.int8))


def events_to_dv(events: Events) -> dv.EventStore:
    """`Events` -> a new dv ``EventStore`` (a fresh store, never a slice of another: see the data README)."""
    store = dv.EventStore()
    push = store.push_back
    for row in zip(events.t.tolist(), events.x.tolist(), events.y.tolist(), (events.p > 0).tolist(), strict=True):
        push(*row)
    return store


def frame_from_dv(frame: dv.Frame) -> Frame:
    """A dv ``Frame`` -> `Frame`: t at the exposure midpoint, gray (H, W) or RGB (H, W, 3) uint8."""
    exposure = frame.exposure // datetime.timedelta(microseconds=1)
    image = np.array(frame.image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        image = np.ascontiguousarray(image[:, :, 2::-1])  # BGR(A) -> RGB
    return Frame(image, int(frame.timestamp) + exposure // 2, exposure)


def frame_to_dv(frame: Frame, source: dv.FrameSource) -> dv.Frame:
    """`Frame` -> a dv ``Frame`` (stamped at exposure start; float images in [0, 1] become uint8; RGB -> BGR)."""
    image = frame.image
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if image.ndim == 3:
        image = image[:, :, ::-1]
    return dv.Frame(frame.exposure_start, frame.exposure_us, 0, 0, np.ascontiguousarray(image), source)


def imu_from_dv(samples: dv.IMUPacket.ImuVector) -> Message:
    """A dv IMU batch -> an ``imu`` message (t µs, accel in g, gyro in deg/s)."""
    t = np.array([s.timestamp for s in samples], np.int64)
    accel = np.array([(s.accelerometerX, s.accelerometerY, s.accelerometerZ) for s in samples], np.float32)
    gyro = np.array([(s.gyroscopeX, s.gyroscopeY, s.gyroscopeZ) for s in samples], np.float32)
    return imu_message(t, accel.reshape(-1, 3), gyro.reshape(-1, 3))


def imu_message(t: np.ndarray, accel: np.ndarray, gyro: np.ndarray) -> Message:
    """An ``imu`` message from ``t`` int64 (N,) µs, ``accel`` float32 (N, 3) g, ``gyro`` float32 (N, 3) deg/s."""
    t_range = (int(t[0]), int(t[-1])) if len(t) else (0, 0)
    return Message("imu", {"t": t, "accel": accel, "gyro": gyro}, {}, t_range, Trace(sensor_t=t_range[1]))


def imu_to_dv(msg: Message) -> dv.IMUPacket.ImuVector:
    """An ``imu`` message -> a dv IMU batch (temperature and magnetometer 0: evpipe does not carry them)."""
    samples = dv.IMUPacket.ImuVector()
    a = msg.arrays
    for t, (ax, ay, az), (gx, gy, gz) in zip(a["t"].tolist(), a["accel"].tolist(), a["gyro"].tolist(), strict=True):
        samples.append(dv.IMU(t, 0.0, ax, ay, az, gx, gy, gz, 0.0, 0.0, 0.0))
    return samples
