"""Synthesise event-camera training data from real photographs and real video clips.

    python -m evpipe.tools.make_dataset --preset tiny            # ~/.cache/evpipe/datasets/tiny
    python -m evpipe.tools.make_dataset --preset full --color --out /data/evpipe-full

The on-disk layout and the loader are in ``evpipe.tools.dataset`` (its docstring is the format
reference). Every sequence is synthesised the way E2VID/ESIM (Rebecq et al.) and vid2e (Gehrig
et al.) build their training data:

* **Photographs** (the 24 Kodak images and scikit-image's bundled photos) move under a smooth
  random homography: translation, rotation, zoom and a little perspective, each a cubic spline
  through random knots, scaled so the fastest image corner moves ``speed_px`` (random per
  sequence) per APS interval. The photo is resized once (anti-aliased) so the view covers a random
  fraction of it and the whole trajectory stays inside it, then every frame is rendered by cubic
  spline interpolation. APS frames come every ``image_aps_interval_us`` (25 fps, like the
  DAVIS346 recording in ../shared/data).
* **Video clips** (``video_gallery``, ``video_cockatoo``, ``video_bedroom``) are cut into
  non-overlapping segments, each with its own random square crop, resized (Lanczos) to the output
  size. Consecutive source frames are upsampled in time by flow-based interpolation: optical flow
  (scikit-image iterative Lucas-Kanade, at half the output size, at least 64 px) F from frame 0 to
  frame 1, and the frame at fraction s is ``(1-s) I0(x - s F) + s I1(x + (1-s) F)``. The APS
  frames are the real source frames (every second one for clips of 50 fps or more).

How many simulation steps: the simulator interpolates log intensity linearly between the frames
it is given, which is only right if nothing moves far between them. Like vid2e's adaptive
upsampling, each sequence gets ``substeps`` ground-truth frames per source-frame interval, the
smallest count that keeps motion at or below 1 pixel per step (``min_substeps`` <= substeps <=
``max_substeps``). For photos the motion is known exactly (the largest corner displacement of
the homography between consecutive frames — the maximum of an affine motion's displacement over
the image is at a corner); for clips it is the 95th percentile of the estimated flow magnitude
over the segment. The count is constant per sequence so the ground-truth frames are uniformly
spaced in time; where the cap binds, the per-step motion is recorded (``max_step_motion_px``).
1 px per step also keeps the blurry frames (means of consecutive frames) free of ghosting.

Per sequence: ground truth at the simulation rate (every step is stored), APS frames, events
(``evpipe.kernels.simulate_events`` on the luminance, with per-sequence random contrast thresholds
c_pos ~ U(c_range), c_neg = c_pos * U(c_asymmetry), per-pixel spread sigma_c, refractory period
and uniform noise rate), one blurry frame per APS frame (the mean of an odd number of
ground-truth frames centred on it; the exposure is a random fraction of the APS interval per
sequence), and metadata. One margin interval before the first and after the last APS frame lets
every APS frame have a full exposure window. Pixel values / 255 are used as linear intensity, as
in ESIM-based datasets. Colour datasets store RGB frames; events always come from the Rec. 709
luminance. Splits are by source (a photo or a clip is in exactly one of train/val/test), assigned
by a seeded permutation per kind (photos, clips) — recorded in ``dataset.json``.

Everything is deterministic for a seed: each source has its own random generator seeded by
(seed, CRC32 of its name), so results do not depend on ``--workers``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import shutil
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.interpolate import CubicSpline
from skimage.registration import optical_flow_ilk
from skimage.transform import resize
from tqdm import tqdm

from evpipe.kernels import simulate_events
from evpipe.tools.dataset import (
    FORMAT,
    FORMAT_VERSION,
    SPLITS,
    default_dataset_path,
    exposure_window,
    luminance,
)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket",
)  # fmt: skip
BEDROOM_FPS = 30.0  # video_bedroom/frames: 30 fps per ../shared/data/README.md
_EVENT_CHUNK = 1 << 15
# Cubic spline interpolation reads 2 pixels beyond the sample point.
_CANVAS_MARGIN = 3.0


@dataclass(frozen=True)
class BuildConfig:
    """Every parameter of a build; recorded in dataset.json. Speeds are in output pixels."""

    size: int = 128
    color: bool = False
    aps_per_sequence: int = 17
    sequences_per_image: int = 3
    sequences_per_clip: int = 4
    image_aps_interval_us: int = 40_000
    speed_px: tuple[float, float] = (1.0, 8.0)  # fastest corner motion per APS interval, at size 128
    min_substeps: int = 2
    max_substeps: int = 16
    view_fraction: tuple[float, float] = (0.35, 0.8)  # of the photo's short side, at the start
    clip_crop_fraction: tuple[float, float] = (0.55, 1.0)  # of the clip's short side
    c_range: tuple[float, float] = (0.15, 0.45)
    c_asymmetry: tuple[float, float] = (0.8, 1.25)
    sigma_c_range: tuple[float, float] = (0.01, 0.05)
    refractory_us_range: tuple[int, int] = (0, 100)
    noise_rate_hz_range: tuple[float, float] = (0.0, 0.5)
    exposure_fraction: tuple[float, float] = (0.3, 1.0)  # of the APS interval
    val_fraction: float = 0.1
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 8:
            raise ValueError(f"size: expected a multiple of 8 >= 16, got {self.size}")
        if self.aps_per_sequence < 2:
            raise ValueError(f"aps_per_sequence: expected >= 2, got {self.aps_per_sequence}")
        if not 1 <= self.min_substeps <= self.max_substeps:
            raise ValueError(f"substeps: need 1 <= min_substeps <= max_substeps, got {self.min_substeps}, "
                             f"{self.max_substeps}")
        if self.sequences_per_image < 0 or self.sequences_per_clip < 0:
            raise ValueError("sequences_per_image and sequences_per_clip must be >= 0")


PRESETS: dict[str, BuildConfig] = {
    "tiny": BuildConfig(),
    "full": BuildConfig(size=256, sequences_per_image=6, sequences_per_clip=10, max_substeps=24),
}


# ----------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class ImageSource:
    """A real photograph: a Kodak PNG path or a scikit-image bundled image name."""

    name: str
    origin: str
    kind: str = field(default="image", init=False)

    def load(self) -> np.ndarray:
        """float32 (H, W, 3) in [0, 1] (gray photos are replicated to 3 channels)."""
        if self.origin.startswith("skimage.data."):
            import skimage.data

            image = getattr(skimage.data, self.origin.removeprefix("skimage.data."))()
        else:
            try:
                with Image.open(self.origin) as im:
                    image = np.asarray(im.convert("RGB"))
            except OSError as error:
                raise OSError(f"{self.origin}: cannot read photo ({error})") from error
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"{self.origin}: expected an 8-bit gray or RGB photo, got {image.dtype} {image.shape}")
        return image.astype(np.float32) / 255.0


@dataclass(frozen=True)
class ClipSource:
    """A real video clip: an mp4 decoded with PyAV, or a folder of numbered JPEG frames."""

    name: str
    origin: str
    kind: str = field(default="clip", init=False)

    def info(self) -> tuple[int, float, tuple[int, int]]:
        """(frame count, frames per second, (height, width))."""
        path = Path(self.origin)
        if path.is_dir():
            files = self._frame_files()
            with Image.open(files[0]) as im:
                return len(files), BEDROOM_FPS, (im.height, im.width)
        import av

        try:
            with av.open(self.origin) as container:
                stream = container.streams.video[0]
                count = stream.frames or sum(1 for _ in container.decode(stream))
                return count, float(stream.average_rate), (stream.height, stream.width)
        except (av.error.FFmpegError, IndexError) as error:
            raise OSError(f"{self.origin}: cannot read video ({error})") from error

    def _frame_files(self) -> list[Path]:
        files = sorted(p for p in Path(self.origin).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise OSError(f"{self.origin}: no JPEG/PNG frames in this folder")
        return files

    def frames(self, wanted: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (index, uint8 (H, W, 3) RGB) for the wanted frame indices, in order."""
        if not wanted:
            return
        last = max(wanted)
        if Path(self.origin).is_dir():
            files = self._frame_files()
            for index in sorted(wanted):
                with Image.open(files[index]) as im:
                    yield index, np.asarray(im.convert("RGB"))
            return
        import av

        with av.open(self.origin) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    yield index, frame.to_ndarray(format="rgb24")
                if index >= last:
                    break


Source = ImageSource | ClipSource


def find_sources(data_dir: Path | None) -> list[Source]:
    """All sources: scikit-image photos always; Kodak photos and clips when ``data_dir`` has them."""
    sources: list[Source] = [ImageSource(f"skimage/{n}", f"skimage.data.{n}") for n in SKIMAGE_PHOTOS]
    if data_dir is None:
        return sources
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir}: not a directory")
    sources += [ImageSource(f"kodak/{p.stem}", str(p)) for p in sorted((data_dir / "images_kodak24").glob("*.png"))]
    sources += [ClipSource(f"clip/{p.stem}", str(p)) for p in sorted((data_dir / "video_gallery").glob("*.mp4"))]
    if (data_dir / "video_cockatoo" / "cockatoo.mp4").is_file():
        sources.append(ClipSource("clip/cockatoo", str(data_dir / "video_cockatoo" / "cockatoo.mp4")))
    if (data_dir / "video_bedroom" / "frames").is_dir():
        sources.append(ClipSource("clip/bedroom", str(data_dir / "video_bedroom" / "frames")))
    return sources


def assign_splits(sources: list[Source], config: BuildConfig) -> dict[str, str]:
    """Source name -> split. Per kind, a seeded permutation of the sorted names is cut into test,
    val and train (at least one test and one val source when a kind has three or more)."""
    splits: dict[str, str] = {}
    for kind in ("image", "clip"):
        names = sorted(s.name for s in sources if s.kind == kind)
        order = np.random.default_rng([config.seed, zlib.crc32(kind.encode())]).permutation(len(names))
        n_test = max(1, round(config.test_fraction * len(names))) if len(names) >= 3 else 0
        n_val = max(1, round(config.val_fraction * len(names))) if len(names) >= 3 else 0
        for rank, i in enumerate(order):
            splits[names[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return splits


# ----------------------------------------------------------------------------------------------
# Rendering


@dataclass
class Rendered:
    """A rendered sequence before simulation: frames float32 (N, S, S[, 3]) in [0, 1]."""

    frames: np.ndarray
    frames_t: np.ndarray
    aps_index: np.ndarray
    substeps: int  # ground-truth frames per APS interval
    max_step_motion_px: float
    info: dict[str, Any]


def _homography(params: np.ndarray) -> np.ndarray:
    """(T, 3, 3) from params (T, 6): tx, ty [px], rotation [rad], log zoom, perspective px, py [1/px]."""
    tx, ty, rot, log_zoom, px, py = params.T
    zoom = np.exp(log_zoom)
    cos, sin = zoom * np.cos(rot), zoom * np.sin(rot)
    h = np.zeros((len(params), 3, 3))
    h[:, 0, 0], h[:, 0, 1], h[:, 0, 2] = cos, -sin, tx
    h[:, 1, 0], h[:, 1, 1], h[:, 1, 2] = sin, cos, ty
    h[:, 2, 0], h[:, 2, 1], h[:, 2, 2] = px, py, 1.0
    return h


def _apply(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points (P, 2) xy by homographies (T, 3, 3) -> (T, P, 2)."""
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    mapped = homogeneous @ h.transpose(0, 2, 1)
    return mapped[..., :2] / mapped[..., 2:]


class _Trajectory:
    """Smooth random homography motion of the view, ``scale`` times a unit-shaped path."""

    def __init__(self, rng: np.random.Generator, size: int, duration: float) -> None:
        half = size / 2
        knots = 5
        values = rng.normal(size=(knots, 6))
        # Per-parameter weights, in units that move a corner by about one pixel per unit.
        weights = np.array([1.0, 1.0, rng.uniform(0, 0.6), rng.uniform(0, 0.4), rng.uniform(0, 0.2),
                            rng.uniform(0, 0.2)])
        units = np.array([1.0, 1.0, 1 / half, 1 / half, 1 / half**2, 1 / half**2])
        self._spline = CubicSpline(np.linspace(0, duration, knots), (values - values[0]) * weights * units)
        self.corners = np.array([[-half, -half], [half, -half], [-half, half], [half, half]])
        self.scale = 1.0

    def homographies(self, times: np.ndarray) -> np.ndarray:
        return _homography(self.scale * self._spline(times))

    def max_corner_step(self, times: np.ndarray) -> float:
        """Largest corner displacement between consecutive times (output pixels)."""
        corners = _apply(self.homographies(times), self.corners)
        return float(np.linalg.norm(np.diff(corners, axis=0), axis=-1).max())


def render_image_sequence(photo: np.ndarray, config: BuildConfig, rng: np.random.Generator) -> Rendered:
    """Frames of ``photo`` (float32 (H, W, 3)) under smooth random homography motion."""
    size = config.size
    n_intervals = config.aps_per_sequence + 1  # margin interval before the first and after the last APS frame
    interval = config.image_aps_interval_us
    key_times = np.arange(n_intervals + 1, dtype=np.float64) * interval
    trajectory = _Trajectory(rng, size, key_times[-1])
    target_speed = rng.uniform(*config.speed_px) * size / 128
    # Corner motion grows almost linearly with the scale: a few secant steps hit the target speed.
    for _ in range(4):
        trajectory.scale *= target_speed / max(trajectory.max_corner_step(key_times), 1e-9)
    dense = np.linspace(0, key_times[-1], 400)
    short_side = min(photo.shape[:2])
    zoom_view = size / (rng.uniform(*config.view_fraction) * short_side)
    while True:
        corners = _apply(trajectory.homographies(dense), trajectory.corners).reshape(-1, 2)
        low, high = corners.min(axis=0) - _CANVAS_MARGIN, corners.max(axis=0) + _CANVAS_MARGIN
        extent = high - low  # xy, output pixels
        zoom_fit = max(extent[0] / photo.shape[1], extent[1] / photo.shape[0])
        if zoom_fit <= 1.0:
            break
        trajectory.scale *= 0.8  # the path does not fit in the photo without upsampling it: slow down
    zoom = min(max(zoom_fit, zoom_view), 1.0)
    canvas_shape = (max(round(photo.shape[0] * zoom), math.ceil(extent[1])),
                    max(round(photo.shape[1] * zoom), math.ceil(extent[0])))
    canvas = resize(photo, (*canvas_shape, 3), order=3, anti_aliasing=True).astype(np.float32)
    if not config.color:
        canvas = luminance(canvas)[..., None]
    offset = np.array([rng.uniform(-low[0], canvas_shape[1] - high[0]),
                       rng.uniform(-low[1], canvas_shape[0] - high[1])])

    substeps = max(config.min_substeps, math.ceil(trajectory.max_corner_step(key_times)))
    while True:
        times = np.linspace(0, key_times[-1], n_intervals * substeps + 1)
        step_motion = trajectory.max_corner_step(times)
        if step_motion <= 1.0 or substeps >= config.max_substeps:
            break
        substeps += 1

    coefficients = [ndimage.spline_filter(canvas[..., c], order=3) for c in range(canvas.shape[-1])]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    grid = np.stack([xs.ravel() - (size - 1) / 2, ys.ravel() - (size - 1) / 2], axis=1)
    frames = np.empty((len(times), size, size, canvas.shape[-1]), np.float32)
    for i, source_xy in enumerate(_apply(trajectory.homographies(times), grid)):
        coords = [source_xy[:, 1] + offset[1], source_xy[:, 0] + offset[0]]
        for c, coefficient in enumerate(coefficients):
            frames[i, ..., c] = ndimage.map_coordinates(
                coefficient, coords, order=3, prefilter=False, mode="nearest"
            ).reshape(size, size)
    np.clip(frames, 0.0, 1.0, out=frames)
    return Rendered(
        frames=frames if config.color else frames[..., 0],
        frames_t=np.round(times).astype(np.int64),
        aps_index=substeps * np.arange(1, config.aps_per_sequence + 1, dtype=np.int64),
        substeps=substeps,
        max_step_motion_px=step_motion,
        info={"aps_interval_us": interval, "speed_px_per_aps": trajectory.max_corner_step(key_times),
              "zoom": zoom, "trajectory_scale": trajectory.scale},
    )


def _warp(image: np.ndarray, flow_yx: np.ndarray, factor: float, grid: np.ndarray) -> np.ndarray:
    """Sample image (S, S[, 3]) at x + factor * flow (bilinear, edges clamped)."""
    coords = grid + factor * flow_yx
    if image.ndim == 2:
        return ndimage.map_coordinates(image, coords, order=1, mode="nearest")
    return np.stack([ndimage.map_coordinates(image[..., c], coords, order=1, mode="nearest") for c in range(3)], -1)


def render_clip_sequence(
    keyframes: np.ndarray, fps: float, aps_every: int, config: BuildConfig
) -> Rendered:
    """Temporally upsample keyframes (L, S, S[, 3]) float32 (consecutive source frames at ``fps``)."""
    size = config.size
    gray = keyframes if keyframes.ndim == 3 else luminance(keyframes)
    flow_size = min(size, max(64, size // 2))
    small = resize(gray, (len(gray), flow_size, flow_size), order=1, anti_aliasing=True)
    flows, motion = [], []
    for a, b in itertools.pairwise(small):
        flow = optical_flow_ilk(a, b) * (size / flow_size)
        flows.append(flow)
        motion.append(float(np.percentile(np.hypot(flow[0], flow[1]), 95)))
    max_motion = max(motion)
    substeps = int(np.clip(math.ceil(max_motion), config.min_substeps, config.max_substeps))
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = []
    for j, flow in enumerate(flows):
        flow_full = np.stack([resize(f, (size, size), order=1) for f in flow]).astype(np.float32)
        frames.append(keyframes[j])
        for i in range(1, substeps):
            s = i / substeps
            before = _warp(keyframes[j], flow_full, -s, grid)
            after = _warp(keyframes[j + 1], flow_full, 1 - s, grid)
            frames.append((1 - s) * before + s * after)
    frames.append(keyframes[-1])
    times = np.arange(len(frames), dtype=np.float64) * 1e6 / (fps * substeps)
    stride = substeps * aps_every
    return Rendered(
        frames=np.clip(np.stack(frames), 0.0, 1.0).astype(np.float32),
        frames_t=np.round(times).astype(np.int64),
        aps_index=stride * np.arange(1, config.aps_per_sequence + 1, dtype=np.int64),
        substeps=stride,
        max_step_motion_px=max_motion / substeps,
        info={"aps_interval_us": round(aps_every * 1e6 / fps), "fps": fps, "aps_every": aps_every,
              "flow_p95_px_max": max_motion},
    )


# ----------------------------------------------------------------------------------------------
# Simulation and writing


def simulator_input(frames16: np.ndarray) -> np.ndarray:
    """float32 (N, H, W) the simulator sees: the stored float16 frames (their luminance if RGB)."""
    frames = frames16.astype(np.float32)
    return np.clip(luminance(frames), 0.0, 1.0) if frames.ndim == 4 else frames


def _blur_windows(
    frames16: np.ndarray, frames_t: np.ndarray, aps_index: np.ndarray, exposure_frames: int
) -> dict[str, np.ndarray]:
    first, last, start, end = exposure_window(frames_t, aps_index, exposure_frames // 2)
    blurry = np.stack([frames16[f : l + 1].astype(np.float64).mean(axis=0) for f, l in zip(first, last, strict=True)])
    return {"frames": blurry.astype(np.float16), "first": first, "last": last, "exposure_start": start,
            "exposure_end": end}


def synthesize(rendered: Rendered, config: BuildConfig, rng: np.random.Generator) -> tuple[dict, dict[str, Any]]:
    """Events and blurry frames for a rendered sequence: (arrays to store, metadata)."""
    frames16 = rendered.frames.astype(np.float16)
    c_pos = float(rng.uniform(*config.c_range))
    params = {
        "c_pos": c_pos,
        "c_neg": float(c_pos * rng.uniform(*config.c_asymmetry)),
        "sigma_c": float(rng.uniform(*config.sigma_c_range)),
        "refractory_us": int(rng.integers(config.refractory_us_range[0], config.refractory_us_range[1] + 1)),
        "noise_rate_hz": float(rng.uniform(*config.noise_rate_hz_range)),
        "seed": int(rng.integers(2**31)),
    }
    events = simulate_events(simulator_input(frames16), rendered.frames_t, **params)
    interval_frames = rendered.substeps
    fraction = float(rng.uniform(*config.exposure_fraction))
    exposure_frames = max(3, 2 * round(fraction * interval_frames / 2) + 1)
    exposure_frames = min(exposure_frames, interval_frames + 1 - (interval_frames % 2))
    arrays = {
        "frames": frames16,
        "frames_t": rendered.frames_t,
        "aps_index": rendered.aps_index,
        "event_index": np.searchsorted(events.t, rendered.frames_t, side="right").astype(np.int64),
        "events": events,
        "blur": _blur_windows(frames16, rendered.frames_t, rendered.aps_index, exposure_frames),
    }
    meta = {
        **params,
        "substeps": interval_frames,
        "max_step_motion_px": rendered.max_step_motion_px,
        "exposure_frames": exposure_frames,
        "n_frames": len(frames16),
        "n_aps": len(rendered.aps_index),
        "n_events": len(events),
        **rendered.info,
    }
    return arrays, meta


def write_sequence(path: Path, arrays: dict, meta: dict[str, Any]) -> None:
    """Write one sequence file (layout in evpipe.tools.dataset), atomically via a temporary name."""
    tmp = path.with_suffix(".h5.tmp")
    frames = arrays["frames"]
    with h5py.File(tmp, "w") as f:
        f.create_dataset("frames", data=frames, chunks=(1, *frames.shape[1:]))
        for name in ("frames_t", "aps_index", "event_index"):
            f.create_dataset(name, data=arrays[name])
        events = arrays["events"]
        for name, values in events.arrays().items():
            chunks = (min(_EVENT_CHUNK, len(values)),) if len(values) else None
            f.create_dataset(f"events/{name}", data=values, chunks=chunks, compression="lzf" if chunks else None)
        blur = arrays["blur"]
        f.create_dataset("blur/frames", data=blur["frames"], chunks=(1, *frames.shape[1:]))
        for name in ("first", "last", "exposure_start", "exposure_end"):
            f.create_dataset(f"blur/{name}", data=blur[name].astype(np.int64))
        f.attrs["meta"] = json.dumps(meta)
    tmp.replace(path)


def _crop_resize(frame: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """uint8 RGB (H, W, 3) cropped to box (x0, y0, x1, y1) and resized to (size, size, 3) float32."""
    image = Image.fromarray(frame).resize((size, size), Image.Resampling.LANCZOS, box=box)
    return np.asarray(image, dtype=np.float32) / 255.0


def _source_rng(config: BuildConfig, source: Source) -> np.random.Generator:
    return np.random.default_rng([config.seed, zlib.crc32(source.name.encode())])


def _sequence_meta(source: Source, split: str, index: int, config: BuildConfig) -> dict[str, Any]:
    name = f"{source.name.replace('/', '_')}_{index:02d}"
    return {"name": name, "source": source.name, "kind": source.kind, "split": split, "file": f"{split}/{name}.h5",
            "height": config.size, "width": config.size, "channels": 3 if config.color else 1}


def build_source(source: Source, split: str, config: BuildConfig, root: Path) -> list[dict[str, Any]]:
    """Synthesise and write every sequence of one source under ``root``; returns their metadata."""
    rng = _source_rng(config, source)
    metas = []
    for index, rendered, extra in _render_source(source, config, rng):
        meta = _sequence_meta(source, split, index, config)
        arrays, sim_meta = synthesize(rendered, config, rng)
        meta.update(sim_meta, **extra)
        write_sequence(root / meta["file"], arrays, meta)
        metas.append(meta)
    return metas


def _render_source(
    source: Source, config: BuildConfig, rng: np.random.Generator
) -> Iterator[tuple[int, Rendered, dict[str, Any]]]:
    if isinstance(source, ImageSource):
        photo = source.load()
        for index in range(config.sequences_per_image):
            yield index, render_image_sequence(photo, config, rng), {}
        return
    count, fps, (height, width) = source.info()
    aps_every = max(1, round(fps / 30))
    length = (config.aps_per_sequence + 1) * aps_every + 1
    slots = count // length
    chosen = np.sort(rng.choice(slots, size=min(slots, config.sequences_per_clip), replace=False))
    segments = []
    for slot in chosen:
        side = round(rng.uniform(*config.clip_crop_fraction) * min(height, width))
        x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        segments.append((int(slot) * length, (x0, y0, x0 + side, y0 + side)))
    wanted = {start + i for start, _ in segments for i in range(length)}
    keyframes: dict[int, list[np.ndarray]] = {k: [] for k in range(len(segments))}
    for frame_index, frame in source.frames(wanted):
        for k, (start, box) in enumerate(segments):
            if start <= frame_index < start + length:
                keyframes[k].append(_crop_resize(frame, box, config.size))
    for k, (start, box) in enumerate(segments):
        if len(keyframes[k]) != length:
            raise OSError(f"{source.origin}: decoded {len(keyframes[k])} of the {length} frames from {start}")
        clip = np.stack(keyframes[k])
        clip = clip if config.color else luminance(clip)
        extra = {"source_frames": [start, start + length], "crop_box_xyxy": list(box)}
        yield int(chosen[k]), render_clip_sequence(clip, fps, aps_every, config), extra


def _count(metas: list[dict[str, Any]], k_max: int = 4) -> dict[str, dict[str, int]]:
    counts = {}
    for split in SPLITS:
        seqs = [m for m in metas if m["split"] == split]
        counts[split] = {
            "sources": len({m["source"] for m in seqs}),
            "sequences": len(seqs),
            "frames": sum(m["n_frames"] for m in seqs),
            "aps_frames": sum(m["n_aps"] for m in seqs),
            "events": sum(m["n_events"] for m in seqs),
            "predict_pairs_k1": sum(m["n_aps"] - 1 for m in seqs),
            f"predict_dlt_samples_k1_{k_max}": sum(max(m["n_aps"] - k, 0) for m in seqs for k in range(1, k_max + 1)),
            "deblur_samples": sum(m["n_aps"] for m in seqs),
        }
    return counts


def _worker(job: tuple[Source, str, BuildConfig, Path]) -> list[dict[str, Any]]:
    return build_source(*job)


def build_dataset(
    out: Path,
    config: BuildConfig,
    sources: list[Source],
    name: str,
    preset: str | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build a dataset at ``out`` (written to ``out.partial`` then renamed); returns dataset.json's content."""
    out = Path(out).expanduser()
    if (out / "dataset.json").exists() and not overwrite:
        raise FileExistsError(f"{out}: a dataset already exists here (use --overwrite to replace it)")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate source names: {sorted(n for n in set(names) if names.count(n) > 1)}")
    splits = assign_splits(sources, config)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for split in SPLITS:
        (partial / split).mkdir(parents=True)
    started = time.perf_counter()
    jobs = [(s, splits[s.name], config, partial) for s in sources]
    metas: list[dict[str, Any]] = []
    with tqdm(total=len(jobs), desc=f"building {name}", unit="source", disable=not progress) as bar:
        if workers > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for result in pool.imap_unordered(_worker, jobs):
                    metas += result
                    bar.update()
        else:
            for job in jobs:
                bar.set_postfix_str(job[0].name)
                metas += _worker(job)
                bar.update()
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": name,
        "preset": preset,
        "config": dataclasses.asdict(config),
        "height": config.size,
        "width": config.size,
        "channels": 3 if config.color else 1,
        "seed": config.seed,
        "sources": {s.name: {"kind": s.kind, "origin": s.origin, "split": splits[s.name]} for s in sources},
        "splits": {split: sorted(n for n in names if splits[n] == split) for split in SPLITS},
        "sequences": sorted(metas, key=lambda m: m["name"]),
        "counts": _count(metas),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (partial / "dataset.json").write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(out)
    return meta


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'LOW,HIGH', got {text!r}") from None
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW <= HIGH, got {text!r}")
    return low, high


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evpipe.tools.make_dataset",
        description="Synthesise an event dataset (frames, APS frames, events, blurry frames) from real photos and "
        "clips. Layout and loader: evpipe.tools.dataset.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="tiny: 128x128 gray, 186 sequences (~3 min, 1 GiB); full: 256x256, more per source")
    parser.add_argument("--name", help="dataset name (default: the preset, plus -SIZE/-rgb when overridden)")
    parser.add_argument("--out", type=Path, help="output folder (default: $EVPIPE_DATASETS/NAME or "
                        "~/.cache/evpipe/datasets/NAME)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"real photos and clips (default {DEFAULT_DATA_DIR} if present; without it only "
                        "scikit-image's bundled photos are used)")
    parser.add_argument("--size", type=int, choices=(64, 128, 256), help="output side in pixels")
    parser.add_argument("--color", action=argparse.BooleanOptionalAction, default=None,
                        help="store RGB frames (events still from luminance)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--sequences-per-image", type=int)
    parser.add_argument("--sequences-per-clip", type=int)
    parser.add_argument("--aps-per-sequence", type=int)
    parser.add_argument("--max-substeps", type=int)
    parser.add_argument("--speed-px", type=_range, help="LOW,HIGH corner motion per APS interval at 128 px")
    parser.add_argument("--workers", type=int, default=1, help="processes (each source is one job)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)

    overrides = {key: value for key, value in {
        "size": args.size, "color": args.color, "seed": args.seed, "sequences_per_image": args.sequences_per_image,
        "sequences_per_clip": args.sequences_per_clip, "aps_per_sequence": args.aps_per_sequence,
        "max_substeps": args.max_substeps, "speed_px": args.speed_px,
    }.items() if value is not None}
    try:
        config = dataclasses.replace(PRESETS[args.preset], **overrides)
    except ValueError as error:
        parser.error(str(error))
    name = args.name or args.preset + (f"-{config.size}" if config.size != PRESETS[args.preset].size else "") + (
        "-rgb" if config.color else "")
    out = args.out or default_dataset_path(name)
    data_dir = args.data_dir
    if data_dir is None and DEFAULT_DATA_DIR.is_dir():
        data_dir = DEFAULT_DATA_DIR
    if data_dir is None:
        print(f"note: {DEFAULT_DATA_DIR} not found; using scikit-image's bundled photos only", file=sys.stderr)
    try:
        sources = find_sources(data_dir)
        meta = build_dataset(out, config, sources, name, args.preset, args.workers, args.overwrite)
    except (FileExistsError, FileNotFoundError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    size_mb = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()) / 2**20
    print(f"built {out} in {meta['build_seconds']} s ({size_mb:.0f} MiB)")
    for split, counts in meta["counts"].items():
        print(f"  {split:5s} " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
