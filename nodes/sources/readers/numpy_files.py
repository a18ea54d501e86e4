"""NumPy event files: ``.npy`` structured arrays and ``.npz`` archives.

* ``.npy``: a structured array with fields t, x, y, p (aliases ``ts``/``timestamp(s)`` for t and
  ``pol``/``polarity`` for p). It is memory-mapped, so chunks are read without loading the file.
* ``.npz``: either separate arrays named t, x, y, p (same aliases), or one member holding such a
  structured array. A zip member cannot be memory-mapped: each needed array is loaded once.
  Optional members: ``sensor_size`` ([width, height]) or ``width`` and ``height``.

Integer times are µs, floating times seconds. Timestamps are passed through, so ``t_offset`` is the
first timestamp. Seeking is a binary search on t.
"""

from __future__ import annotations

import bisect
import tokenize
import zipfile
from collections.abc import Iterator

import numpy as np

from .base import RawEvents, Recording, check_coordinate_dtypes, first_line

FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "t": ("t", "ts", "timestamp", "timestamps"),
    "x": ("x",),
    "y": ("y",),
    "p": ("p", "pol", "polarity", "polarities"),
}


def _pick(names: list[str], field: str) -> str | None:
    return next((alias for alias in FIELD_ALIASES[field] if alias in names), None)


class NumpyRecording(Recording):
    """A ``.npy`` or ``.npz`` event file (see the module docstring); ``format`` is "npy" or "npz"."""

    format = "npy"
    # numpy's .npy header parser on a damaged header: tokenize.TokenError, SyntaxError, ValueError
    LIBRARY_ERRORS = (tokenize.TokenError, SyntaxError, ValueError, OSError, EOFError, zipfile.BadZipFile)

    def _open(self) -> None:
        try:
            with open(self.path, "rb") as file:
                is_zip = file.read(4) == b"PK\x03\x04"
            if is_zip:
                # np.load leaks its file handle when a damaged archive fails to open; own it instead.
                self._file = open(self.path, "rb")  # noqa: SIM115 - closed in _close
                self._npz = np.load(self._file, allow_pickle=False)
            else:
                array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise self.error(
                f"cannot be read as .npy/.npz ({first_line(exc)}); the file is truncated or corrupt: re-copy it",
                kind="truncated",
            ) from None
        if is_zip:
            self.format = "npz"
            self._columns = self._npz_columns(self._npz)
        else:
            self._columns = self._structured_columns(array, "the array")
        lengths = {name: len(column) for name, column in self._columns.items()}
        if len(set(lengths.values())) != 1:
            raise self.error(f"event fields differ in length: {lengths}; the file is corrupt")
        self.n_events = lengths["t"]
        check_coordinate_dtypes(self, self._columns)
        t = self._columns["t"]
        self._float_seconds = not np.issubdtype(t.dtype, np.integer)

    def _close(self) -> None:
        for handle in (getattr(self, "_npz", None), getattr(self, "_file", None)):
            if handle is not None:
                handle.close()

    def _structured_columns(self, array: np.ndarray, where: str) -> dict[str, np.ndarray]:
        names = list(array.dtype.names or ())
        if not names:
            raise self.error(
                f"{where} is a plain {array.dtype} array of shape {array.shape}; save a structured array "
                "with fields t, x, y, p (e.g. np.rec.fromarrays([t, x, y, p], names='t,x,y,p'))",
                kind="missing_dataset",
            )
        picked = {field: _pick(names, field) for field in FIELD_ALIASES}
        missing = [field for field, name in picked.items() if name is None]
        if missing:
            raise self.error(
                f"{where} lacks field(s) {missing} (looked for {[FIELD_ALIASES[f] for f in missing]}); "
                f"its fields are {names}",
                kind="missing_dataset",
            )
        return {field: array[name] for field, name in picked.items()}

    def _npz_columns(self, npz: np.lib.npyio.NpzFile) -> dict[str, np.ndarray]:
        members = list(npz.files)
        try:
            if "sensor_size" in members:
                width, height = (int(v) for v in np.asarray(npz["sensor_size"]).reshape(-1)[:2])
                self._header_sensor_size = (width, height)
            elif "width" in members and "height" in members:
                self._header_sensor_size = (int(npz["width"]), int(npz["height"]))
            picked = {field: _pick(members, field) for field in FIELD_ALIASES}
            if all(picked.values()):
                return {field: np.asarray(npz[name]) for field, name in picked.items()}
            for member in members:
                array = npz[member]
                if array.dtype.names:
                    return self._structured_columns(array, f"member {member!r}")
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise self.error(
                f"a member cannot be read ({first_line(exc)}); the file is truncated or corrupt: re-copy it",
                kind="truncated",
            ) from None
        missing = [f for f, name in picked.items() if name is None]
        raise self.error(
            f"no event arrays: missing {missing} (looked for {[FIELD_ALIASES[f] for f in missing]}) and no "
            f"structured member; the archive holds {members}",
            kind="missing_dataset",
        )

    def _times(self, start: int, stop: int) -> np.ndarray:
        t = np.asarray(self._columns["t"][start:stop])
        return np.rint(t.astype(np.float64) * 1e6).astype(np.int64) if self._float_seconds else t.astype(np.int64)

    def _read_events(self, t_start: int | None, t_stop: int | None, chunk_events: int) -> Iterator[RawEvents]:
        start = 0
        if t_start is not None:
            # Binary search reading single values (the column may be memory-mapped).
            start = bisect.bisect_left(range(self.n_events), t_start, key=lambda i: int(self._times(i, i + 1)[0]))
        c = self._columns
        for i in range(start, self.n_events, chunk_events):
            j = min(i + chunk_events, self.n_events)
            yield RawEvents(
                t=self._times(i, j),
                x=np.asarray(c["x"][i:j]),
                y=np.asarray(c["y"][i:j]),
                p=np.asarray(c["p"][i:j]),
                unit="index",
                origin=i,
            )

    def _time_range(self) -> tuple[int, int]:
        if self.n_events == 0:
            raise self.error("the file holds no events, so it has no time range")
        return int(self._times(0, 1)[0]), int(self._times(self.n_events - 1, self.n_events)[0]) + 1
