"""Recorders write each stream in sensor-time order: an item that would go back in time is dropped and counted."""

from __future__ import annotations

import numpy as np


class StreamOrder:
    """The last sensor time written on each stream, and how many items were dropped for going back in time."""

    def __init__(self) -> None:
        self.last_t: dict[str, int] = {}
        self.dropped = 0

    def keep(self, stream: str, t: np.ndarray) -> np.ndarray:
        """Mask of the items of ``stream`` (int64 µs times ``t``) not older than the last one written on it nor
        than an earlier item of ``t``; the others are counted in :attr:`dropped`."""
        last = self.last_t.get(stream, np.iinfo(np.int64).min)
        floor = np.maximum.accumulate(np.concatenate(([last], t)))
        keep = t >= floor[:-1]
        self.dropped += int(len(t) - np.count_nonzero(keep))
        if keep.any():
            self.last_t[stream] = int(t[keep][-1])
        return keep
