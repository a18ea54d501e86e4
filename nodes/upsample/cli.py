"""``evpipe upsample IN OUT --factor 4``: raise a video's frame rate with HiFI, with a progress bar.

IN is a video file (anything PyAV/FFmpeg decodes) or a folder of images (PNG/JPEG/TIFF/BMP, taken
in name order); OUT is a video file (``.mp4``, ``.mkv``, ``.avi``, ``.mov``; H.264 at ``factor`` × the
input rate, 25 fps for an image folder unless ``--fps``) or a folder (written as
``frame_000000.png`` ...). Colour in, colour out: the gray checkpoint (``tiny-real-scales`` by default) runs on the
luma and the chroma is carried (see ``Upsampler``); a gray clip stays gray.
This module imports torch only when the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from evpipe.nodes.model_engines import add_engine_arguments, choose_engine
from evpipe.nodes.upsample import DEFAULT_CHECKPOINT

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class UpsampleInputError(ValueError):
    """An input or output path that cannot be used; the message names it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="video file or folder of images")
    parser.add_argument("output", type=Path, help="video file (.mp4/.mkv/.avi/.mov) or a folder for PNG frames")
    add_model_arguments(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The upsampling settings (shared with ``evpipe batch upsample``)."""
    parser.add_argument("--factor", type=int, default=2, help="frame-rate multiplier: 2, 4, 8 or 16 (default 2)")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help=f"shipped checkpoint name or a .pt file (default {DEFAULT_CHECKPOINT}; tiny: trained on "
                        "synthetic data only)")
    parser.add_argument("--levels", type=int, help="cascade levels (default 3; 1 = no cascade)")
    parser.add_argument("--steps", type=int, help="DDIM steps per level (default 1; the paper's sampler: 8)")
    parser.add_argument("--samples", type=int,
                        help="samples averaged per level (default 1; the paper's sampler: 4; the default scored "
                        "higher on held-out real clips at 1/30 of the time: benchmarks/upsample_videos_test_640.md)")
    parser.add_argument("--fps", type=float, help="input frame rate (default: the video's; 25 for images)")
    parser.add_argument("--max-frames", type=int, help="read at most this many input frames")
    add_engine_arguments(parser, "upsample")


def _read_video(path: Path, max_frames: int | None) -> tuple[list[np.ndarray], float]:
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 25)
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0)
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError, OSError) as error:
        raise UpsampleInputError(f"{path}: cannot read a video stream ({error})") from None
    return frames, fps


def _read_folder(path: Path, max_frames: int | None) -> list[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_frames]
    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("RGB"), np.float32) / 255.0)
        except (UnidentifiedImageError, OSError) as error:
            raise UpsampleInputError(f"{file}: not a readable image ({error})") from None
    return frames


def read_frames(path: Path, max_frames: int | None = None) -> tuple[list[np.ndarray], float | None]:
    """(frames float32 (H, W, 3) in [0, 1], frame rate or None for a folder)."""
    if path.is_dir():
        return _read_folder(path, max_frames), None
    if not path.is_file():
        raise UpsampleInputError(f"{path}: no such file or folder")
    return _read_video(path, max_frames)


class FrameWriter:
    """Writes frames (float32 (H, W) or (H, W, 3) in [0, 1]) to a video file or a folder of PNGs."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self.count = path, fps, 0
        self.container = self.stream = None
        self.video = path.suffix.lower() in VIDEO_SUFFIXES
        if not self.video:
            if path.suffix:
                raise UpsampleInputError(f"{path}: output must be a video ({', '.join(VIDEO_SUFFIXES)}) or a folder")
            path.mkdir(parents=True, exist_ok=True)

    def write(self, image: np.ndarray) -> None:
        rgb = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        if self.video:
            import av

            if self.container is None:
                try:
                    self.container = av.open(str(self.path), "w")
                except (av.error.FFmpegError, OSError) as error:
                    raise UpsampleInputError(f"{self.path}: cannot write ({error})") from None
                self.stream = self.container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1000))
                # yuv420p needs even sides: the last odd row/column is dropped.
                self.stream.width, self.stream.height = rgb.shape[1] & ~1, rgb.shape[0] & ~1
                self.stream.pix_fmt = "yuv420p"
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(rgb[:self.stream.height, :self.stream.width]), format="rgb24")
            frame.pts = self.count
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        else:
            from PIL import Image

            Image.fromarray(rgb).save(self.path / f"frame_{self.count:06d}.png")
        self.count += 1

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()


def model_images(frames: list[np.ndarray], channels: int) -> list[np.ndarray]:
    """The frames as the upsampler takes them: a gray clip (every frame gray, :func:`is_gray`) as (H, W)
    for a gray model, so it stays gray; a colour clip as it is (a gray model runs on its luma and carries
    its chroma, see :class:`~evpipe.nodes.upsample.cascade.Upsampler`)."""
    from evpipe.nodes.colour import gray_unit, is_gray

    if channels == 1 and all(is_gray(frame) for frame in frames):
        return [gray_unit(frame) for frame in frames]
    return frames


def upsampled(frames: list[np.ndarray], factor: int, upsampler) -> Iterator[np.ndarray]:
    """Every input frame followed by the ``factor - 1`` frames between it and the next, with a progress bar."""
    from tqdm import tqdm

    images = model_images(frames, upsampler.model.config.channels)
    for i in tqdm(range(len(images)), desc=f"upsample x{factor}", unit="frame"):
        yield images[i]
        if i + 1 < len(images):
            yield from upsampler.between(images[i], images[i + 1], factor)


def load_clip(args: argparse.Namespace) -> tuple[list[np.ndarray], float]:
    """The checked input frames and their rate; raises UpsampleInputError naming the problem."""
    if args.factor not in (2, 4, 8, 16):
        raise UpsampleInputError(f"--factor must be 2, 4, 8 or 16, got {args.factor}")
    # Before reading anything: a backend or device that is missing stops the command (exit 2).
    choose_engine("upsample", vars(args), auto_forms=("torch",))
    frames, fps = read_frames(Path(args.input), args.max_frames)
    if len(frames) < 2:
        raise UpsampleInputError(f"{args.input}: need at least two frames, found {len(frames)}")
    if len({frame.shape for frame in frames}) != 1:
        raise UpsampleInputError(f"{args.input}: frames differ in size")
    return frames, args.fps or fps or 25.0


def cascade_counts(args: argparse.Namespace) -> dict[str, int]:
    """The command's levels, steps and samples: those given, the rest the defaults'."""
    from evpipe.nodes.upsample.cascade import CascadeSettings

    base = CascadeSettings()
    return {name: getattr(base, name) if getattr(args, name) is None else getattr(args, name)
            for name in ("levels", "steps", "samples")}


def make_upsampler(args: argparse.Namespace):
    """The cascade with the command's settings (the checkpoint's patch size)."""
    from evpipe.nodes.upsample.cascade import CascadeSettings, Upsampler
    from evpipe.nodes.upsample.model import load_checkpoint

    patch = load_checkpoint(args.checkpoint).config.patch
    settings = CascadeSettings(**cascade_counts(args), patch=patch)
    return Upsampler(args.checkpoint, settings, args.device, args.backend, args.precision)


def run(args: argparse.Namespace) -> int:
    """The command: returns the exit status; raises UpsampleInputError / ValueError / FileNotFoundError."""
    frames, fps = load_clip(args)
    upsampler = make_upsampler(args)
    choice = upsampler.choice
    print(f"upsample: backend {choice.backend}, device {choice.device}, precision {choice.precision}")
    writer = FrameWriter(args.output, fps * args.factor)
    try:
        for image in upsampled(frames, args.factor, upsampler):
            writer.write(image)
    finally:
        writer.close()
        upsampler.close()
    print(f"wrote {writer.count} frames to {args.output} ({fps * args.factor:g} fps); engine cache: "
          f"{upsampler.network.summary()['cache']}")
    return 0
