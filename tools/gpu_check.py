"""One command that verifies every GPU path of evpipe and records what it measured.

    python -m evpipe.tools.gpu_check                  # on a CUDA machine: benchmarks/gpu.json + gpu.md
    python -m evpipe.tools.gpu_check --dry-run        # any CPU: device cpu, tiny shapes, a temp folder

Sections (each in the JSON; anything that cannot run here is recorded with the reason, never dropped):

1. ``kernels``: the CUDA kernels (voxel grid, event frame, time surface, EDI) against the CPU kernels
   on the same events (max abs error) and their throughput in events/s, device-resident and with the
   host->device copy of the events, beside the limit the device's memory bandwidth (a device-to-device
   copy measured in the same run) puts on a kernel that reads each event's 13 bytes once. The event
   simulator has no CUDA kernel: recorded as such.
2. ``engines``: each backend x precision x model family (predictor, deblur, restore prior, upsample
   denoiser) through the engine interface: max abs difference from torch fp32 on the CPU, and latency
   p50/p99/max of ``run``.
3. ``async``: the predictor engine with 2 requests in flight (``submit``/``collect``) against
   synchronous ``run`` calls, alternating rounds.
4. ``graph``: replay (the real DAVIS346 street recording, cropped to 256x256 and at the full 346x260)
   -> voxelizer -> predictor -> metrics through the runtime (its traces give end-to-end latency at
   real-time pace; its throughput at full pace), against a naive eager loop of the same model (voxel
   grid on the CPU, torch eager, one window at a time) in the same run.
5. ``dds``: DDS restoration of a 16-frame 640x360 clip (the real bedroom video); ``hifi``: HiFI
   upsampling of one 640x360 frame pair; seconds per clip / per frame.

Designed to finish in under 8 minutes on one H100. ``--dry-run`` runs every section on this CPU with
tiny shapes, the CUDA kernels in Numba's CUDA simulator (set before Numba is imported), so the script
itself cannot rot (CI runs it: tests/test_gpu_check.py); its numbers are not GPU numbers and it writes
to a temporary folder unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
RECORDING = "davis346_street/davis346_street_first1.8s.h5"
RECORDING_AEDAT = "davis346_street/davis346_street_first1.8s_zstd.aedat4"
VIDEO = "video_bedroom/frames"
FULL_SENSOR = (346, 260)
EVENT_BYTES = 13  # t int64, x uint16, y uint16, p int8: what a kernel must read per event
FAMILIES = ("predictor", "deblur", "restore", "upsample")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: the real check and the dry run."""

    kernel_events: int
    kernel_sensor: tuple[int, int]  # width, height
    kernel_repeats: int
    bandwidth_bytes: int
    frame: tuple[int, int]  # engines' frame size: height, width
    restore_frames: int
    patch_batch: int
    engine_calls: int
    async_calls: int
    graph_rois: tuple[tuple[int, int, int, int] | None, ...]  # replay roi per graph run (None: full sensor)
    graph_loops: int
    graph_stop_us: int | None
    naive_windows: int | None  # windows of the naive loop (None: every window of one pass)
    clip: tuple[int, int, int]  # DDS clip: frames, height, width
    dds_nfe: int
    hifi: dict[str, int]
    runs: int


REAL = Sizes(kernel_events=20_000_000, kernel_sensor=FULL_SENSOR, kernel_repeats=20, bandwidth_bytes=1 << 30,
             frame=(256, 256), restore_frames=16, patch_batch=64, engine_calls=100, async_calls=200,
             graph_rois=((45, 2, 301, 258), None), graph_loops=3, graph_stop_us=None, naive_windows=None,
             clip=(16, 360, 640), dds_nfe=20, hifi={"levels": 3, "steps": 8, "samples": 4}, runs=3)
DRY = Sizes(kernel_events=200, kernel_sensor=(24, 16), kernel_repeats=1, bandwidth_bytes=1 << 16, frame=(32, 32),
            restore_frames=2, patch_batch=2, engine_calls=2, async_calls=6, graph_rois=((140, 100, 204, 164),),
            graph_loops=1, graph_stop_us=300_000, naive_windows=6, clip=(4, 32, 32), dds_nfe=2,
            hifi={"levels": 1, "steps": 1, "samples": 1}, runs=2)


def stats_ms(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50 / p99 / max / min in ms of per-call times, and their count."""
    ms = np.asarray(seconds, np.float64) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "min_ms": float(ms.min()), "n": int(ms.size)}


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None) -> list[float]:
    """Wall times of ``repeats`` calls after one warm-up call; ``sync`` waits for the device."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def _cuda_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine(device: str, dry_run: bool) -> dict[str, Any]:
    import numba
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "numba": numba.__version__,
                            "cpus": os.cpu_count(), "load_avg_1_5_15": list(os.getloadavg()), "dry_run": dry_run,
                            "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    else:
        info["gpu"] = None
    for name in ("onnxruntime", "tensorrt"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


# ---- 1. kernels -----------------------------------------------------------------------------------


def _events(n: int, width: int, height: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"t": np.sort(rng.integers(0, max(n, 1) * 10, n)).astype(np.int64),
            "x": rng.integers(0, width, n).astype(np.uint16), "y": rng.integers(0, height, n).astype(np.uint16),
            "p": np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8)}


def device_bandwidth(nbytes: int, repeats: int) -> float:
    """Device memory bandwidth in bytes/s: a device-to-device copy reads and writes ``nbytes``."""
    from numba import cuda

    src = cuda.to_device(np.ones(nbytes // 8, np.int64))
    dst = cuda.device_array_like(src)
    best = min(timed(lambda: dst.copy_to_device(src), repeats, cuda.synchronize))
    return 2 * src.nbytes / best


def check_kernels(sizes: Sizes) -> dict[str, Any]:
    from numba import cuda

    from evpipe.kernels import edi_integral, event_frame, time_surface, voxel_grid

    if not cuda.is_available():
        return {"skipped": "Numba finds no CUDA GPU (pip install 'evpipe[gpu]' on a CUDA machine)"}
    width, height = sizes.kernel_sensor
    ev = _events(sizes.kernel_events, width, height)
    n = len(ev["t"])
    t_mid, t_end = int(ev["t"][n // 2]), int(ev["t"][-1]) + 1
    calls: dict[str, Callable[..., Any]] = {
        "voxel_grid": lambda t, x, y, p, dev: voxel_grid(t, x, y, p, 5, height, width, device=dev),
        "event_frame": lambda t, x, y, p, dev: event_frame(x, y, p, height, width, device=dev),
        "time_surface": lambda t, x, y, p, dev: time_surface(t, x, y, p, height, width, t_end, 50_000.0, device=dev),
        "edi_integral": lambda t, x, y, p, dev: edi_integral(t, x, y, p, 0.2, 0, t_end, 16, height, width,
                                                              t_ref=t_mid, device=dev),
    }
    bandwidth = device_bandwidth(sizes.bandwidth_bytes, sizes.kernel_repeats)
    limit = bandwidth / EVENT_BYTES
    on_device = {k: cuda.to_device(v) for k, v in ev.items()}
    results: dict[str, Any] = {"events": n, "sensor": [width, height], "device_bandwidth_bytes_s": bandwidth,
                               "bandwidth_limit_events_s": limit, "kernels": {}}
    for name, call in calls.items():
        cpu = call(ev["t"], ev["x"], ev["y"], ev["p"], "cpu")
        gpu = call(*on_device.values(), None).copy_to_host()
        resident = timed(lambda call=call: call(*on_device.values(), None), sizes.kernel_repeats, cuda.synchronize)
        with_copy = timed(lambda call=call: call(ev["t"], ev["x"], ev["y"], ev["p"], "cuda").copy_to_host(),
                          sizes.kernel_repeats, cuda.synchronize)
        cpu_times = timed(lambda call=call: call(ev["t"], ev["x"], ev["y"], ev["p"], "cpu"), sizes.kernel_repeats)
        median = float(np.median(resident))
        results["kernels"][name] = {
            "max_abs_error_vs_cpu": float(np.abs(gpu.astype(np.float64) - cpu).max()),
            "gpu_resident": {**stats_ms(resident), "events_per_s": n / median,
                             "fraction_of_bandwidth_limit": n / median / limit},
            "gpu_with_host_copies": {**stats_ms(with_copy), "events_per_s": n / float(np.median(with_copy))},
            "cpu": {**stats_ms(cpu_times), "events_per_s": n / float(np.median(cpu_times))},
        }
    results["kernels"]["simulate_events"] = {"skipped": "the event simulator has no CUDA kernel (CPU only)"}
    return results


# ---- 2./3. engines --------------------------------------------------------------------------------


@dataclass
class Family:
    """One model family's network for the engine interface, with feeds of fixed shapes."""

    module: Any
    input_names: tuple[str, ...]
    output_name: str
    feeds: dict[str, np.ndarray]
    onnx: Callable[[], Path]


def family(name: str, sizes: Sizes) -> Family:
    rng = np.random.default_rng(0)
    h, w = sizes.frame

    def rand(*shape: int) -> np.ndarray:
        return rng.random(shape, dtype=np.float32)

    if name == "predictor":
        from evpipe.nodes.predict.checkpoint import load_model
        from evpipe.nodes.predict.export import INPUT_NAMES, OUTPUT_NAME, cached_fused_onnx
        from evpipe.nodes.predict.models import FusedPredictor

        model, steps = load_model("4step", "tiny")
        feeds = {"anchor": rand(1, 1, h, w), "voxel": rand(1, model.config.bins, h, w) - 0.5,
                 "noise": np.zeros((1, *model.noise_shape(h, w)), np.float32)}
        return Family(FusedPredictor(model, steps).eval(), INPUT_NAMES, OUTPUT_NAME, feeds,
                      lambda: cached_fused_onnx("4step", "tiny"))
    if name == "deblur":
        from evpipe.nodes.deblur.checkpoint import load_model
        from evpipe.nodes.deblur.export import cached_student_onnx
        from evpipe.nodes.deblur.models import FusedStudent
        from evpipe.nodes.deblur.sampler import INPUT_NAMES, OUTPUT_NAME

        model, info = load_model("tiny")
        feeds = {"blurry": rand(1, 1, h, w), "edi": rand(1, 1, h, w) + 0.5,
                 "voxel": rand(1, model.config.event_bins, h, w) - 0.5, "noise": np.zeros((1, 1, h, w), np.float32)}
        return Family(FusedStudent(model, info["student_steps"]).eval(), INPUT_NAMES, OUTPUT_NAME, feeds,
                      lambda: cached_student_onnx("tiny"))
    if name == "restore":
        from evpipe.nodes.restore.export import INPUT_NAMES, OUTPUT_NAME, cached_prior_onnx
        from evpipe.nodes.restore.model import load_prior

        frames = sizes.restore_frames
        feeds = {"x": rand(frames, 1, h, w) * 2 - 1, "t": np.full(frames, 0.5, np.float32)}
        return Family(load_prior("tiny")[0], INPUT_NAMES, OUTPUT_NAME, feeds, lambda: cached_prior_onnx("tiny"))
    from evpipe.nodes.upsample.export import INPUT_NAMES, OUTPUT_NAME, cached_denoiser_onnx
    from evpipe.nodes.upsample.model import load_checkpoint

    model = load_checkpoint("tiny")
    b, c, side = sizes.patch_batch, model.config.channels, min(model.config.patch, h)
    feeds = {"z_t": rand(b, c, side, side), "t": np.full(b, 0.5, np.float32), "frame0": rand(b, c, side, side),
             "frame1": rand(b, c, side, side), "estimate": rand(b, c, side, side), "available": np.ones(b, np.float32)}
    return Family(model, INPUT_NAMES, OUTPUT_NAME, feeds, lambda: cached_denoiser_onnx("tiny"))


def check_engines(device: str, sizes: Sizes, dry_run: bool) -> dict[str, Any]:
    import torch

    from evpipe.nodes.model_engines import EngineChoice, NetworkEngines
    from evpipe.runtime.engines import BACKENDS, PRECISIONS, SelectionError, select_engine

    results: dict[str, Any] = {}
    for name in FAMILIES:
        fam = family(name, sizes)
        with torch.no_grad():
            reference = fam.module(*(torch.from_numpy(fam.feeds[k]) for k in fam.input_names)).numpy()
        rows: dict[str, Any] = {"shapes": {k: list(v.shape) for k, v in fam.feeds.items()}}
        for backend in BACKENDS:
            for precision in PRECISIONS:
                key = f"{backend}/{precision}"
                if dry_run and backend == "onnxruntime" and name != "restore":
                    rows[key] = {"skipped": "dry run: only the restore prior is exported to ONNX (each export "
                                            "costs 10-60 s on a small CPU)"}
                    continue
                try:
                    choice = EngineChoice(*select_engine(backend, device, precision, (backend,)), precision)
                except SelectionError as error:
                    rows[key] = {"skipped": f"{error.parameter}: {error}"}
                    continue
                network = NetworkEngines(choice, fam.module, fam.input_names, fam.output_name, onnx=fam.onnx)
                try:
                    output = network.run(fam.feeds)
                    times = timed(lambda network=network, fam=fam: network.run(fam.feeds), sizes.engine_calls)
                    rows[key] = {"max_abs_vs_torch_cpu_fp32": float(np.abs(output - reference).max()),
                                 **stats_ms(times), "cache": network.cache_files()}
                finally:
                    network.close()
        results[name] = rows
    return results


def check_async(device: str, sizes: Sizes) -> dict[str, Any]:
    """The predictor engine (backend auto) with 2 requests in flight against synchronous calls."""
    from evpipe.runtime.engines import ModelSource, TensorSpec, open_engine

    fam = family("predictor", sizes)
    specs = [TensorSpec(k, fam.feeds[k].shape, np.float32) for k in fam.input_names]
    source = ModelSource(onnx=fam.onnx() if not device.startswith("cuda") else None, torch=fam.module,
                         inputs=specs, output_names=[fam.output_name])
    engine = open_engine(source, device=device, max_in_flight=2)
    try:
        rounds: dict[str, list[float]] = {"sync_calls_s": [], "async_calls_s": []}
        latencies: list[float] = []
        engine.run(fam.feeds)
        for _ in range(3):  # alternate, so load from other jobs falls on both
            start = time.perf_counter()
            for _ in range(sizes.async_calls):
                engine.run(fam.feeds)
            rounds["sync_calls_s"].append(sizes.async_calls / (time.perf_counter() - start))
            start = time.perf_counter()
            for _ in range(sizes.async_calls):
                engine.submit(fam.feeds)
                latencies += [done.latency_s for done in engine.collect()]
            latencies += [done.latency_s for done in engine.collect(block=True)]
            rounds["async_calls_s"].append(sizes.async_calls / (time.perf_counter() - start))
        sync, pipelined = float(np.median(rounds["sync_calls_s"])), float(np.median(rounds["async_calls_s"]))
        return {"backend": engine.backend, "device": engine.device, "in_flight": 2, "rounds": rounds,
                "sync_calls_per_s": sync, "async_calls_per_s": pipelined, "speedup": pipelined / sync,
                "async_request_latency": stats_ms(latencies)}
    finally:
        engine.close()


# ---- 4. the predictor graph against a naive loop --------------------------------------------------


_GRAPH = """
name: gpu-check-predictor
nodes:
  src: {{type: replay, params: {{path: '{path}', pace: {pace}, loops: {loops}, imu: false, {extra}}}}}
  vox: {{type: voxelizer, params: {{mode: frame_sync, bins: 5, predictions_per_frame: 8, device: '{kernel_device}'}}}}
  pred: {{type: predictor, params: {{checkpoint: tiny, variant: 4step, device: '{device}'}}}}
  out: {{type: metrics}}
edges:
  - src.events -> vox.events
  - src.frames -> vox.frames
  - src.frames -> pred.frames
  - {{edge: vox.voxels -> pred.voxels, policy: {policy}}}
  - pred.predictions -> out.in
"""


def run_graph(folder: Path, recording: Path, roi: tuple[int, ...] | None, device: str, pace: str, sizes: Sizes
              ) -> dict[str, Any]:
    extra = [f"roi: {list(roi)}"] if roi else []
    if sizes.graph_stop_us:
        extra.append(f"t_stop: {sizes.graph_stop_us}")
    kernel_device = device if device.startswith("cuda") else "cpu"
    text = _GRAPH.format(path=recording, pace=pace, loops=sizes.graph_loops, extra=", ".join(extra), device=device,
                         kernel_device=kernel_device, policy="latest" if pace == "realtime" else "lossless")
    graph = folder / f"graph-{pace}-{'full' if roi is None else 'roi'}.yaml"
    graph.write_text(text)
    report_path = graph.with_suffix(".json")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}  # the graph's kernels run for real
    proc = subprocess.run([sys.executable, "-m", "evpipe.runtime.cli", "run", str(graph), "--report", str(report_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=folder)
    if proc.returncode != 0:
        raise RuntimeError(f"evpipe run {graph.name} exited {proc.returncode}: {proc.stderr[-2000:]}")
    report = json.loads(report_path.read_text())
    pred = report["reports"]["pred"][-1]
    paths = {p: {k: s[k] for k in ("count", "p50", "p90", "p99", "max") if k in s}
             for p, s in report["latency"]["paths"].items()}
    # Throughput over the span of delivered messages (first to last), not the process start-up.
    return {"pace": pace, "predictions": pred["predictions"], "duration_s": report["duration_s"],
            "predictions_per_s": report["latency"]["throughput_msgs_s"], "latency_ms": paths,
            "engine": report["engines"].get("pred"),
            "pred_compute_ms": report["latency"]["nodes"].get("pred", {}).get("compute")}


def naive_loop(recording: Path, roi: tuple[int, ...] | None, device: str, sizes: Sizes) -> dict[str, Any]:
    """The same 4-step model, one window at a time, the obvious way: voxel grid on the CPU, numpy ->
    torch -> device, eager forward, back to the host."""
    import h5py
    import torch

    from evpipe.kernels import voxel_grid
    from evpipe.nodes.predict.checkpoint import load_model
    from evpipe.nodes.predict.models import FusedPredictor

    with h5py.File(recording) as f:
        t, x, y = f["events/t"][:], f["events/x"][:], f["events/y"][:]
        p = np.where(f["events/p"][:] > 0, 1, -1).astype(np.int8)
        frames, frame_t = f["frames/images"][:], f["frames/t"][:]
    x0, y0, x1, y1 = roi or (0, 0, *FULL_SENSOR)
    keep = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    if sizes.graph_stop_us:
        keep &= t < t[0] + sizes.graph_stop_us
    t, x, y, p = t[keep], (x[keep] - x0).astype(np.uint16), (y[keep] - y0).astype(np.uint16), p[keep]
    width, height = x1 - x0, y1 - y0
    model, steps = load_model("4step", "tiny")
    net = FusedPredictor(model, steps).eval().to(device)
    mult = model.multiple
    hp, wp = -(-height // mult) * mult, -(-width // mult) * mult
    noise = torch.zeros(1, *model.noise_shape(hp, wp), device=device)
    times = []
    with torch.no_grad():
        for k in range(len(frame_t) - 1):
            if sizes.graph_stop_us and frame_t[k + 1] >= t[0] + sizes.graph_stop_us:
                break
            anchor = np.pad(frames[k, y0:y1, x0:x1].astype(np.float32) / 255, ((0, hp - height), (0, wp - width)),
                            mode="edge")
            for j in range(1, 9):
                if sizes.naive_windows is not None and len(times) == sizes.naive_windows:
                    break
                start = time.perf_counter()
                target = frame_t[k] + (frame_t[k + 1] - frame_t[k]) * j // 8
                lo, hi = np.searchsorted(t, [frame_t[k] + 1, target + 1])
                voxel = voxel_grid(t[lo:hi], x[lo:hi], y[lo:hi], p[lo:hi], 5, height, width)
                voxel = np.pad(voxel, ((0, 0), (0, hp - height), (0, wp - width)))
                out = net(torch.from_numpy(anchor)[None, None].to(device), torch.from_numpy(voxel)[None].to(device),
                          noise)
                out.cpu()
                times.append(time.perf_counter() - start)
    warm = times[1:] or times
    return {"windows": len(times), **stats_ms(warm), "predictions_per_s": 1.0 / float(np.median(warm))}


def check_graph(device: str, sizes: Sizes, data: Path, folder: Path) -> dict[str, Any]:
    h5, aedat = data / RECORDING, data / RECORDING_AEDAT
    if not (h5.is_file() and aedat.is_file()):
        return {"skipped": f"the DAVIS346 recording is not at {data} (--data)"}
    results: dict[str, Any] = {}
    for roi in sizes.graph_rois:
        size = "346x260" if roi is None else f"{roi[2] - roi[0]}x{roi[3] - roi[1]}"
        realtime = run_graph(folder, aedat, roi, device, "realtime", sizes)
        full_pace = run_graph(folder, aedat, roi, device, "fast", sizes)
        naive = naive_loop(h5, roi, device, sizes)
        results[size] = {"graph_realtime": realtime, "graph_fast": full_pace, "naive_eager_loop": naive,
                         "throughput_vs_naive": full_pace["predictions_per_s"] / naive["predictions_per_s"]}
    return results


# ---- 5. DDS and HiFI ------------------------------------------------------------------------------


def _video_frames(data: Path, count: int, height: int, width: int) -> np.ndarray:
    from skimage.io import imread
    from skimage.transform import resize

    files = sorted((data / VIDEO).glob("*.jpg"))[:count]
    if len(files) < count:
        raise FileNotFoundError(f"need {count} frames in {data / VIDEO}, found {len(files)}")
    return np.stack([resize(imread(f, as_gray=True), (height, width), anti_aliasing=True) for f in files]
                    ).astype(np.float32)


def check_dds(device: str, sizes: Sizes, data: Path) -> dict[str, Any]:
    import torch

    from evpipe.nodes.model_engines import EngineChoice, NetworkEngines
    from evpipe.nodes.restore.export import INPUT_NAMES, OUTPUT_NAME, cached_prior_onnx
    from evpipe.nodes.restore.model import load_prior
    from evpipe.nodes.restore.operators import TemporalPSF
    from evpipe.nodes.restore.psf import temporal_psf
    from evpipe.nodes.restore.sampler import DDSConfig, dds_restore
    from evpipe.runtime.engines import select_engine

    frames, height, width = sizes.clip
    clip = torch.from_numpy(_video_frames(data, frames, height, width))[:, None].to(device)
    op = TemporalPSF(temporal_psf("uniform7"), frames)
    y = op.forward(clip)
    model = load_prior("tiny", device)[0]
    choice = EngineChoice(*select_engine("auto", device, "fp32", ("torch",)), "fp32")
    network = NetworkEngines(choice, model, INPUT_NAMES, OUTPUT_NAME, onnx=lambda: cached_prior_onnx("tiny"))
    config = DDSConfig(nfe=sizes.dds_nfe)
    try:
        times = timed(lambda: dds_restore(model, op, y, tuple(clip.shape), config, network=network), sizes.runs,
                      _cuda_sync)
    finally:
        network.close()
    return {"clip": [frames, height, width], "nfe": sizes.dds_nfe, "backend": choice.backend,
            "device": choice.device, "seconds_per_clip": stats_ms(times)}


def check_hifi(device: str, sizes: Sizes, data: Path) -> dict[str, Any]:
    from evpipe.nodes.upsample.cascade import CascadeSettings, Upsampler
    from evpipe.nodes.upsample.model import load_checkpoint

    _, height, width = sizes.clip
    a, b = _video_frames(data, 2, height, width)
    settings = CascadeSettings(patch=load_checkpoint("tiny").config.patch, **sizes.hifi)
    upsampler = Upsampler("tiny", settings, device, "auto")
    try:
        times = timed(lambda: upsampler.middle(a, b), sizes.runs, _cuda_sync)
    finally:
        upsampler.close()
    return {"frame": [height, width], "settings": asdict(settings), "backend": upsampler.choice.backend,
            "device": upsampler.choice.device, "seconds_per_frame": stats_ms(times)}


# ---- report ---------------------------------------------------------------------------------------


def _section(report: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one section; a failure is recorded (and fails the command) without losing the others."""
    start = time.perf_counter()
    print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
    try:
        report[name] = fn()
    except Exception as error:  # recorded in the report: one broken path must not hide the others
        report[name] = {"error": f"{type(error).__name__}: {error}"}
        report["failed"].append(name)
    report["seconds"][name] = round(time.perf_counter() - start, 2)


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    gpu = m["gpu"]["name"] if m["gpu"] else "none (CPU)"
    lines = [f"# GPU check ({'DRY RUN on the CPU: not GPU numbers' if m['dry_run'] else gpu})", "",
             f"Device: **{m['device']}** — GPU: {gpu}. Command: `{report['command']}`. Load average at start "
             f"{m['load_avg_1_5_15']}; sections took {report['seconds']} s.", ""]
    kernels = report.get("kernels", {})
    if "kernels" in kernels:
        lines += [f"## CUDA kernels ({kernels['events']} events, {kernels['sensor'][0]}x{kernels['sensor'][1]})", "",
                  f"Device copy bandwidth {kernels['device_bandwidth_bytes_s'] / 1e9:.1f} GB/s: at {EVENT_BYTES} "
                  f"bytes per event the limit is {kernels['bandwidth_limit_events_s'] / 1e9:.2f} G events/s.", "",
                  "| kernel | max abs error vs CPU | GPU events/s (resident) | p50 / p99 / max ms | of limit | "
                  "GPU events/s (with copies) | CPU events/s |", "|---|---|---|---|---|---|---|"]
        for name, k in kernels["kernels"].items():
            if "skipped" in k:
                lines.append(f"| {name} | {k['skipped']} | | | | | |")
                continue
            r = k["gpu_resident"]
            lines.append(f"| {name} | {k['max_abs_error_vs_cpu']:.3g} | {r['events_per_s']:.3g} | "
                         f"{r['p50_ms']:.3g} / {r['p99_ms']:.3g} / {r['max_ms']:.3g} | "
                         f"{r['fraction_of_bandwidth_limit']:.1%} | {k['gpu_with_host_copies']['events_per_s']:.3g} | "
                         f"{k['cpu']['events_per_s']:.3g} |")
    else:
        lines += ["## CUDA kernels", "", f"{kernels}"]
    lines += ["", "## Engines: backend x precision x family (parity vs torch fp32 on the CPU)", "",
              "| family | backend/precision | max abs diff | p50 / p99 / max ms | note |", "|---|---|---|---|---|"]
    for name, rows in report.get("engines", {}).items():
        if not isinstance(rows, dict) or "error" in rows:
            lines.append(f"| {name} | | | | {rows} |")
            continue
        for key, row in rows.items():
            if key == "shapes":
                continue
            if "skipped" in row:
                lines.append(f"| {name} | {key} | | | skipped: {row['skipped']} |")
            else:
                lines.append(f"| {name} | {key} | {row['max_abs_vs_torch_cpu_fp32']:.3g} | {row['p50_ms']:.3g} / "
                             f"{row['p99_ms']:.3g} / {row['max_ms']:.3g} | |")
    a = report.get("async", {})
    if "speedup" in a:
        lines += ["", f"## Async runner ({a['backend']} on {a['device']}, {a['in_flight']} in flight)", "",
                  f"{a['async_calls_per_s']:.1f} calls/s against {a['sync_calls_per_s']:.1f} synchronous "
                  f"(x{a['speedup']:.2f}, median of 3 alternating rounds {a['rounds']}); request latency p50 "
                  f"{a['async_request_latency']['p50_ms']:.3g} ms, p99 {a['async_request_latency']['p99_ms']:.3g}, "
                  f"max {a['async_request_latency']['max_ms']:.3g}."]
    lines += ["", "## Predictor graph (replay -> voxelizer -> predictor -> metrics) vs a naive eager loop", ""]
    for size, g in report.get("graph", {}).items():
        if not isinstance(g, dict) or "graph_fast" not in g:
            lines.append(f"- {size}: {g}")
            continue
        rt = g["graph_realtime"]
        paths = "; ".join(f"{p}: p50 {s.get('p50', 0):.3g} / p99 {s.get('p99', 0):.3g} / max {s.get('max', 0):.3g} ms"
                          for p, s in rt["latency_ms"].items())
        lines.append(f"- **{size}**: end to end at real-time pace {paths}; {g['graph_fast']['predictions_per_s']:.1f} "
                     f"predictions/s at full pace against {g['naive_eager_loop']['predictions_per_s']:.1f} for the "
                     f"naive loop (x{g['throughput_vs_naive']:.1f}); engine {rt['engine']}")
    for name, key in (("dds", "seconds_per_clip"), ("hifi", "seconds_per_frame")):
        s = report.get(name, {})
        if key in s:
            lines += ["", f"## {name.upper()}: {key.replace('_', ' ')} ({s['backend']} on {s['device']})", "",
                      f"p50 {s[key]['p50_ms'] / 1e3:.3g} s, p99 {s[key]['p99_ms'] / 1e3:.3g} s, max "
                      f"{s[key]['max_ms'] / 1e3:.3g} s over {s[key]['n']} runs."]
        else:
            lines += ["", f"## {name.upper()}", "", f"{s}"]
    if report["failed"]:
        lines += ["", f"**Failed sections: {report['failed']}** (errors in the JSON)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="this CPU: device cpu, tiny shapes, CUDA kernels in "
                        "Numba's simulator, output to a temporary folder")
    parser.add_argument("--device", default="cuda:0", help="the GPU to check (default cuda:0)")
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/, or a temporary one with "
                        "--dry-run)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"real data folder (default {DEFAULT_DATA})")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before anything imports numba
        if "numba" in sys.modules:
            raise SystemExit("gpu_check --dry-run: numba was imported before the CUDA simulator could be enabled")
    from evpipe.tools import command_line

    device, sizes = ("cpu", DRY) if args.dry_run else (args.device, REAL)
    if not args.dry_run:
        from evpipe.runtime.engines import device_unavailable_reason, resolve_device

        device = resolve_device(device)
        missing = device_unavailable_reason(device)
        if missing:
            print(f"gpu_check: {missing}; run with --dry-run on a machine without a GPU", file=sys.stderr)
            return 2
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu_check-")) if args.dry_run else REPO / "benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"command": command_line("evpipe.tools.gpu_check", argv), "failed": [], "seconds": {},
                              "machine": machine(device, args.dry_run)}
    with tempfile.TemporaryDirectory(prefix="gpu_check-graphs-") as scratch:
        _section(report, "kernels", lambda: check_kernels(sizes))
        _section(report, "engines", lambda: check_engines(device, sizes, args.dry_run))
        _section(report, "async", lambda: check_async(device, sizes))
        _section(report, "graph", lambda: check_graph(device, sizes, args.data, Path(scratch)))
        _section(report, "dds", lambda: check_dds(device, sizes, args.data))
        _section(report, "hifi", lambda: check_hifi(device, sizes, args.data))
    report["machine"]["load_avg_1_5_15_at_end"] = list(os.getloadavg())
    (out / "gpu.json").write_text(json.dumps(report, indent=1))
    (out / "gpu.md").write_text(markdown(report))
    print(f"gpu_check: wrote {out / 'gpu.json'} and {out / 'gpu.md'}; failed sections: {report['failed'] or 'none'}",
          file=sys.stderr)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
