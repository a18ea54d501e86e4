"""Scenes for the simulator source: intensity frames as a function of time.

* `PhotoScene`: a real photograph (one that scikit-image ships inside its wheel, so no download) seen
  through a camera in smooth random motion.
* `LogRampScene`: an analytic scene whose log intensity rises linearly in time at every pixel, so the
  exact events an ideal simulator must produce are known (a calibration and test scene).
* `VideoScene`: the frames of a video file (PyAV), gray, centre-cropped and resized.

Frames are float linear intensity in [0, 1], (height, width).

**Motion model (`SinusoidMotion`).** The view is a similarity homography of the photo (rotation θ, log
zoom z, translation T = (tx, ty) in output pixels): output pixel q (relative to the frame centre)
shows canvas point ``u = c + T + e^z R(θ) q``. Each of θ, z, tx, ty is a sum of three sinusoids
``Σ a_m sin(2π f_m t + φ_m)`` with random amplitudes (up to ±0.3 rad, ±0.15, and the translation the
canvas leaves room for), phases, and low frequencies — smooth, bounded for ever (the view never
leaves the photo), deterministic for a seed. A scene point moves in the output at most
``r(|θ'| + |z'|) + |T'| e^{-z}`` pixels per second (r: the frame's half diagonal; derivative bounds
Σ 2π f |a|); the frequencies are scaled so that this bound equals the requested speed, which the
simulator uses to choose its steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import av
import numba as nb
import numpy as np
from PIL import Image

# Images inside the scikit-image wheel (others in skimage.data are downloaded at run time).
PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel", "moon",
          "page", "rocket", "text")
VIEW_FRACTION = 0.4  # of the photo's short side seen at zoom 1: leaves room to move
MAX_ROTATION_RAD = 0.3
MAX_LOG_ZOOM = 0.15
COMPONENTS = 3
FREQUENCY_HZ = (0.05, 0.3)  # before scaling to the requested speed
_EDGE_MARGIN_PX = 2.0  # bilinear sampling reads one pixel beyond the sample point; keep one more spare


def load_photo(name: str) -> np.ndarray:
    """A scikit-image bundled photo as gray float32 (H, W) in [0, 1] (Rec. 709 luma for colour photos)."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; built-in photos: {', '.join(PHOTOS)}")
    import skimage.data
    from skimage.color import rgb2gray

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        return rgb2gray(image[..., :3]).astype(np.float32)
    return (image.astype(np.float32) / 255.0).astype(np.float32)


class SinusoidMotion:
    """θ(t), z(t), tx(t), ty(t), each a sum of sinusoids (see the module docstring).

    ``amplitudes``, ``frequencies_hz``, ``phases``: (4, M) arrays, rows θ [rad], z, tx, ty [px].
    """

    def __init__(self, amplitudes: np.ndarray, frequencies_hz: np.ndarray, phases: np.ndarray) -> None:
        self.amplitudes = np.asarray(amplitudes, np.float64)
        self.frequencies_hz = np.asarray(frequencies_hz, np.float64)
        self.phases = np.asarray(phases, np.float64)

    def at(self, t_s: float) -> np.ndarray:
        """(θ, z, tx, ty) at time ``t_s`` seconds: float64 (4,)."""
        return (self.amplitudes * np.sin(2 * np.pi * self.frequencies_hz * t_s + self.phases)).sum(axis=1)

    def rate_bounds(self) -> np.ndarray:
        """Upper bounds of |dθ/dt|, |dz/dt|, |dtx/dt|, |dty/dt| per second: float64 (4,)."""
        return (2 * np.pi * self.frequencies_hz * np.abs(self.amplitudes)).sum(axis=1)

    def speed_bound(self, radius_px: float) -> float:
        """Most output pixels per second any scene point within ``radius_px`` of the centre can move."""
        rot, zoom, tx, ty = self.rate_bounds()
        min_zoom = math.exp(-np.abs(self.amplitudes[1]).sum())
        return float(radius_px * (rot + zoom) + math.hypot(tx, ty) / min_zoom)


class PhotoScene:
    """A photo under `SinusoidMotion`, rendered by bilinear sampling of an anti-aliased canvas.

    ``photo``: float32 (H, W) in [0, 1]; ``width``/``height``: the output frame; ``speed_px_s``: the
    motion bound (module docstring). The canvas is the photo resized once so the output covers
    `VIEW_FRACTION` of its short side at zoom 1.
    """

    def __init__(self, photo: np.ndarray, width: int, height: int, speed_px_s: float, seed: int) -> None:
        self.width, self.height = width, height
        rng = np.random.default_rng(seed)
        short = min(photo.shape)
        scale = min(width, height) / (VIEW_FRACTION * short)
        canvas_size = (max(round(photo.shape[1] * scale), 1), max(round(photo.shape[0] * scale), 1))
        self.canvas = np.array(Image.fromarray(photo).resize(canvas_size, Image.Resampling.LANCZOS), np.float32)
        np.clip(self.canvas, 0.0, 1.0, out=self.canvas)
        self.radius = math.hypot(width / 2, height / 2)
        reach = self.radius * math.exp(MAX_LOG_ZOOM) + _EDGE_MARGIN_PX
        room = np.array([self.canvas.shape[1] / 2 - reach, self.canvas.shape[0] / 2 - reach])
        if np.any(room <= 0):
            raise ValueError(f"the photo ({photo.shape[1]}x{photo.shape[0]}) is too small for a {width}x{height} view")

        def split(total: float) -> np.ndarray:
            """Random amplitudes, sum of magnitudes in [total/2, total]."""
            weights = rng.dirichlet(np.ones(COMPONENTS))
            return rng.uniform(0.5, 1.0) * total * weights * rng.choice([-1.0, 1.0], COMPONENTS)

        amplitudes = np.stack([split(MAX_ROTATION_RAD), split(MAX_LOG_ZOOM), split(room[0]), split(room[1])])
        frequencies = rng.uniform(*FREQUENCY_HZ, size=(4, COMPONENTS))
        phases = rng.uniform(0, 2 * np.pi, size=(4, COMPONENTS))
        unit = SinusoidMotion(amplitudes, frequencies, phases)
        # Speed is linear in the frequencies: one scale hits the requested bound exactly.
        self.motion = SinusoidMotion(amplitudes, frequencies * speed_px_s / unit.speed_bound(self.radius), phases)
        self.speed_px_s = self.motion.speed_bound(self.radius)
        self._centre = np.array([(self.canvas.shape[0] - 1) / 2, (self.canvas.shape[1] - 1) / 2])
        self._out_centre = np.array([(height - 1) / 2, (width - 1) / 2])

    def render(self, t_s: float) -> np.ndarray:
        """The view at ``t_s`` seconds: float32 (height, width) in [0, 1] (a new array)."""
        rot, log_zoom, tx, ty = self.motion.at(t_s)
        s = math.exp(log_zoom)
        cos, sin = math.cos(rot), math.sin(rot)
        matrix = s * np.array([[cos, sin], [-sin, cos]])  # (row, col) form of u = c + T + s R(θ) q
        offset = self._centre + np.array([ty, tx]) - matrix @ self._out_centre
        out = np.empty((self.height, self.width), np.float32)
        _warp_bilinear(self.canvas, matrix, offset, out)
        return out


@nb.njit(cache=True)
def _warp_bilinear(canvas: np.ndarray, matrix: np.ndarray, offset: np.ndarray, out: np.ndarray) -> None:
    """out[i, j] = canvas sampled bilinearly at matrix @ (i, j) + offset (row, col); coordinates clamped to
    the canvas (the view stays inside it by construction)."""
    rows, cols = canvas.shape
    m00, m01, m10, m11 = matrix[0, 0], matrix[0, 1], matrix[1, 0], matrix[1, 1]
    top_r, top_c = rows - 1.0, cols - 1.0
    for i in range(out.shape[0]):
        r_row = m00 * i + offset[0]
        c_row = m10 * i + offset[1]
        for j in range(out.shape[1]):
            r = min(max(r_row + m01 * j, 0.0), top_r)
            c = min(max(c_row + m11 * j, 0.0), top_c)
            r0, c0 = min(int(r), rows - 2), min(int(c), cols - 2)
            fr, fc = np.float32(r - r0), np.float32(c - c0)
            top = canvas[r0, c0] + (canvas[r0, c0 + 1] - canvas[r0, c0]) * fc
            bottom = canvas[r0 + 1, c0] + (canvas[r0 + 1, c0 + 1] - canvas[r0 + 1, c0]) * fc
            out[i, j] = top + (bottom - top) * fr


class LogRampScene:
    """Log intensity ``L(x, t) = L0(x) + rate·t`` with ``L = log(I + log_eps)``: every pixel's log intensity
    rises by ``rate`` per second, from a horizontal gradient (I from 0.05 to 0.25 at t = 0) until the
    brightest column reaches I = 1 at ``duration_s``.

    An ideal simulator with threshold C started at t = 0 emits exactly ``floor(rate·t/C)`` ON events per
    pixel by time t, the j-th at ``j·C/rate`` seconds.
    """

    def __init__(self, width: int, height: int, duration_s: float, log_eps: float) -> None:
        self.width, self.height, self.log_eps = width, height, log_eps
        low, high = math.log(0.05 + log_eps), math.log(0.25 + log_eps)
        column = low + (high - low) * np.arange(width) / max(width - 1, 1)
        self.l0 = np.broadcast_to(column, (height, width))
        self.rate = (math.log(1.0 + log_eps) - high) / duration_s

    def render(self, t_s: float) -> np.ndarray:
        """Linear intensity at ``t_s`` seconds: float64 (height, width) in [0, 1] (float64 keeps L exact)."""
        return np.clip(np.exp(self.l0 + self.rate * t_s) - self.log_eps, 0.0, 1.0)


class VideoScene:
    """Frames of a video file decoded with PyAV: gray (the decoder's luma), centre-cropped to the output's
    aspect ratio and resized (Lanczos). Times are µs since the first frame, from the stream's
    timestamps; frames that do not advance in time are skipped."""

    def __init__(self, path: str | Path, width: int, height: int) -> None:
        self.path = Path(path)
        self.width, self.height = width, height
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError, OSError) as exc:
            raise ValueError(f"{self.path}: cannot be read as a video ({exc})") from None
        rate = self._stream.average_rate
        self.fps = float(rate) if rate else 0.0

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """(t µs, float32 (height, width) in [0, 1]) for every decoded frame."""
        first: float | None = None
        last_t = -1
        try:
            for index, frame in enumerate(self._container.decode(self._stream)):
                seconds = frame.time if frame.time is not None else index / (self.fps or 30.0)
                first = seconds if first is None else first
                t = round((seconds - first) * 1e6)
                if t <= last_t:
                    continue
                last_t = t
                yield t, self._fit(frame.to_ndarray(format="gray"))
        except av.error.FFmpegError as exc:
            raise ValueError(f"{self.path}: decoding failed after {max(last_t, 0)} µs ({exc})") from None

    def _fit(self, gray: np.ndarray) -> np.ndarray:
        h, w = gray.shape
        aspect = self.width / self.height
        crop_w, crop_h = (round(h * aspect), h) if w / h > aspect else (w, round(w / aspect))
        x0, y0 = (w - crop_w) // 2, (h - crop_h) // 2
        image = Image.fromarray(np.ascontiguousarray(gray[y0:y0 + crop_h, x0:x0 + crop_w]))
        resized = image.resize((self.width, self.height), Image.Resampling.LANCZOS)
        return np.asarray(resized, np.float32) / 255.0

    def close(self) -> None:
        self._container.close()
