"""Wire format: one ZeroMQ multipart per message.

Frame 0 is a msgpack header; frames 1..n are the raw bytes of the message's arrays, sent without
copies. No pickle anywhere. The header is checked against the buffers and the configured
:class:`Limits` before any array is built, so a hostile or broken peer cannot make a node allocate.

Header fields::

    v       format version (1)
    kind    one of KINDS
    stream  name of the producing port ("node.port")
    seq     per-edge sequence number (consumers detect gaps)
    t0, t1  sensor time range covered, µs
    meta    small dict of kind-specific scalars (e.g. exposure_us, t_anchor)
    arrays  [[name, dtype, shape], ...] one per following frame
    trace   {"sensor_t": µs, "emit_ns": monotonic ns, "hops": [[node, in_ns, out_ns], ...]}
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from evpipe.runtime.events import EVENT_DTYPES, TRIGGER_DTYPES, Events, Frame, Triggers

VERSION = 1
KINDS = ("events", "frame", "voxel", "imu", "triggers", "control")
ALLOWED_DTYPES = frozenset(
    {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"}
)


class WireError(ValueError):
    """A message that does not follow the wire format or exceeds the configured limits."""


@dataclass(frozen=True)
class Limits:
    """Upper bounds checked on every received message (all configurable per graph)."""

    max_message_bytes: int = 1 << 30
    max_header_bytes: int = 64 << 10
    max_arrays: int = 16
    max_ndim: int = 5
    max_events: int = 50_000_000
    max_hops: int = 64
    max_control_per_s: int = 100  # control messages per second per edge; more are rejected and counted


@dataclass
class Trace:
    """Where a message's data came from and when: the basis of every latency number.

    ``sensor_t`` is the sensor time (µs) of the newest input event; ``emit_ns`` the monotonic time
    the source made it available; each node appends ``(node, in_ns, out_ns)``.
    """

    sensor_t: int = 0
    emit_ns: int = 0
    hops: list[tuple[str, int, int]] = field(default_factory=list)

    def extended(self, node: str, in_ns: int, out_ns: int) -> Trace:
        return Trace(self.sensor_t, self.emit_ns, [*self.hops, (node, in_ns, out_ns)])


@dataclass
class Message:
    """A unit of data between nodes: named arrays plus a small header."""

    kind: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    t_range: tuple[int, int] = (0, 0)
    trace: Trace = field(default_factory=Trace)
    stream: str = ""
    seq: int = 0

    # -- construction from domain objects --------------------------------------------------------
    @classmethod
    def from_events(cls, events: Events, **meta: Any) -> Message:
        t_range = (int(events.t[0]), int(events.t[-1])) if len(events) else (0, 0)
        return cls("events", events.arrays(), meta, t_range, Trace(sensor_t=t_range[1]))

    @classmethod
    def from_frame(cls, frame: Frame, **meta: Any) -> Message:
        meta = {"t": frame.t, "exposure_us": frame.exposure_us, **frame.meta, **meta}
        return cls("frame", {"image": frame.image}, meta, (frame.exposure_start, frame.exposure_end),
                   Trace(sensor_t=frame.t))

    @classmethod
    def from_triggers(cls, triggers: Triggers, **meta: Any) -> Message:
        """External trigger edges: arrays ``t`` int64 µs, ``edge`` uint8 (1 rising, 0 falling), ``channel`` uint8."""
        t_range = (int(triggers.t[0]), int(triggers.t[-1])) if len(triggers) else (0, 0)
        return cls("triggers", triggers.arrays(), meta, t_range, Trace(sensor_t=t_range[1]))

    @classmethod
    def control(cls, command: str, **meta: Any) -> Message:
        return cls("control", {}, {"command": command, **meta})

    # -- views back into domain objects ----------------------------------------------------------
    def events(self) -> Events:
        return Events(**{name: self.arrays[name] for name in EVENT_DTYPES})

    def triggers(self) -> Triggers:
        return Triggers(**{name: self.arrays[name] for name in TRIGGER_DTYPES})

    def frame(self) -> Frame:
        meta = {k: v for k, v in self.meta.items() if k not in ("t", "exposure_us")}
        return Frame(self.arrays["image"], int(self.meta["t"]), int(self.meta.get("exposure_us", 0)), meta)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


# dtype objects by name, built once: np.dtype(name) per array per message is measurable overhead.
_DTYPES = {name: np.dtype(name) for name in ALLOWED_DTYPES}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_EVENT_DTYPES_BY_NAME = {name: dt.name for name, dt in EVENT_DTYPES.items()}


def encode(msg: Message) -> list[Any]:
    """Message -> multipart frames: header bytes, then each array's buffer (no copy when contiguous)."""
    buffers = []
    specs = []
    for name, arr in msg.arrays.items():
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        # dtype.name is slow (it formats a string each call); the allowed names are cached.
        specs.append([name, _DTYPE_NAMES.get(arr.dtype) or arr.dtype.name, list(arr.shape)])
        buffers.append(arr.data if arr.size else b"")
    header = {
        "v": VERSION,
        "kind": msg.kind,
        "stream": msg.stream,
        "seq": msg.seq,
        "t0": int(msg.t_range[0]),
        "t1": int(msg.t_range[1]),
        "meta": msg.meta,
        "arrays": specs,
        "trace": {"sensor_t": msg.trace.sensor_t, "emit_ns": msg.trace.emit_ns, "hops": msg.trace.hops},
    }
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def _is_int(v: Any) -> bool:
    return type(v) is int




def decode(frames: Sequence[Any], limits: Limits = Limits()) -> Message:
    """Multipart frames (bytes, memoryview or zmq.Frame) -> Message, validating before building arrays.

    Arrays are read-only views into the received buffers. This is the hot path of every edge:
    checks are plain comparisons and error text is only built when a check fails.
    """
    if not frames:
        raise WireError("empty multipart message")
    raw = [f.buffer if hasattr(f, "buffer") else f for f in frames]
    header_bytes = raw[0]
    if len(header_bytes) > limits.max_header_bytes:
        raise WireError(f"header of {len(header_bytes)} bytes exceeds max_header_bytes={limits.max_header_bytes}")
    total = sum(len(b) for b in raw)
    if total > limits.max_message_bytes:
        raise WireError(f"message of {total} bytes exceeds max_message_bytes={limits.max_message_bytes}")
    try:
        header = msgpack.unpackb(header_bytes, raw=False, strict_map_key=True, max_array_len=4096, max_map_len=256)
    except Exception as exc:  # msgpack raises several unrelated types for garbage input
        raise WireError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise WireError("header is not a map")
    if header.get("v") != VERSION:
        raise WireError(f"unsupported wire version {header.get('v')!r}")
    kind = header.get("kind")
    if kind not in KINDS:
        raise WireError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    for key in ("seq", "t0", "t1"):
        if not _is_int(header.get(key)):
            raise WireError(f"header field {key!r} must be an integer")
    if not isinstance(header.get("stream"), str):
        raise WireError("header field 'stream' must be a string")
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise WireError("header field 'meta' must be a map")
    trace = _decode_trace(header.get("trace"), limits)

    specs = header.get("arrays")
    if not isinstance(specs, list):
        raise WireError("header field 'arrays' must be a list")
    if len(specs) > limits.max_arrays:
        raise WireError(f"{len(specs)} arrays exceed max_arrays={limits.max_arrays}")
    if len(specs) != len(raw) - 1:
        raise WireError(f"header names {len(specs)} arrays but {len(raw) - 1} buffers follow")
    arrays: dict[str, np.ndarray] = {}
    for spec, buf in zip(specs, raw[1:], strict=True):
        if not (isinstance(spec, list) and len(spec) == 3):
            raise WireError(f"bad array spec {spec!r}")
        name, dtype_name, shape = spec
        if not isinstance(name, str) or name in arrays:
            raise WireError(f"bad or duplicate array name {name!r}")
        dtype = _DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise WireError(f"array {name!r}: dtype {dtype_name!r} not allowed")
        if not (isinstance(shape, list) and len(shape) <= limits.max_ndim
                and all(_is_int(s) and s >= 0 for s in shape)):
            raise WireError(f"array {name!r}: bad shape {shape!r}")
        expected = math.prod(shape) * dtype.itemsize
        if expected != len(buf):
            raise WireError(f"array {name!r}: shape {shape} {dtype_name} needs {expected} bytes, got {len(buf)}")
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape) if expected else np.empty(shape, dtype)
    if kind == "events":
        _check_events(specs, limits)
    elif kind == "triggers":
        _check_triggers(specs)
    return Message(kind, arrays, meta, (header["t0"], header["t1"]), trace, header["stream"], header["seq"])


def _decode_trace(trace: Any, limits: Limits) -> Trace:
    if not isinstance(trace, dict):
        raise WireError("header field 'trace' must be a map")
    sensor_t, emit_ns, hops = trace.get("sensor_t"), trace.get("emit_ns"), trace.get("hops")
    if not (_is_int(sensor_t) and _is_int(emit_ns)):
        raise WireError("trace needs integer sensor_t and emit_ns")
    if not (isinstance(hops, list) and len(hops) <= limits.max_hops):
        raise WireError("trace hops must be a list of at most max_hops entries")
    for hop in hops:
        if not (isinstance(hop, list) and len(hop) == 3 and isinstance(hop[0], str)
                and _is_int(hop[1]) and _is_int(hop[2])):
            raise WireError(f"bad trace hop {hop!r}")
    return Trace(sensor_t, emit_ns, [tuple(h) for h in hops])


def _check_events(specs: list[list[Any]], limits: Limits) -> None:
    """Events: arrays t, x, y, p, 1-D, of the wire dtypes and one length (checked on the specs)."""
    by_name = {name: (dtype, shape) for name, dtype, shape in specs}
    n = None
    for name, dtype_name in _EVENT_DTYPES_BY_NAME.items():
        dtype, shape = by_name.get(name, (None, None))
        if dtype != dtype_name or len(shape) != 1 or (n is not None and shape[0] != n):
            raise WireError(f"events message needs 1-D arrays t int64, x uint16, y uint16, p int8 of one length; "
                            f"{name!r} is {dtype} {shape}")
        n = shape[0]
    if n > limits.max_events:
        raise WireError(f"{n} events exceed max_events={limits.max_events}")


def _check_triggers(specs: list[list[Any]]) -> None:
    """Triggers: arrays t, edge, channel, 1-D, of the wire dtypes and one length."""
    by_name = {name: (dtype, shape) for name, dtype, shape in specs}
    n = None
    for name, dtype_want in TRIGGER_DTYPES.items():
        dtype, shape = by_name.get(name, (None, None))
        if dtype != dtype_want.name or len(shape) != 1 or (n is not None and shape[0] != n):
            raise WireError(f"triggers message needs 1-D arrays t int64, edge uint8, channel uint8 of one length; "
                            f"{name!r} is {dtype} {shape}")
        n = shape[0]


def now_ns() -> int:
    """Monotonic clock shared by all processes of one host (CLOCK_MONOTONIC)."""
    return time.monotonic_ns()
