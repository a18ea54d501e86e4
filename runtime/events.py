"""In-memory event and frame containers shared by readers, kernels, nodes and the wire format.

Events are a structure of arrays (the wire layout): ``t`` int64 µs, ``x`` uint16, ``y`` uint16,
``p`` int8 with values +1 (ON) / -1 (OFF). Arrays are never copied unless a method says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EVENT_DTYPES: dict[str, np.dtype] = {
    "t": np.dtype(np.int64),
    "x": np.dtype(np.uint16),
    "y": np.dtype(np.uint16),
    "p": np.dtype(np.int8),
}

# Odd 64-bit multipliers (splitmix64 constants) for the per-event hash below.
_MIX_T = np.uint64(0x9E3779B97F4A7C15)
_MIX_X = np.uint64(0xBF58476D1CE4E5B9)
_MIX_Y = np.uint64(0x94D049BB133111EB)
_MIX_P = np.uint64(0xD6E8FEB86659FD93)


@dataclass(frozen=True)
class Events:
    """A packet of events, structure of arrays, sorted by ``t`` unless a reader says otherwise."""

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.t)
        for name, dtype in EVENT_DTYPES.items():
            arr = getattr(self, name)
            if arr.dtype != dtype or arr.ndim != 1 or len(arr) != n:
                raise ValueError(
                    f"Events.{name}: expected 1-D {dtype} of length {n}, got {arr.dtype} shape {arr.shape}"
                )

    @classmethod
    def empty(cls) -> Events:
        return cls(*(np.empty(0, dtype) for dtype in EVENT_DTYPES.values()))

    @classmethod
    def from_arrays(cls, t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray) -> Events:
        """Build from arrays of any numeric dtype; polarity 0/1 or -1/+1 becomes -1/+1."""
        p = np.asarray(p)
        pol = np.where(p > 0, 1, -1).astype(np.int8)
        return cls(
            np.ascontiguousarray(t, dtype=np.int64),
            np.ascontiguousarray(x, dtype=np.uint16),
            np.ascontiguousarray(y, dtype=np.uint16),
            pol,
        )

    @classmethod
    def concatenate(cls, packets: list[Events]) -> Events:
        if not packets:
            return cls.empty()
        return cls(*(np.concatenate([getattr(e, n) for e in packets]) for n in EVENT_DTYPES))

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, index: slice | np.ndarray) -> Events:
        return Events(self.t[index], self.x[index], self.y[index], self.p[index])

    def time_slice(self, t_start: int, t_stop: int) -> Events:
        """Events with t_start <= t < t_stop (requires sorted ``t``); a view, no copy."""
        lo, hi = np.searchsorted(self.t, [t_start, t_stop], side="left")
        return self[lo:hi]

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in EVENT_DTYPES}

    def checksum(self) -> int:
        """Order-independent 64-bit checksum: equal for the same multiset of events however packetised."""
        return events_checksum(self.t, self.x, self.y, self.p)


def events_checksum(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray) -> int:
    """Sum over events of a mixed 64-bit hash of (t, x, y, p), wrapping modulo 2**64."""
    if len(t) == 0:
        return 0
    with np.errstate(over="ignore"):
        h = t.astype(np.uint64) * _MIX_T
        h ^= x.astype(np.uint64) * _MIX_X
        h ^= y.astype(np.uint64) * _MIX_Y
        h ^= (p.astype(np.int64) + 2).astype(np.uint64) * _MIX_P
        h ^= h >> np.uint64(31)
        h *= _MIX_X
        h ^= h >> np.uint64(29)
        return int(np.add.reduce(h, dtype=np.uint64))


@dataclass(frozen=True)
class Frame:
    """An intensity frame: ``image`` uint8 or float32, (H, W) gray or (H, W, 3) colour.

    ``t`` is the exposure midpoint in µs; ``exposure_us`` 0 when unknown.
    """

    image: np.ndarray
    t: int
    exposure_us: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def exposure_start(self) -> int:
        return self.t - self.exposure_us // 2

    @property
    def exposure_end(self) -> int:
        return self.t + (self.exposure_us - self.exposure_us // 2)


@dataclass(frozen=True)
class Imu:
    """IMU samples: ``t`` int64 µs (N,), ``accel`` float32 (N, 3) in g, ``gyro`` float32 (N, 3) in deg/s."""

    t: np.ndarray
    accel: np.ndarray
    gyro: np.ndarray


@dataclass(frozen=True)
class Triggers:
    """External trigger edges (a camera's sync input): ``t`` int64 µs (N,), ``edge`` uint8 (N,) 1 rising /
    0 falling, ``channel`` uint8 (N,) the trigger input."""

    t: np.ndarray
    edge: np.ndarray
    channel: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.t)
        for name, dtype in TRIGGER_DTYPES.items():
            arr = getattr(self, name)
            if arr.dtype != dtype or arr.ndim != 1 or len(arr) != n:
                raise ValueError(
                    f"Triggers.{name}: expected 1-D {dtype} of length {n}, got {arr.dtype} shape {arr.shape}"
                )

    @classmethod
    def empty(cls) -> Triggers:
        return cls(*(np.empty(0, dtype) for dtype in TRIGGER_DTYPES.values()))

    @classmethod
    def concatenate(cls, batches: list[Triggers]) -> Triggers:
        if not batches:
            return cls.empty()
        return cls(*(np.concatenate([getattr(b, n) for b in batches]) for n in TRIGGER_DTYPES))

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, index: slice | np.ndarray) -> Triggers:
        return Triggers(self.t[index], self.edge[index], self.channel[index])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in TRIGGER_DTYPES}


TRIGGER_DTYPES: dict[str, np.dtype] = {"t": np.dtype(np.int64), "edge": np.dtype(np.uint8),
                                       "channel": np.dtype(np.uint8)}
