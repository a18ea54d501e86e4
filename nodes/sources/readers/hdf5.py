"""HDF5 event recordings (h5py), read in chunks of ``chunk_events`` rows.

Layouts (the first whose event datasets are all present wins):

* **DSEC**: ``events/{x, y, t, p}`` with ``t`` in µs relative to a scalar ``t_offset`` (a root dataset
  or attribute) and ``ms_to_idx`` (row of the first event at or after each millisecond). Events are
  yielded absolute, ``t + t_offset``, and ``Recording.t_offset`` is that offset.
* **plain**: ``x, y, t, p`` under ``events/`` or at the root; aliases ``ts``/``timestamp(s)`` for t and
  ``pol``/``polarity`` for p. ``t_offset`` is the first timestamp of the recording.

Time units: a ``t_unit``/``unit``/``units`` attribute (on ``t``, its group or the root) starting with
``us``/``µs``, ``ns``, ``ms`` or ``s``; without one, integer times are µs and floating times seconds.
Seeking uses ``ms_to_idx`` to narrow the search where present, then a binary search on ``t`` (a few
single-row reads). The sensor size comes from ``sensor_size=``, else ``width``/``height`` attributes
(root or events group), else the largest coordinates (with a warning).

Optional streams, as the files in ``shared/data`` lay them out:

* ``frames/t`` with ``frames/images`` (N, H, W[, 3]) or ``frames/files`` (image paths relative to the
  HDF5 file's folder), and optionally ``frames/exposure_us``. With an exposure, ``frames/t`` is the
  start of exposure (dv-processing's convention, which these exports copy) and ``Frame.t`` the
  midpoint ``t + exposure // 2``; without one, ``Frame.t`` is ``frames/t``.
* ``imu/data`` (N, 7) with ``imu/columns`` naming ``t_us``, ``acc_{x,y,z}_<unit>`` (``g`` or ``ms2``)
  and ``gyro_{x,y,z}_<unit>`` (``dps`` or ``rads``). Units are checked against gravity: a camera's
  accelerometer reads about 1 g, so readings labelled g whose median magnitude is 4–20 are m/s²
  (and the gyroscope then rad/s, the SI export) — corrected, with an ``imu_units_corrected`` issue
  and a warning. (``davis346_street`` in ``shared/data`` is labelled g/deg/s but holds m/s² and
  rad/s: its values equal dv-processing's SI getters.)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np

from evpipe.runtime.events import Frame, Imu

from .base import Issue, RawEvents, Recording, check_coordinate_dtypes, first_line, read_image

FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "t": ("t", "ts", "timestamp", "timestamps"),
    "x": ("x",),
    "y": ("y",),
    "p": ("p", "pol", "polarity", "polarities"),
}
_UNIT_FACTORS = {
    "us": 1,
    "µs": 1,
    "usec": 1,
    "microseconds": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "sec": 1_000_000,
    "seconds": 1_000_000,
    "ns": -1_000,
}  # negative: divide
_ACCEL_TO_G = {"g": 1.0, "ms2": 1 / 9.80665, "mps2": 1 / 9.80665}
_GYRO_TO_DPS = {"dps": 1.0, "degs": 1.0, "rads": float(np.degrees(1.0)), "rad_s": float(np.degrees(1.0))}
_IMU_CHUNK = 100_000

T = TypeVar("T")


def _member(group: h5py.Group, name: str, kind: type[T]) -> T | None:
    """``group[name]`` when it exists and is a ``kind`` (h5py.Dataset or h5py.Group), else None. Not
    ``Group.get``: for a missing name it raised UnicodeDecodeError instead of returning None once (h5py
    decoding HDF5's error message, which held undecodable bytes), so membership is tested first."""
    member = group[name] if name in group else None  # noqa: SIM401 (the point is not to call get)
    return member if isinstance(member, kind) else None


def time_unit_factor(dataset: h5py.Dataset, *holders: h5py.HLObject) -> int:
    """µs per stored unit (negative: stored units per µs) from a unit attribute or the dtype."""
    for holder in (dataset, *holders):
        for key in ("t_unit", "unit", "units"):
            if key in holder.attrs:
                value = holder.attrs[key]
                text = (value.decode() if isinstance(value, bytes) else str(value)).strip().lower()
                token = text.split()[0] if text else ""
                if token in _UNIT_FACTORS:
                    return _UNIT_FACTORS[token]
    return 1 if np.issubdtype(dataset.dtype, np.integer) else 1_000_000


def to_microseconds(values: np.ndarray, factor: int) -> np.ndarray:
    """Stored times -> int64 µs (integers scaled exactly, floats rounded)."""
    if np.issubdtype(values.dtype, np.integer):
        values = values.astype(np.int64)
        return values * factor if factor > 0 else values // -factor
    scaled = values.astype(np.float64) * factor if factor > 0 else values.astype(np.float64) / -factor
    return np.rint(scaled).astype(np.int64)


class Hdf5Recording(Recording):
    """An HDF5 event file in the DSEC or plain layout (see the module docstring)."""

    format = "hdf5"
    # h5py on damaged metadata: RuntimeError (B-tree, buffer overrun), KeyError, TypeError, ValueError, OSError
    LIBRARY_ERRORS = (RuntimeError, KeyError, TypeError, ValueError, OSError)

    def _open(self) -> None:
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise self.error(
                f"cannot be read as HDF5 ({first_line(exc)}); the file is truncated or corrupt: re-copy it",
                kind="truncated",
            ) from None
        self._columns = self._find_event_datasets()
        lengths = {name: len(d) for name, d in self._columns.items()}
        if len(set(lengths.values())) != 1:
            raise self.error(f"event datasets differ in length: {lengths}; the file is corrupt")
        self.n_events = lengths["t"]
        check_coordinate_dtypes(self, self._columns)
        for dataset in self._columns.values():
            self._check_filters(dataset)
        t = self._columns["t"]
        self._t_factor = time_unit_factor(t, t.parent, self._h5)
        self._ms_to_idx = _member(self._h5, "ms_to_idx", h5py.Dataset)
        offset = _member(self._h5, "t_offset", h5py.Dataset)
        if offset is not None:
            self._declared_t_offset = int(np.asarray(offset[()]).reshape(-1)[0])
        elif "t_offset" in self._h5.attrs:
            self._declared_t_offset = int(np.asarray(self._h5.attrs["t_offset"]).reshape(-1)[0])
        self.layout = "dsec" if (self._ms_to_idx is not None or self._declared_t_offset is not None) else "plain"
        for holder in (self._h5, t.parent):
            if "width" in holder.attrs and "height" in holder.attrs:
                self._header_sensor_size = (int(holder.attrs["width"]), int(holder.attrs["height"]))
                break

    def _close(self) -> None:
        h5 = getattr(self, "_h5", None)
        if h5 is not None:
            h5.close()

    def _find_event_datasets(self) -> dict[str, h5py.Dataset]:
        best: tuple[str, dict[str, h5py.Dataset]] = ("/", {})
        for group_name in ("events", "/"):
            group = _member(self._h5, group_name, h5py.Group)
            if group is None:
                continue
            found = {}
            for field, aliases in FIELD_ALIASES.items():
                for alias in aliases:
                    dataset = _member(group, alias, h5py.Dataset)
                    if dataset is not None:
                        found[field] = dataset
                        break
            if len(found) == len(FIELD_ALIASES):
                return found
            if len(found) > len(best[1]):
                best = (group.name, found)
        group_name, found = best
        missing = [f for f in FIELD_ALIASES if f not in found]
        looked = "; ".join(f"{f}: {', '.join(FIELD_ALIASES[f])}" for f in missing)
        present = sorted(self._h5[group_name].keys()) if group_name in self._h5 else []
        raise self.error(
            f"missing event dataset(s) {missing} in {group_name} (looked for {looked}); that group holds "
            f"{present}. Expected events/{{t,x,y,p}} (DSEC or plain) or t, x, y, p at the root",
            kind="missing_dataset",
        )

    def _check_filters(self, dataset: h5py.Dataset) -> None:
        """Fail early, naming the fix, when a compression filter of ``dataset`` is not installed."""
        plist = dataset.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            code, _, _, name = plist.get_filter(i)
            if not h5py.h5z.filter_avail(code):
                label = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
                raise self.error(
                    f"dataset {dataset.name} is compressed with HDF5 filter {code} ({label or 'unnamed'}), which "
                    "is not installed; DSEC files use Blosc: pip install hdf5plugin",
                    kind="missing_filter",
                )

    def _slice(self, dataset: h5py.Dataset, start: int, stop: int) -> np.ndarray | None:
        try:
            return dataset[start:stop]
        except OSError as exc:
            self.report(
                "events",
                "corrupt",
                "index",
                start,
                stop - start,
                f"rows {start}..{stop - 1} of {dataset.name} cannot be read ({first_line(exc)})",
            )
            return None

    def _time_at(self, index: int) -> int:
        offset = self._declared_t_offset or 0
        return int(to_microseconds(np.asarray(self._columns["t"][index : index + 1]), self._t_factor)[0]) + offset

    def _index_at(self, t_us: int) -> int:
        """First row whose time is >= t_us (binary search; narrowed by ms_to_idx where present)."""
        lo, hi = 0, self.n_events
        if self._ms_to_idx is not None and self._t_factor == 1 and len(self._ms_to_idx):
            ms = (t_us - (self._declared_t_offset or 0)) // 1000
            n_ms = len(self._ms_to_idx)
            if ms >= n_ms:
                lo = int(self._ms_to_idx[n_ms - 1])
            elif ms >= 0:
                lo = int(self._ms_to_idx[ms])
                hi = int(self._ms_to_idx[ms + 1]) if ms + 1 < n_ms else self.n_events
            lo, hi = min(lo, self.n_events), min(max(hi, lo), self.n_events)
        return bisect.bisect_left(range(lo, hi), t_us, key=self._time_at) + lo

    def _read_events(self, t_start: int | None, t_stop: int | None, chunk_events: int) -> Iterator[RawEvents]:
        start = 0 if t_start is None or self.n_events == 0 else self._index_at(t_start)
        offset = self._declared_t_offset or 0
        columns = self._columns
        for i in range(start, self.n_events, chunk_events):
            j = min(i + chunk_events, self.n_events)
            parts = [self._slice(columns[name], i, j) for name in ("t", "x", "y", "p")]
            if any(part is None for part in parts):
                continue
            t, x, y, p = parts
            yield RawEvents(t=to_microseconds(t, self._t_factor) + offset, x=x, y=y, p=p, unit="index", origin=i)

    def _time_range(self) -> tuple[int, int]:
        times = []
        if self.n_events:
            times += [self._time_at(0), self._time_at(self.n_events - 1)]
        frame_t = self._frame_times()
        if frame_t is not None and len(frame_t):
            times += [int(frame_t.min()), int(frame_t.max())]
        imu = _member(self._h5, "imu/data", h5py.Dataset)
        if imu is not None and len(imu):
            column = self._imu_columns()[0]
            offset = self._declared_t_offset or 0
            times += [round(float(imu[0, column])) + offset, round(float(imu[len(imu) - 1, column])) + offset]
        if not times:
            raise self.error("the file holds no events, frames or IMU samples, so it has no time range")
        return min(times), max(times) + 1

    # ------------------------------------------------------------------------------- frames

    def _frame_times(self) -> np.ndarray | None:
        """Frame timestamps as stored (start of exposure when exposures are given), µs."""
        group = _member(self._h5, "frames", h5py.Group)
        if group is None:
            return None
        t = _member(group, "t", h5py.Dataset)
        if t is None:
            raise self.error("frames/ has no t dataset (frame timestamps)", kind="missing_dataset")
        return to_microseconds(t[()], time_unit_factor(t, group, self._h5)) + (self._declared_t_offset or 0)

    def _read_frames(self, t_start: int | None, t_stop: int | None) -> Iterator[tuple[str, int, Frame]]:
        times = self._frame_times()
        if times is None:
            return
        group = self._h5["frames"]
        exposures = group["exposure_us"][()].astype(np.int64) if "exposure_us" in group else np.zeros_like(times)
        if "images" in group:
            images = group["images"]
            sources = None
        elif "files" in group:
            images = None
            sources = [f.decode() if isinstance(f, bytes) else str(f) for f in group["files"][()]]
        else:
            raise self.error("frames/ has neither images nor files", kind="missing_dataset")
        count = len(images) if images is not None else len(sources)
        if not (count == len(times) == len(exposures)):
            raise self.error(
                f"frames/ datasets differ in length: t {len(times)}, exposure_us {len(exposures)}, "
                f"images/files {count}; the file is corrupt",
                kind="missing_dataset",
            )
        for i in range(count):
            mid = int(times[i] + exposures[i] // 2)
            if (t_start is not None and mid < t_start) or (t_stop is not None and mid >= t_stop):
                continue
            if images is not None:
                image = images[i]
            else:
                image = read_image(self, Path(self.path).parent / sources[i], "frame", i)
                if image is None:
                    continue
            yield "frame", i, Frame(image=image, t=mid, exposure_us=int(exposures[i]))

    # ---------------------------------------------------------------------------------- IMU

    def _imu_columns(self) -> tuple[int, list[int], list[int], float, float]:
        """(t column, accel columns, gyro columns, accel -> g factor, gyro -> deg/s factor)."""
        if "imu/columns" not in self._h5:
            return 0, [1, 2, 3], [4, 5, 6], 1.0, 1.0  # the documented order: t_us, acc [g], gyro [deg/s]
        names = [c.decode() if isinstance(c, bytes) else str(c) for c in self._h5["imu/columns"][()]]
        lowered = [n.lower() for n in names]

        def find(prefix: str) -> tuple[int, str]:
            for i, name in enumerate(lowered):
                if name.startswith(prefix):
                    return i, name[len(prefix) :].lstrip("_")
            raise self.error(f"imu/columns {names} has no column starting with {prefix!r}", kind="missing_dataset")

        t_col = next((i for i, n in enumerate(lowered) if n in ("t_us", "t", "timestamp")), None)
        if t_col is None:
            raise self.error(f"imu/columns {names} has no t_us column", kind="missing_dataset")
        accel = [find(f"acc_{axis}") for axis in "xyz"]
        gyro = [find(f"gyro_{axis}") for axis in "xyz"]
        units = {u for _, u in accel} | {u for _, u in gyro}
        accel_unit, gyro_unit = accel[0][1], gyro[0][1]
        if accel_unit not in _ACCEL_TO_G or gyro_unit not in _GYRO_TO_DPS or len(units) != 2:
            raise self.error(
                f"imu/columns {names}: units must be acc_*_g or acc_*_ms2 and gyro_*_dps or gyro_*_rads",
                kind="missing_dataset",
            )
        return (
            t_col,
            [c for c, _ in accel],
            [c for c, _ in gyro],
            _ACCEL_TO_G[accel_unit],
            _GYRO_TO_DPS[gyro_unit],
        )

    def _read_imu(self, t_start: int | None, t_stop: int | None) -> Iterator[Imu]:
        data = _member(self._h5, "imu/data", h5py.Dataset)
        if data is None or len(data) == 0:
            return
        t_col, accel_cols, gyro_cols, to_g, to_dps = self._imu_columns()
        sample = data[: min(len(data), 2000)]
        magnitude = float(np.median(np.linalg.norm(sample[:, accel_cols] * to_g, axis=1)))
        if to_g == 1.0 and 4.0 <= magnitude <= 20.0:
            to_g, to_dps = _ACCEL_TO_G["ms2"], _GYRO_TO_DPS["rads"]
            detail = (
                f"imu/columns say g and deg/s but the median acceleration is {magnitude:.2f} (gravity reads "
                "1 g): read as m/s² and rad/s and converted"
            )
        elif to_g != 1.0 and 0.4 <= magnitude <= 2.0:
            to_g, to_dps = 1.0, 1.0
            detail = (
                f"imu/columns say m/s² but the median acceleration is {magnitude:.2f} m/s² (gravity reads "
                "9.81): read as g and deg/s"
            )
        else:
            detail = ""
        if detail:
            self.note(Issue("imu", "imu_units_corrected", "index", 0, len(data), detail))
        offset = self._declared_t_offset or 0
        for i in range(0, len(data), _IMU_CHUNK):
            rows = data[i : i + _IMU_CHUNK]
            yield Imu(
                t=np.rint(rows[:, t_col]).astype(np.int64) + offset,
                accel=(rows[:, accel_cols] * to_g).astype(np.float32),
                gyro=(rows[:, gyro_cols] * to_dps).astype(np.float32),
            )
