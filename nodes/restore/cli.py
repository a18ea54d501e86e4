"""``evpipe restore IN OUT --degradation ...``: run the shipped graph ``configs/restore_clip.yaml``
(clip_reader -> restore -> video) on one clip, with its parameters set from the command line."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from rich.console import Console

from evpipe.nodes.model_engines import add_engine_arguments
from evpipe.nodes.restore.node import DEGRADATIONS, SPATIAL, VIDEO_SUFFIXES
from evpipe.nodes.restore.psf import BOUNDARIES, DEFAULT_BOUNDARY

CONFIG = "restore_clip.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help=f"degraded clip: a video file ({', '.join(VIDEO_SUFFIXES)}) or an event "
                        "recording with APS frames")
    parser.add_argument("output", help="restored video (.mp4)")
    add_model_arguments(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The restoration settings (shared with ``evpipe batch restore``)."""
    parser.add_argument("--degradation", required=True, choices=DEGRADATIONS, help="the clip's temporal PSF")
    parser.add_argument("--boundary", default=DEFAULT_BOUNDARY, choices=BOUNDARIES,
                        help="frames beyond a window in the PSF: wrapped (default, the paper's code) or replicated")
    parser.add_argument("--spatial", default="none", choices=SPATIAL, help="spatial degradation after the PSF")
    parser.add_argument("--nfe", type=int, help="sampler steps per window (default 20; 100 with --spatial)")
    parser.add_argument("--eta", type=float, help="DDIM stochasticity (default 0.15; 0.8 with --spatial)")
    parser.add_argument("--cg-steps", type=int, default=5, help="CG steps per sampler step (default 5)")
    parser.add_argument("--time-power", type=float, default=1.0,
                        help="sampler time grid t_i = (1 - i/nfe)^p (default 1, the paper's even grid)")
    parser.add_argument("--window", type=int, default=16, help="frames restored together (default 16)")
    parser.add_argument("--overlap", type=int, default=4, help="frames shared by consecutive windows (default 4)")
    parser.add_argument("--fps", type=float, help="frame rate of the output (default: the input video's, else 25)")
    parser.add_argument("--checkpoint", default="tiny", help="prior: shipped name or .pt file (default tiny)")
    parser.add_argument("--seed", type=int, default=0)
    add_engine_arguments(parser, "restore")


def _video_rate(path: Path) -> float | None:
    import av

    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
            return float(rate) if rate else None
    except (av.error.FFmpegError, IndexError):
        return None  # the reader node reports an undecodable file with its own error


def config_path() -> Path:
    """The shipped graph this command runs."""
    return Path(str(resources.files("evpipe.configs").joinpath(CONFIG)))


def graph_overrides(args: argparse.Namespace, source: Path, output: str | Path) -> list[str]:
    """``NODE.PARAM=VALUE`` settings of :data:`CONFIG` that restore ``source`` into ``output``."""
    spatial = args.spatial != "none"
    nfe = args.nfe if args.nfe is not None else (100 if spatial else 20)
    eta = args.eta if args.eta is not None else (0.8 if spatial else 0.15)
    fps = args.fps or (_video_rate(source) if source.suffix.lower() in VIDEO_SUFFIXES else None) or 25.0
    return [f"clip.path={source}", f"video.path={output}", f"video.fps={fps}",
            f"restore.degradation={args.degradation}", f"restore.boundary={args.boundary}",
            f"restore.spatial={args.spatial}", f"restore.nfe={nfe}",
            f"restore.eta={eta}", f"restore.cg_steps={args.cg_steps}", f"restore.time_power={args.time_power}",
            f"restore.window={args.window}", f"restore.overlap={args.overlap}",
            f"restore.checkpoint={args.checkpoint}", f"restore.seed={args.seed}",
            f"restore.backend={args.backend}", f"restore.device={args.device}",
            f"restore.precision={args.precision}"]


def run(args: argparse.Namespace, console: Console) -> int:
    """Build the overrides and run the graph as ``evpipe run`` does; returns its exit code."""
    from evpipe.runtime.cli import cmd_run

    source = Path(args.input)
    if not source.exists():
        console.print(f"[bold red]error:[/] input {source} does not exist", highlight=False)
        return 2
    overrides = graph_overrides(args, source, args.output)
    return cmd_run(argparse.Namespace(config=str(config_path()), set=overrides, view=False, view_port=0, host=None,
                                      log_level=getattr(args, "log_level", "INFO"),
                                      report=None), console)
