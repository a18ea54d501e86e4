"""``evpipe batch``: a graph, or the offline ``restore`` / ``upsample`` models, over many inputs on Ray.

    evpipe batch CONFIG --inputs 'recordings/*.aedat4' --out DIR [--param NODE.PARAM] [--set NODE.PARAM=V]
    evpipe batch restore --inputs 'videos/*.mp4' --out DIR --degradation uniform7 [restore options]
    evpipe batch upsample --inputs 'videos/*.mp4' --out DIR --factor 4 [upsample options]

Without ``--address`` the command starts a Ray instance on this machine and stops it at the end; with
``--address auto`` (the cluster ``ray start`` made on this machine), ``HOST:PORT`` or ``ray://HOST:10001``
it uses that cluster. A graph run is one Ray task asking for the CPUs/GPUs of its graph
(:func:`evpipe.tools.batch_plan.resources_for`); it writes to ``OUT``, so on a cluster ``OUT`` and the
inputs must be on storage every node sees. The models run in actors that load their checkpoint once;
the driver reads each video, sends its windows / frame pairs to them, joins the results and writes
``OUT/<stem>/`` itself. Retries are this module's (Ray's own are off), so each attempt is counted.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import multiprocessing
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from evpipe.runtime.graph import ConfigError
from evpipe.tools.batch_manifest import Manifest, write_summary
from evpipe.tools.batch_plan import BatchError, expand_inputs, fingerprint, pair_units, plan_graph_jobs, resources_for

INSTALL_HINT = "evpipe batch runs on Ray, which is not installed: pip install 'evpipe[batch]'"
MODEL_TARGETS = ("restore", "upsample")
LOCAL_OBJECT_STORE = 1 << 30  # bytes; Ray's default (30% of memory) is too much on a shared machine


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inputs", action="append", required=True, metavar="GLOB",
                        help="input files (quote the pattern; ** recurses; repeat for several)")
    parser.add_argument("--out", required=True, type=Path, help="output folder: OUT/<input stem>/, the manifest "
                        "and batch_report.json/.md")
    parser.add_argument("--address", help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: a Ray "
                        "started on this machine for this command)")
    parser.add_argument("--num-cpus", type=int, help="local Ray only: CPUs to use (default: all)")
    parser.add_argument("--object-store-memory", type=int, metavar="BYTES",
                        help=f"local Ray only: object store size (default {LOCAL_OBJECT_STORE >> 20} MiB)")
    parser.add_argument("--max-attempts", type=int, default=3,
                        help="tries per input (restore/upsample: per window or pair) before it is reported failed")


def build_parser(target: str) -> argparse.ArgumentParser:
    if target == "restore":
        from evpipe.nodes.restore.cli import add_model_arguments

        parser = argparse.ArgumentParser(prog="evpipe batch restore", description="DDS restoration of many videos")
        add_model_arguments(parser)
    elif target == "upsample":
        from evpipe.nodes.upsample.cli import add_model_arguments

        parser = argparse.ArgumentParser(prog="evpipe batch upsample", description="HiFI upsampling of many videos")
        add_model_arguments(parser)
    else:
        parser = argparse.ArgumentParser(prog=f"evpipe batch {target}", description="run a graph once per input")
        parser.add_argument("--param", metavar="NODE.PARAM", help="the source parameter each input is bound to "
                            "(default: the graph's only source with a 'path')")
        parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                            help="override a parameter for every input")
    _engine_arguments(parser)
    return parser


class Batch:
    """Inputs, their state, the summary rows; the engine loop calls ``submit`` / ``done`` / ``failed``."""

    def __init__(self, args: argparse.Namespace, command: str, console: Console) -> None:
        self.args, self.command, self.console = args, command, console
        self.manifest = Manifest(args.out)
        self.rows: dict[str, dict[str, Any]] = {}
        self.stop: Callable[[], None] = lambda: None  # the engine's way to stop what is in flight (Ctrl-C)
        # Set by Ctrl-C: the run counts as interrupted even where Ray turns the KeyboardInterrupt raised inside
        # one of its calls into a task error, and the scheduler stops at its next turn.
        self.interrupted = threading.Event()

    def row(self, stem: str, path: Path, **fields: Any) -> None:
        self.rows.setdefault(stem, {"stem": stem, "input": str(path), "status": "not started", "attempts": 0})
        self.rows[stem].update(fields)

    def skip_finished(self, stem: str, path: Path, settings: str, folder: Path) -> bool:
        if not self.manifest.finished(stem, settings, folder):
            return False
        entry = self.manifest.entries[stem]
        self.row(stem, path, **{k: v for k, v in entry.items() if k not in ("outputs", "settings", "status")},
                 status="skipped")
        return True

    def record(self, stem: str, settings: str, fields: dict[str, Any]) -> None:
        self.rows[stem].update(fields)
        self.manifest.record(stem, {**{k: v for k, v in self.rows[stem].items() if k != "stem"},
                                    "settings": settings, **fields})


def _error_text(error: BaseException) -> str:
    cause = getattr(error, "cause", None)
    text = str(cause if cause is not None else error).strip().splitlines()
    return f"{type(cause or error).__name__}: {text[-1] if text else ''}"


class Scheduler:
    """Runs units of work with bounded attempts: ``submit(unit, attempt) -> ObjectRef`` starts one,
    ``on_done(unit, value)`` / ``on_failed(unit, error)`` take the outcome. ``capacity()`` bounds the
    units in flight; ``refill()`` may add units while it runs (videos are read as workers free up);
    ``settle(ref, error)`` hears of every unit that came back, before any retry."""

    def __init__(self, ray: Any, max_attempts: int, interrupted: threading.Event) -> None:
        self.ray, self.max_attempts, self.interrupted = ray, max_attempts, interrupted
        self.pending: collections.deque = collections.deque()
        self.in_flight: dict[Any, Any] = {}
        self.attempts: collections.Counter = collections.Counter()
        self.dropped: set[Any] = set()

    def run(self, submit: Callable[[Any, int], Any], on_done: Callable[[Any, Any], None],
            on_failed: Callable[[Any, BaseException], None], capacity: Callable[[], int],
            refill: Callable[[], None] = lambda: None,
            settle: Callable[[Any, BaseException | None], None] = lambda ref, error: None) -> None:
        refill()
        while self.pending or self.in_flight:
            if self.interrupted.is_set():
                raise KeyboardInterrupt
            while self.pending and len(self.in_flight) < capacity():
                unit = self.pending.popleft()
                if unit in self.dropped:
                    continue
                self.attempts[unit] += 1
                self.in_flight[submit(unit, self.attempts[unit])] = unit
            if not self.in_flight:
                continue
            ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                unit = self.in_flight.pop(ref)
                try:
                    value = self.ray.get(ref)
                except self.ray.exceptions.RayError as error:  # the job raised, or its worker/actor died
                    settle(ref, error)
                    if self.attempts[unit] < self.max_attempts:
                        self.pending.appendleft(unit)
                    else:
                        on_failed(unit, error)
                    continue
                settle(ref, None)
                on_done(unit, value)
            refill()


# -- graphs ---------------------------------------------------------------------------------------------
def run_graphs(ray: Any, batch: Batch, config: Path, bar: Any) -> None:
    """Every input's graph run as a task (``batch.stop`` cancels those in flight)."""
    from evpipe.tools.batch_jobs import run_graph_job

    args = batch.args
    jobs = plan_graph_jobs(config, expand_inputs(args.inputs), args.out.resolve(), args.param, args.set)
    todo = {}
    for job in jobs:
        batch.row(job.stem, job.input)
        if not batch.skip_finished(job.stem, job.input, job.settings, job.folder):
            todo[job.stem] = job
    bar.reset(total=len(todo))
    task = ray.remote(max_retries=0)(run_graph_job)
    scheduler = Scheduler(ray, args.max_attempts, batch.interrupted)
    scheduler.pending.extend(todo)

    def submit(stem: str, attempt: int) -> Any:
        job = todo[stem]
        batch.row(stem, job.input, status="running", attempts=attempt)
        return task.options(num_cpus=job.resources.num_cpus, num_gpus=job.resources.num_gpus).remote(
            job, args.out.resolve(), attempt)

    def done(stem: str, fields: dict[str, Any]) -> None:
        batch.record(stem, todo[stem].settings, {**fields, "status": "done", "error": None})
        bar.update(1)

    def failed(stem: str, error: BaseException) -> None:
        batch.record(stem, todo[stem].settings, {"status": "failed", "error": _error_text(error)})
        bar.update(1)

    def stop() -> None:
        refs = list(scheduler.in_flight)
        finished = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        for ref in refs:
            # Force-cancelling a task whose result is already back can crash the driver inside Ray (its task
            # manager's "Tried to complete task that was not pending" check, seen here on Ctrl-C).
            if ref not in finished:
                ray.cancel(ref, force=True)
            batch.rows[scheduler.in_flight[ref]]["status"] = "interrupted"

    batch.stop = stop
    scheduler.run(submit, done, failed, capacity=lambda: len(todo))


# -- models ---------------------------------------------------------------------------------------------
class VideoState:
    """A video being worked on: its pieces in, the results out, joined when all are back."""

    def __init__(self, stem: str, units: list[tuple[int, int]], data: dict[str, Any]) -> None:
        self.stem, self.units, self.data = stem, units, data
        self.results: dict[int, Any] = {}
        self.started = time.monotonic()


def run_models(ray: Any, batch: Batch, target: str, bar: Any) -> None:
    """Windows (restore) or frame pairs (upsample) of every video on a pool of model actors."""
    from evpipe.nodes.restore.windows import window_spans
    from evpipe.tools import batch_jobs

    args = batch.args
    out = args.out.resolve()
    inputs = expand_inputs(args.inputs)
    if target == "restore":
        graph = batch_jobs.restore_graph(args, inputs[0], out / "unused.mp4")
        model_params = dict(graph.nodes["restore"].params)
        resources = resources_for([model_params])
        settings = fingerprint({"target": target, "restore": model_params})
        model_class = batch_jobs.RestoreModel
    else:
        from evpipe.nodes.upsample.cli import cascade_counts

        # The counts are resolved here, so the actors take them as given.
        model_params = {"checkpoint": args.checkpoint, **cascade_counts(args),
                        "factor": args.factor, "backend": args.backend, "device": args.device,
                        "precision": args.precision}
        resources = resources_for([model_params])
        settings = fingerprint({"target": target, "upsample": model_params, "max_frames": args.max_frames,
                                "fps": args.fps})
        model_class = batch_jobs.UpsampleModel
    queue = collections.deque()
    for path in inputs:
        folder = out / path.stem
        batch.row(path.stem, path)
        if not batch.skip_finished(path.stem, path, settings, folder):
            queue.append(path)
    bar.reset(total=len(queue))
    if not queue:
        return
    slots = int(ray.available_resources().get("GPU" if resources.num_gpus else "CPU", 1)) or 1
    actor_class = ray.remote(max_restarts=0)(model_class).options(num_cpus=resources.num_cpus,
                                                                  num_gpus=resources.num_gpus)
    actors = [actor_class.remote(model_params) for _ in range(slots)]
    idle = collections.deque(actors)
    busy: dict[Any, Any] = {}  # ref -> actor
    videos: dict[str, VideoState] = {}
    scheduler = Scheduler(ray, args.max_attempts, batch.interrupted)

    def load(path: Path) -> VideoState | None:
        stem = path.stem
        batch.row(stem, path, status="running", attempts=1)
        try:
            if target == "restore":
                staging = out / ".batch" / "staging" / stem
                shutil.rmtree(staging, ignore_errors=True)  # what an interrupted run left
                graph = batch_jobs.restore_graph(args, path, staging / f"{stem}.mp4")
                frames, times = batch_jobs.read_clip(graph.nodes["clip"].params)
                units = window_spans(len(frames), model_params["window"], model_params["overlap"])
                data = {"frames": frames, "times": times, "video": dict(graph.nodes["video"].params)}
            else:
                from evpipe.nodes.upsample.cli import load_clip, model_images
                from evpipe.nodes.upsample.model import load_checkpoint

                frames, fps = load_clip(argparse.Namespace(**{**vars(args), "input": path}))
                images = model_images(frames, load_checkpoint(args.checkpoint).config.channels)
                units = list(pair_units(len(images)))
                data = {"frames": images, "fps": fps * args.factor}
        except Exception as error:  # an unreadable video fails alone, with its reason
            batch.record(stem, settings, {"status": "failed", "error": f"{type(error).__name__}: {error}"})
            bar.update(1)
            return None
        return VideoState(stem, units, data)

    def refill() -> None:
        while queue and len(scheduler.pending) < 2 * len(actors):
            video = load(queue.popleft())
            if video is not None:
                videos[video.stem] = video
                scheduler.pending.extend((video.stem, i) for i in range(len(video.units)))

    def submit(unit: tuple[str, int], attempt: int) -> Any:
        video = videos[unit[0]]
        a, b = video.units[unit[1]]
        batch.rows[video.stem]["attempts"] = max(batch.rows[video.stem]["attempts"], attempt)
        actor = idle.popleft()
        frames = video.data["frames"]
        ref = actor.restore.remote(frames[a:b]) if target == "restore" else actor.between.remote(frames[a], frames[b])
        busy[ref] = actor
        return ref

    def settle(ref: Any, error: BaseException | None) -> None:
        actor = busy.pop(ref)
        if isinstance(error, ray.exceptions.RayActorError):  # its process died: a fresh actor loads the model
            replacement = actor_class.remote(model_params)
            actors[actors.index(actor)] = replacement
            actor = replacement
        idle.append(actor)

    def done(unit: tuple[str, int], value: Any) -> None:
        video = videos.get(unit[0])
        if video is None:
            return
        video.results[unit[1]] = value
        bar.set_postfix_str(f"{video.stem}: {len(video.results)}/{len(video.units)} units")
        if len(video.results) == len(video.units):
            finish(video)

    def failed(unit: tuple[str, int], error: BaseException) -> None:
        video = videos.pop(unit[0], None)
        if video is not None:
            scheduler.dropped.update((video.stem, i) for i in range(len(video.units)))
            batch.record(video.stem, settings, {"status": "failed", "error": _error_text(error)})
            bar.update(1)

    def finish(video: VideoState) -> None:
        del videos[video.stem]
        staging = out / ".batch" / "staging" / video.stem
        try:
            if target == "upsample":  # restore's sink writes into its staging folder itself
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            ordered = [video.results[i] for i in range(len(video.units))]
            if target == "restore":
                report = writer.submit(batch_jobs.write_restored, video.data["video"], ordered,
                                       model_params["overlap"], video.data["times"],
                                       model_params["degradation"]).result()
            else:
                output = staging / f"{video.stem}_x{args.factor}.mp4"
                count = writer.submit(batch_jobs.write_upsampled, output, video.data["fps"], video.data["frames"],
                                      ordered).result()
                report = {"path": str(output), "frames": count, "fps": video.data["fps"]}
            fields = batch_jobs.publish(staging, out / video.stem, {"units": len(video.units), "sink": report})
        except Exception as error:  # writing failed (disk, codec): this video fails, the others go on
            batch.record(video.stem, settings, {"status": "failed", "error": f"{type(error).__name__}: {error}"})
        else:
            batch.record(video.stem, settings, {**fields, "status": "done", "error": None, "units": len(video.units),
                                                "seconds": time.monotonic() - video.started})
        bar.update(1)

    def stop() -> None:
        for actor in actors:
            ray.kill(actor)
        for stem in videos:
            batch.rows[stem]["status"] = "interrupted"

    batch.stop = stop
    # Videos are encoded in a separate process: in this Ray driver x264 now and then wrote different bytes
    # from the very same frames (8 of 109 runs of a 4-clip batch; 0 of 70 written by a separate process;
    # benchmarks/RESULTS.md, batch jobs), so the batch would not equal the serial command.
    writer = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        scheduler.run(submit, done, failed, capacity=lambda: len(actors), refill=refill, settle=settle)
    finally:
        writer.shutdown(cancel_futures=True)


# -- the command ----------------------------------------------------------------------------------------
def main(argv: list[str], console: Console) -> int:
    """``evpipe batch ...``; returns the exit status (0 all done, 1 some input failed, 2 bad usage or no Ray,
    130 interrupted)."""
    if not argv or argv[0] in ("-h", "--help"):
        console.print("usage: evpipe batch CONFIG|restore|upsample --inputs GLOB --out DIR [options]; "
                      "`evpipe batch restore --help` lists a target's options", highlight=False, markup=False)
        return 0 if argv else 2
    target = argv[0]
    args = build_parser(target).parse_args(argv[1:])
    try:
        import ray
    except ImportError:
        console.print(f"[bold red]error:[/] {escape(INSTALL_HINT)}", highlight=False, soft_wrap=True)
        return 2
    config = None
    if target not in MODEL_TARGETS:
        config = _graph_file(target)
        if config is None:
            console.print(f"[bold red]error:[/] {escape(target)}: no such graph file (nor a shipped config); the "
                          "target is a graph YAML, 'restore' or 'upsample'", highlight=False)
            return 2
    if args.address and (args.num_cpus or args.object_store_memory):
        console.print("[bold red]error:[/] --num-cpus and --object-store-memory size the local Ray; a cluster's "
                      "nodes set theirs with `ray start --num-cpus ... --object-store-memory ...`", highlight=False)
        return 2
    if args.max_attempts < 1:
        console.print(f"[bold red]error:[/] --max-attempts must be at least 1, got {args.max_attempts}")
        return 2
    command = shlex.join(["evpipe", "batch", *argv])
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        batch = Batch(args, command, console)
        if target in MODEL_TARGETS:
            expand_inputs(args.inputs)  # bad patterns are refused before Ray starts
        else:
            plan_graph_jobs(config, expand_inputs(args.inputs), args.out.resolve(), args.param, args.set)
    except (BatchError, ConfigError, ValueError, OSError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    return _run(ray, batch, target, config)


def _graph_file(target: str) -> Path | None:
    from importlib import resources

    path = Path(target)
    if path.exists():
        return path
    shipped = Path(str(resources.files("evpipe.configs").joinpath(target)))
    return shipped if shipped.exists() else None


def _run(ray: Any, batch: Batch, target: str, config: Path | None) -> int:
    from tqdm import tqdm

    args = batch.args
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    local = args.address is None
    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
    if local:
        init.update(num_cpus=args.num_cpus, object_store_memory=args.object_store_memory or LOCAL_OBJECT_STORE)
    ray.init(address=args.address, **init)
    workers = int(ray.cluster_resources().get("CPU", 0))
    started = time.monotonic()
    interrupted = False
    bar = tqdm(total=0, desc=f"batch {Path(target).stem}", unit="input", file=sys.stderr, dynamic_ncols=True)

    def on_ctrl_c(signum: int, frame: Any) -> None:
        batch.interrupted.set()
        raise KeyboardInterrupt

    previous_handler = signal.signal(signal.SIGINT, on_ctrl_c)  # after ray.init, which may install its own
    try:
        if target in MODEL_TARGETS:
            run_models(ray, batch, target, bar)
        else:
            run_graphs(ray, batch, config, bar)
    except KeyboardInterrupt:
        interrupted = True
        batch.stop()
    except Exception:
        if not batch.interrupted.is_set():
            raise
        # Ctrl-C raised inside a Ray call can come back as another error (a task or actor error): still Ctrl-C.
        interrupted = True
        batch.stop()
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        bar.close()
        ray.shutdown()
    interrupted = interrupted or batch.interrupted.is_set()
    rows = list(batch.rows.values())
    json_path, md_path = write_summary(args.out, batch.command, rows, time.monotonic() - started, workers, interrupted)
    counts = collections.Counter(row["status"] for row in rows)
    batch.console.print(f"{len(rows)} inputs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                        + f"; report {md_path} and {json_path.name}", highlight=False)
    for row in rows:
        if row["status"] == "failed":
            batch.console.print(f"[red]failed:[/] {escape(row['input'])}: {escape(row['error'])}", highlight=False,
                                soft_wrap=True)
    if interrupted:
        return 130
    return 1 if counts.get("failed") else 0
