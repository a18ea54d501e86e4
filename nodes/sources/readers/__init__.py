"""Readers for recorded event-camera files, one module per format, behind one small API.

    with open_recording("drive.raw", sensor_size=(1280, 720), on_error="skip") as rec:
        for packet in rec.events(t_start=rec.t_offset + 1_000_000, chunk_events=100_000):
            ...
        print(rec.issues.by_kind())

`open_recording` picks the reader from the file's content (magic bytes or header), not its name:
AEDAT4 (``aedat4``), HDF5 in the DSEC or plain layout (``hdf5``), RPG/ECD text (``rpg-text``; a file
or a sequence folder), NumPy (``npy``, ``npz``), Prophesee EVT 2.0 / 3.0 ``.raw`` (``evt2``,
``evt3``), Event Stream (``event-stream``) and ROS 1 / ROS 2 bags (``rosbag1``, ``rosbag2``). Every
`Recording` yields the shared `Events`, `Frame`, `Imu` and `Triggers` types with int64 µs
timestamps; see `base` for the timebase and bad-input policy, and `describe` for the summary behind
``evpipe info``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np

from .aedat4 import Aedat4Recording
from .base import DEFAULT_CHUNK_EVENTS, Issue, Issues, Recording, RecordingError, RecordingWarning
from .describe import format_description, summarize
from .event_stream import MAGIC as EVENT_STREAM_MAGIC
from .event_stream import EventStreamRecording
from .hdf5 import Hdf5Recording
from .numpy_files import NumpyRecording
from .prophesee import Evt2Recording, Evt3Recording, parse_raw_header, raw_version
from .rosbag import ROSBAG1_MAGIC, Rosbag1Recording, Rosbag2Recording, storage_of
from .text import EVENT_INTEGRAL, EVENT_SCALES, RpgTextRecording, parse_columns

READERS: dict[str, type[Recording]] = {
    "aedat4": Aedat4Recording,
    "hdf5": Hdf5Recording,
    "rpg-text": RpgTextRecording,
    "npy": NumpyRecording,
    "npz": NumpyRecording,
    "evt2": Evt2Recording,
    "evt3": Evt3Recording,
    "event-stream": EventStreamRecording,
    "rosbag1": Rosbag1Recording,
    "rosbag2": Rosbag2Recording,
}
BAG_FORMATS = ("rosbag1", "rosbag2")

_SUPPORTED = (
    "AEDAT4, HDF5 (DSEC or plain layout), RPG/ECD text, .npy/.npz, Prophesee EVT 2.0/3.0 .raw, Event Stream .es, "
    "ROS 1 bags (.bag) and ROS 2 bags (a folder with metadata.yaml; sqlite3 or mcap storage)"
)


def detect_format(path: str | Path) -> str:
    """The `READERS` key for ``path``, from its content; `RecordingError` when no reader fits."""
    path = Path(path)
    if path.is_dir():
        return "rosbag2" if (path / "metadata.yaml").is_file() else "rpg-text"
    try:
        with open(path, "rb") as file:
            head = file.read(1 << 16)
    except OSError as exc:
        raise RecordingError(path, f"cannot open the file ({exc.strerror})") from None
    if not head:
        raise RecordingError(path, "the file is empty", kind="truncated")
    if head.startswith(ROSBAG1_MAGIC):
        return "rosbag1"
    if head.startswith(b"#ROSBAG V"):
        version = head[9:12].decode("ascii", "replace")
        raise RecordingError(path, f"ROS bag format version {version} is not supported (only 2.0, the ROS 1 format)")
    if storage_of(path) is not None:
        return "rosbag2"
    if head.startswith(b"#!AER-DAT4"):
        return "aedat4"
    if head.startswith(b"#!AER-DAT"):
        version = head[9:12].decode("ascii", "replace")
        raise RecordingError(path, f"AEDAT {version} is not supported; convert it to AEDAT4 with DV")
    if head.startswith(EVENT_STREAM_MAGIC):
        return "event-stream"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    if head.startswith(b"\x89HDF\r\n\x1a\n") or h5py.is_hdf5(path):
        return "hdf5"
    if head.startswith(b"%"):
        version = raw_version(parse_raw_header(head)[1])
        if version in ("evt2", "evt3"):
            return version
        raise RecordingError(
            path,
            f"a Prophesee-style header that declares {version or 'no EVT version'}; supported are "
            "EVT 2.0 and EVT 3.0 (add a '% evt 3.0' or '% evt 2.0' header line if the file lacks one)",
        )
    if parse_columns(np.frombuffer(head, np.uint8), EVENT_SCALES, EVENT_INTEGRAL, False)[0].shape[0]:
        return "rpg-text"
    raise RecordingError(path, f"unrecognised file format; supported: {_SUPPORTED}")


def open_recording(
    path: str | Path,
    *,
    sensor_size: tuple[int, int] | None = None,
    on_error: str = "raise",
    topics: dict[str, str] | None = None,
) -> Recording:
    """Open a recording with the reader its content calls for.

    ``sensor_size`` (width, height) overrides the file's own; ``on_error`` is ``"raise"`` (the first
    bad item raises `RecordingError`) or ``"skip"`` (bad items are dropped and counted in
    ``recording.issues``). ``topics`` picks a ROS bag's topic per stream (``{"events": "/dvs/events"}``;
    see `rosbag`); other formats have one stream of each kind and refuse it.
    """
    fmt = detect_format(path)
    if topics is None:
        return READERS[fmt](path, sensor_size=sensor_size, on_error=on_error)
    if fmt not in BAG_FORMATS:
        raise RecordingError(path, f"topics={topics!r} applies to ROS bags only; this file is {fmt}")
    return READERS[fmt](path, sensor_size=sensor_size, on_error=on_error, topics=topics)


def describe(path: str | Path, *, progress: bool = False, **open_kwargs: object) -> dict:
    """Summary of a recording for ``evpipe info``: see `summarize` for the keys.

    Opens with ``on_error="skip"`` unless told otherwise, so anomalies are counted rather than fatal.
    The whole file is streamed once in chunks; ``progress`` shows a progress bar.
    """
    open_kwargs.setdefault("on_error", "skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordingWarning)  # the summary lists every issue itself
        with open_recording(path, **open_kwargs) as recording:
            return summarize(recording, progress=progress)


__all__ = [
    "DEFAULT_CHUNK_EVENTS",
    "READERS",
    "Issue",
    "Issues",
    "Recording",
    "RecordingError",
    "RecordingWarning",
    "describe",
    "detect_format",
    "format_description",
    "open_recording",
    "summarize",
]
