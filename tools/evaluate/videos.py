"""Real colour clips for ``python -m evpipe.tools.evaluate --videos DIR``: reading them, and their cases.

A clip is a video file or a folder of image frames (what ``evpipe upsample`` reads), scaled to a width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from evpipe.nodes.upsample.cli import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_frames


def scaled(frame: np.ndarray, width: int | None) -> np.ndarray:
    """A float32 (H, W, 3) frame in [0, 1] area-scaled to ``width`` pixels (aspect kept; None: as it is)."""
    if width is None or frame.shape[1] == width:
        return frame
    height = max(1, round(frame.shape[0] * width / frame.shape[1]))
    image = Image.fromarray(np.clip(np.round(frame * 255), 0, 255).astype(np.uint8))
    return np.asarray(image.resize((width, height), Image.Resampling.BOX), np.float32) / 255.0


def read_clip(path: Path, width: int | None, max_frames: int | None) -> list[np.ndarray]:
    """The first ``max_frames`` frames of a clip, float32 (H, W, 3) in [0, 1], scaled to ``width``."""
    frames, _ = read_frames(path, max_frames)
    return [scaled(frame, width) for frame in frames]


def find_clips(folder: Path) -> list[Path]:
    """The clips in ``folder``, in name order: video files, and subfolders holding image frames
    (directly or in a ``frames`` subfolder, as ``video_bedroom`` has them)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--videos {folder}: no such folder")
    clips = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            clips.append(path)
        elif path.is_dir():
            for candidate in (path, path / "frames"):
                if candidate.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in candidate.iterdir()):
                    clips.append(candidate)
                    break
            else:
                clips += [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    if not clips:
        raise FileNotFoundError(f"--videos {folder}: no video files ({', '.join(VIDEO_SUFFIXES)}) or folders of "
                                "image frames")
    return clips
