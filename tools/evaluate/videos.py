"""Real colour clips for ``python -m evpipe.tools.evaluate --videos DIR``: reading them, and their cases.

A clip is a video file or a folder of image frames (what ``evpipe upsample`` reads), scaled to a width.
``upsample``: every other frame dropped, the dropped frames scored. ``restore``: consecutive windows
of ``--clip-length`` frames through a temporal PSF, measured (8-bit unless ``--bits`` says otherwise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from evpipe.nodes.restore.psf import degrade_clip
from evpipe.nodes.upsample.cli import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_frames
from evpipe.tools.evaluate.degradations import Measurement, parse_degradation
from evpipe.tools.evaluate.registry import Case
from evpipe.tools.evaluate.sources import EvalSource, subsample


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


def upsample_cases(frames: list[np.ndarray], name: str) -> list[Case]:
    """Every other frame dropped: each dropped frame i + 1 is a case from the kept frames i and i + 2
    (``before``/``after``: the kept frames 2 further out, the end frames repeated at the clip's ends)."""
    cases = []
    for i in range(0, len(frames) - 2, 2):
        cases.append({"frame0": frames[i], "frame1": frames[i + 2], "before": frames[i - 2] if i >= 2 else frames[i],
                      "after": frames[i + 4] if i + 4 < len(frames) else frames[i + 2],
                      "target": frames[i + 1], "sequence": name, "index": i + 1})
    return cases


def restore_cases(frames: list[np.ndarray], name: str, degradation: str, clip_length: int,
                  measurement: Measurement) -> list[Case]:
    """Consecutive windows of ``clip_length`` frames through ``degradation`` (a temporal PSF, with
    ``measurement``'s boundary, noise and bits); a shorter rest is dropped."""
    psf, spatial = parse_degradation(degradation)
    if spatial:
        raise ValueError(f"--degradation {degradation!r}: --videos takes temporal PSFs only (uniform7, uniform13, "
                         "gaussian1)")
    cases = []
    for start in range(0, len(frames) - clip_length + 1, clip_length):
        clip = np.stack(frames[start:start + clip_length])
        degraded = measurement.apply(degrade_clip(clip, psf, measurement.boundary), seed=start)
        cases.append({"degraded": degraded, "psf": psf, "target": clip, "spatial": None,
                      "boundary": measurement.boundary, "sequence": name, "index": start})
    return cases


def video_sources(task: str, folder: Path, width: int | None, max_frames: int | None, degradations: list[str],
                  clip_length: int, measurement: Measurement, max_samples: int | None) -> list[EvalSource]:
    """One block per clip (upsample) or per clip and degradation (restore). Baseline parameters are fitted
    on the other clips' cases (leave one clip out): a clip is never fitted on itself."""
    if task not in ("upsample", "restore"):
        raise ValueError(f"--videos: task {task!r} takes no videos (upsample or restore)")
    clips = {path.stem if path.is_file() else path.parent.name if path.name == "frames" else path.name:
             read_clip(path, width, max_frames) for path in find_clips(folder)}
    sources = []
    for name, frames in clips.items():
        if len(frames) < 3 or (task == "restore" and len(frames) < clip_length):
            raise ValueError(f"--videos: clip {name} has {len(frames)} frames, too few for {task}")
        height, width_px = frames[0].shape[:2]
        for kind in degradations if task == "restore" else [None]:
            def cases_of(clip: str, kind: str | None = kind) -> list[Case]:
                if task == "upsample":
                    return upsample_cases(clips[clip], clip)
                return restore_cases(clips[clip], clip, kind, clip_length, measurement)

            sources.append(EvalSource(
                f"{name}" + (f" {kind}" if kind else ""), None,
                lambda name=name, cases_of=cases_of: subsample(cases_of(name), max_samples),
                lambda name=name, cases_of=cases_of: [case for other in clips if other != name
                                                      for case in cases_of(other)],
                height, width_px, 3))
    return sources
