"""Per-node message counters in a memory-mapped file.

Each node incarnation counts into its own small file in the run directory. The counts survive a
``kill -9`` (the pages belong to the file, not the process), so after a crash the supervisor
knows exactly what the dead incarnation had sent and processed, and the loss on each edge is
exact rather than estimated from the last periodic report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IN_FIELDS = ("received", "processed", "dropped_latest", "rejected", "gaps")
OUT_FIELDS = ("sent", "dropped_send", "bytes")


class Counters:
    """int64 counters: one row per input edge, one per output edge, and a node total."""

    def __init__(self, path: str | Path, inputs: list[str], outputs: list[str], *, create: bool) -> None:
        self.inputs, self.outputs = list(inputs), list(outputs)
        size = 1 + len(inputs) * len(IN_FIELDS) + len(outputs) * len(OUT_FIELDS)
        self._data = np.memmap(path, dtype=np.int64, mode="w+" if create else "r", shape=(size,))
        n_in = len(inputs) * len(IN_FIELDS)
        self._in = self._data[1:1 + n_in].reshape(len(inputs), len(IN_FIELDS))
        self._out = self._data[1 + n_in:].reshape(len(outputs), len(OUT_FIELDS))
        self._in_row = {e: i for i, e in enumerate(inputs)}
        self._out_row = {e: i for i, e in enumerate(outputs)}

    def add_in(self, edge: str, field: str, n: int = 1) -> None:
        self._in[self._in_row[edge], IN_FIELDS.index(field)] += n

    def add_out(self, edge: str, field: str, n: int = 1) -> None:
        self._out[self._out_row[edge], OUT_FIELDS.index(field)] += n

    def add_processed(self, n: int = 1) -> None:
        self._data[0] += n

    def snapshot(self) -> dict:
        """Plain dict: {"processed": n, "inputs": {edge: {field: n}}, "outputs": {edge: {field: n}}}."""
        return {
            "processed": int(self._data[0]),
            "inputs": {e: dict(zip(IN_FIELDS, map(int, self._in[i]), strict=True)) for e, i in self._in_row.items()},
            "outputs": {e: dict(zip(OUT_FIELDS, map(int, self._out[i]), strict=True))
                        for e, i in self._out_row.items()},
        }
