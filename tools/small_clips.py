"""Short, small copies of real videos: what the batch tests and benchmark restore and upsample on a CPU.

    python -m evpipe.tools.small_clips ../shared/data/video_gallery/01_dog.mp4 dog_64x48.mp4 --size 64 48 --frames 20
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av


def small_clip(source: Path, dest: Path, width: int, height: int, frames: int, fps: int = 25) -> Path:
    """The first ``frames`` frames of ``source`` scaled to ``width`` x ``height`` (even sides), H.264 at ``fps``."""
    if width % 2 or height % 2:
        raise ValueError(f"H.264 needs even sides, got {width}x{height}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as reader, av.open(str(dest), "w") as writer:
        stream = writer.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        written = 0
        for frame in reader.decode(video=0):
            if written == frames:
                break
            scaled = frame.reformat(width=width, height=height, format="yuv420p")
            scaled.pts, scaled.time_base = written, Fraction(1, fps)
            for packet in stream.encode(scaled):
                writer.mux(packet)
            written += 1
        for packet in stream.encode():
            writer.mux(packet)
    if written < frames:
        raise ValueError(f"{source}: has {written} frames, fewer than {frames}")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 48), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--frames", type=int, default=20)
    args = parser.parse_args(argv)
    small_clip(args.source, args.dest, *args.size, args.frames)
    print(f"wrote {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
