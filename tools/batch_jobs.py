"""The work of an ``evpipe batch`` run, without the engine: one graph run, one restore window, one
upsample frame pair, and joining a video's pieces into the file the serial command writes.

:mod:`evpipe.tools.batch` runs these on Ray (graph runs as tasks, the models in actors that load
their checkpoint once); nothing here imports Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.tools.batch_manifest import checksums, graph_figures
from evpipe.tools.batch_plan import GraphJob

ATTEMPTS_LOG = "attempts.log"


class JobError(RuntimeError):
    """A job that ran and failed; the message says why (retried, then reported)."""


def note_attempt(out: Path, stem: str, attempt: int) -> None:
    """Append who runs which attempt of an input to ``OUT/.batch/attempts.log`` (one JSON line each):
    the record that shows a retried input ran again and no other input ran twice."""
    log = out / ".batch" / ATTEMPTS_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"stem": stem, "attempt": attempt, "pid": os.getpid(), "host": socket.gethostname(),
                       "time": time.time()})
    with open(log, "a") as file:  # one short write per line: lines of concurrent workers do not interleave
        file.write(line + "\n")


def run_graph_job(job: GraphJob, out: Path, attempt: int) -> dict[str, Any]:
    """Run the graph on one input into its staging folder, then move the outputs to ``OUT/<stem>/``.
    Returns the manifest fields; raises JobError when the graph fails or is interrupted."""
    from rich.console import Console

    from evpipe.runtime.graph import load_graph
    from evpipe.runtime.supervisor import Supervisor

    note_attempt(out, job.stem, attempt)
    started = time.monotonic()
    shutil.rmtree(job.staging, ignore_errors=True)  # what an earlier, killed attempt left
    job.staging.mkdir(parents=True)
    graph = load_graph(job.config, job.overrides)
    result = Supervisor(graph, console=Console(stderr=True, quiet=True), log_level="WARNING").run()
    report = result.report
    if result.exit_code != 0 or report.get("interrupted"):
        failures = [f"{name}: {node.get('error')}" for name, node in (report.get("nodes") or {}).items()
                    if isinstance(node, dict) and node.get("error")]
        why = "interrupted" if report.get("interrupted") else f"exit code {result.exit_code}"
        raise JobError(f"graph {graph.name} on {job.input} {why}" + (f": {'; '.join(failures)}" if failures else ""))
    return {**publish(job.staging, job.folder, report), "seconds": time.monotonic() - started,
            **graph_figures(report)}


# -- restore ------------------------------------------------------------------------------------------
def restore_graph(args: argparse.Namespace, source: Path, output: Path):
    """The graph ``evpipe restore`` runs for this input (its parameters are the batch's too)."""
    from evpipe.nodes.restore.cli import config_path, graph_overrides
    from evpipe.runtime.graph import load_graph

    return load_graph(config_path(), graph_overrides(args, source, output))


class RestoreModel:
    """Restores windows of one clip's settings; the prior is loaded once, in the constructor."""

    def __init__(self, params: dict[str, Any]) -> None:
        from evpipe.nodes.restore.node import open_prior
        from evpipe.nodes.restore.psf import temporal_psf
        from evpipe.nodes.restore.windows import sampler_config

        self.params = params
        self.choice, self.model, self.network = open_prior("restore", params)
        self.config = sampler_config(params)
        self.psf = temporal_psf(params["degradation"])

    def restore(self, frames: np.ndarray) -> np.ndarray:
        from evpipe.nodes.restore.windows import restore_any_window

        p = self.params
        return restore_any_window(self.model, self.psf, frames, self.config, spatial=p["spatial"],
                                  boundary=p["boundary"], device=self.choice.device, network=self.network)


def read_clip(clip_params: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
    """Frames float32 (N, H, W, 3) for a colour clip or (N, H, W) for a gray one, and their times, read as
    ``clip_reader`` reads them and converted as the ``restore`` node converts them (the first frame decides)."""
    from evpipe.nodes.colour import is_gray, unit_image
    from evpipe.nodes.restore.node import ClipReader
    from evpipe.nodes.restore.windows import clip_image

    reader = ClipReader("clip", clip_params)
    reader.start()
    images, times, colour = [], [], None
    for _, msg in reader.produce():
        frame = msg.frame()
        if colour is None:
            colour = not is_gray(unit_image(frame.image))
        images.append(clip_image(frame.image, colour))
        times.append(frame.t)
    return np.stack(images), times


def write_restored(video_params: dict[str, Any], windows: list[np.ndarray], overlap: int, times: list[int],
                   degradation: str) -> dict[str, Any]:
    """Join restored windows (in order) as the node does and write them with the ``video`` sink's own code,
    so the file is the one ``evpipe restore`` writes from the same frames. Returns the sink's report."""
    from evpipe.nodes.restore.windows import WindowStitcher, restored_message
    from evpipe.nodes.sinks.video import VideoWriter

    sink = VideoWriter("video", video_params)
    reports: list[dict[str, Any]] = []
    sink.attach_reporter(reports.append)
    sink.start()
    stitcher, sent = WindowStitcher(overlap), 0
    try:
        for index, restored in enumerate(windows):
            writable = np.array(restored)  # arrays back from an engine may be read-only; the stitcher fades in place
            for image in stitcher.add(writable, final=index == len(windows) - 1):
                msg = restored_message(image, times[sent], degradation)
                msg.stream, msg.seq = "restore.frames", sent
                sink.process("in", msg)
                sent += 1
    finally:
        sink.stop()
    if sent != len(times):
        raise JobError(f"restored {sent} frames of {len(times)}")
    return reports[0] if reports else {}


# -- upsample -----------------------------------------------------------------------------------------
class UpsampleModel:
    """Fills in frame pairs with HiFI; the checkpoint is loaded once, in the constructor."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from evpipe.nodes.upsample.cli import make_upsampler

        self.factor = settings["factor"]
        self.upsampler = make_upsampler(argparse.Namespace(**settings))

    def between(self, image0: np.ndarray, image1: np.ndarray) -> list[np.ndarray]:
        return self.upsampler.between(image0, image1, self.factor)


def write_upsampled(output: Path, fps: float, images: list[np.ndarray], middles: list[list[np.ndarray]]) -> int:
    """Every frame followed by the frames between it and the next, written as ``evpipe upsample`` writes them;
    returns the frames written."""
    from evpipe.nodes.upsample.cli import FrameWriter

    writer = FrameWriter(output, fps)
    try:
        for i, image in enumerate(images):
            writer.write(image)
            for middle in middles[i] if i < len(middles) else []:
                writer.write(middle)
    finally:
        writer.close()
    return writer.count


def publish(staging: Path, folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write ``report.json`` beside the outputs in ``staging``, move the folder to ``folder``; returns
    the manifest fields (every file's checksum)."""
    (staging / "report.json").write_text(json.dumps(report, indent=1, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, folder)
    outputs = checksums(folder)
    return {"outputs": outputs, "report_sha256": outputs.get("report.json")}
