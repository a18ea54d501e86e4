"""The real recordings with APS frames (DAVIS346 street, ECD slider_depth) as predict cases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from evpipe.runtime.events import Events
from evpipe.tools.evaluate.registry import Case

DEFAULT_REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class RealRecording:
    """A real recording with APS frames: frames float32 (N, H, W) in [0, 1], cropped to multiples of 16."""

    name: str
    frames: np.ndarray
    frames_t: np.ndarray
    events: Events

    def cases(self) -> list[Case]:
        """Predict cases: frame i+1 from frame i and the events in (t_i, t_i+1]."""
        cases = []
        for i in range(len(self.frames) - 1):
            t0, t1 = int(self.frames_t[i]), int(self.frames_t[i + 1])
            cases.append({"anchor": self.frames[i], "target": self.frames[i + 1], "t_anchor": t0, "t_target": t1,
                          "events": self.events.time_slice(t0 + 1, t1 + 1), "sequence": self.name, "index": i})
        return cases


def _crop_recording(name: str, frames: np.ndarray, frames_t: np.ndarray, t, x, y, p) -> RealRecording:
    """Centre-crop frames (N, H, W) uint8 and events to multiples of 16 (models downsample by up to 16)."""
    height, width = frames.shape[1:]
    new_h, new_w = height // 16 * 16, width // 16 * 16
    top, left = (height - new_h) // 2, (width - new_w) // 2
    keep = (y >= top) & (y < top + new_h) & (x >= left) & (x < left + new_w)
    order = np.argsort(t[keep], kind="stable")
    events = Events.from_arrays(t[keep][order], (x[keep] - left)[order], (y[keep] - top)[order], p[keep][order])
    cropped = frames[:, top : top + new_h, left : left + new_w].astype(np.float32) / 255.0
    return RealRecording(name, cropped, np.asarray(frames_t, np.int64), events)


def _read_events(group: h5py.Group, path: Path) -> tuple[np.ndarray, ...]:
    try:
        return tuple(group[name][()] for name in ("t", "x", "y", "p"))
    except KeyError as error:
        raise ValueError(f"{path}: missing events field {error}") from error


def load_real_recordings(data_dir: Path) -> list[RealRecording]:
    """The real recordings with APS frames in ``data_dir`` (those present): DAVIS346 street, ECD slider_depth."""
    recordings = []
    street = data_dir / "davis346_street" / "davis346_street_first1.8s.h5"
    if street.is_file():
        with h5py.File(street, "r") as f:
            t, x, y, p = _read_events(f["events"], street)
            recordings.append(_crop_recording("davis346_street", f["frames/images"][()], f["frames/t"][()], t, x, y, p))
    slider = data_dir / "ecd_slider_depth" / "events.h5"
    if slider.is_file():
        with h5py.File(slider, "r") as f:
            t, x, y, p = _read_events(f["events"], slider)
            files = [slider.parent / name.decode() for name in f["frames/files"][()]]
            frames_t = f["frames/t"][()]
        frames = []
        for file in files:
            with Image.open(file) as im:
                frames.append(np.asarray(im.convert("L")))
        recordings.append(_crop_recording("ecd_slider_depth", np.stack(frames), frames_t, t, x, y, p))
    return recordings
