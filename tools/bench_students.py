"""What each cost lever buys the predictor and deblur students at the full DAVIS346 sensor (346x260) on this CPU.

One process, ONNX Runtime sessions on the CPU, the real DAVIS346 street windows (anchor frame, voxel grid of
the events to the next frame) padded like the nodes pad them (``pad_to_multiple``). The levers:

* the shipped 4-step student with its full-resolution head (the node's default; the reference row);
* the 1-step student (no head);
* ONNX Runtime graph optimisation levels (disabled, basic, extended, all);
* intra-op threads 1 against 2 (the node shares the machine's 2 cores with a source and a voxelizer);
* static int8 quantisation (``onnxruntime.quantization.quantize_static``, QDQ, per-channel int8 weights,
  uint8 activations) calibrated on the first halves of both real recordings;
* the latent path at 1/2 or 1/4 resolution with the full-resolution head (variants ``4step-coarse2``
  and ``4step-coarse4``, ``Dessert.coarse``): anchor and voxel grid average-pooled, the 4-step
  student's latent path (encoders, sampler, decoder) on them, its correction to the event-integration
  base upsampled (bilinear) onto the full-resolution base, then the trained head at full resolution
  (the same weights, not retrained for this input);
* the deblur students (threads 1 and 2): ``tiny``'s and the compact ``tiny-rt`` deployment student
  (a 16-channel U-Net, a 16-channel 5-layer head and the raw E in place of 64 channels, 32x8 and f(E));
* the 4-step (full and coarse), 1-step and both deblur students at 640x480 and 1280x720 (the node docs'
  cost per frame).

Timing: ``--rounds`` rounds; in every round each variant makes ``--calls`` calls in turn, so a load spike
from other jobs on the shared machine hits all variants alike. Per variant: the median over rounds of the
round's median call (with the spread: min and max over rounds), p99 and max over all calls. The load
average is recorded at the start, after every round and at the end.

Quality (``--quality``): PSNR against the next APS frame on the second halves of the two real recordings
(``tools/evaluate.py``'s real-data cases: DAVIS346 street and ECD slider_depth, centre-cropped to multiples
of 16), beside copy-last and event integration fitted on the first halves. The float levers run in eager
torch with the model's event-integration base calibrated by the same fit, as ``evaluate.py --task predict``
runs every DESSERT model, so their rows compare with ``benchmarks/predict.md``; int8 runs in ONNX Runtime
(it exists only there) and is scored against the fp32 graph run the same way (checkpoint calibration),
so its row is the PSNR it loses.

    python -m evpipe.tools.bench_students --out benchmarks/students.json --quality
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evpipe.nodes.model_engines import pad_to_multiple
from evpipe.nodes.predict.checkpoint import load_model
from evpipe.nodes.predict.integration import fit_event_integration, integrate_events, polarity_sum
from evpipe.nodes.predict.models import FusedPredictor
from evpipe.nodes.predict.sampler import events_voxel
from evpipe.runtime.engines.onnx_export import export_cache_dir
from evpipe.tools import command_line
from evpipe.tools.evaluate import DEFAULT_REAL_DATA, RealRecording, load_real_recordings

SENSOR = (260, 346)  # DAVIS346, height x width
LARGER_SENSORS = ((480, 640), (720, 1280))
OPT_LEVELS = ("disable", "basic", "extended", "all")
# The coarse variants' pooling (Dessert.coarse); their frames pad to 4 x factor (Dessert.multiple).
LATENT_FACTORS = (2, 4)


@dataclass(frozen=True)
class Variant:
    """One timed configuration: an ONNX file, session options, and how its inputs are built."""

    name: str
    family: str  # predict or deblur
    onnx: Path
    threads: int
    opt_level: str = "all"
    multiple: int = 16
    latent_down: int = 4  # noise grid = padded frame / latent_down


def session(path: Path, threads: int, opt_level: str) -> Any:
    """An ONNX Runtime CPU session with the engine's options (``runtime/engines/ort_backend.py``: one
    inter-op thread, sequential, no spinning) and the given intra-op threads and optimisation level."""
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = levels[opt_level]
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# -- inputs ----------------------------------------------------------------------------------------------
Window = dict[str, np.ndarray]


def street_windows(count: int) -> list[Window]:
    """``count`` windows at the full 346x260 DAVIS346 street sensor, from consecutive APS frames: ``frame``,
    ``voxel`` (5 bins, the events to the next frame: the predictor's input), and for the deblur student
    ``edi`` and ``exposure_voxel`` (4 bins) of a 10 ms exposure centred on the frame."""
    import h5py

    from evpipe.nodes.deblur.sampler import exposure_edi, exposure_voxel
    from evpipe.runtime.events import Events

    path = DEFAULT_REAL_DATA / "davis346_street" / "davis346_street_first1.8s.h5"
    with h5py.File(path, "r") as f:
        frames = f["frames/images"][()].astype(np.float32) / 255.0
        frames_t = f["frames/t"][()].astype(np.int64)
        events = Events.from_arrays(*(f["events"][name][()] for name in ("t", "x", "y", "p")))
    if frames.shape[1:] != SENSOR:
        raise ValueError(f"{path}: frames are {frames.shape[1:]}, expected the DAVIS346's {SENSOR}")
    step = max(1, (len(frames) - 1) // count)
    windows = []
    for i in range(0, len(frames) - 1, step)[:count]:
        t0, t1 = int(frames_t[i]), int(frames_t[i + 1])
        exposure = events.time_slice(t0 - 5000, t0 + 5000)
        windows.append({"frame": frames[i], "voxel": events_voxel(events, t0, t1, 5, *SENSOR),
                        "edi": exposure_edi(exposure, t0 - 5000, t0 + 5000, t0, *SENSOR, 0.3, 32),
                        "exposure_voxel": exposure_voxel(exposure, *SENSOR, 4)})
    return windows


def tiled(window: Window, shape: tuple[int, int]) -> Window:
    """A window tiled out to a larger sensor ``shape``: real content at every pixel."""
    out = {}
    for name, array in window.items():
        reps = [1] * (array.ndim - 2) + [-(-shape[0] // array.shape[-2]), -(-shape[1] // array.shape[-1])]
        out[name] = np.tile(array, reps)[..., :shape[0], :shape[1]].copy()
    return out


def feeds(variant: Variant, window: Window) -> dict[str, np.ndarray]:
    """The graph's inputs for ``window``, padded as the nodes pad them."""
    frame_p = pad_to_multiple(window["frame"], variant.multiple, "edge")
    h, w = frame_p.shape
    if variant.family == "deblur":
        return {"blurry": frame_p[None, None],
                "edi": pad_to_multiple(window["edi"], variant.multiple, "edge")[None, None],
                "voxel": pad_to_multiple(window["exposure_voxel"], variant.multiple, "zeros")[None],
                "noise": np.zeros((1, 1, h, w), np.float32)}
    voxel_p = pad_to_multiple(window["voxel"], variant.multiple, "zeros")
    noise = np.zeros((1, 4, h // variant.latent_down, w // variant.latent_down), np.float32)
    return {"anchor": frame_p[None, None], "voxel": voxel_p[None], "noise": noise}


def coarse_name(factor: int) -> str:
    return f"4step-coarse{factor} (latent at 1/{factor} res. + full-res. head)"


# -- the levers' graphs --------------------------------------------------------------------------------
def calibration_windows(recordings: list[RealRecording], per_recording: int) -> list[Window]:
    """Windows from the first half of each real recording (the half ``evaluate.py`` fits baselines on)."""
    windows = []
    for recording in recordings:
        cases = recording.cases()[: len(recording.cases()) // 2]
        for case in cases[:: max(1, len(cases) // per_recording)][:per_recording]:
            height, width = case["anchor"].shape
            voxel = events_voxel(case["events"], case["t_anchor"], case["t_target"], 5, height, width)
            windows.append({"frame": case["anchor"], "voxel": voxel})
    return windows


def int8_onnx(source: Path, windows: list[Window]) -> Path:
    """``source`` statically quantised to int8 (QDQ; per-channel int8 weights, uint8 activations, MinMax
    calibration over ``windows``), cached in the export cache (never beside a shipped export, in the package)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = export_cache_dir("predict") / f"{source.stem}-int8-qdq.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        return path
    probe = Variant("calibration", "predict", source, threads=2)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.pending = iter([feeds(probe, window) for window in windows])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.pending, None)

    prepared = path.with_name(f"{source.stem}-preprocessed.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()
    return path


# -- timing ----------------------------------------------------------------------------------------------
def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def time_rounds(variants: list[Variant], windows: list[Window], rounds: int, calls: int,
                log: Callable[[str], None]) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """Every variant ``calls`` calls per round, variants in turn, ``rounds`` rounds (see the module doc)."""
    sessions = {v.name: session(v.onnx, v.threads, v.opt_level) for v in variants}
    inputs = {v.name: [feeds(v, window) for window in windows] for v in variants}
    for v in variants:  # warm-up: allocator, thread pool, first-call kernels
        sessions[v.name].run(None, inputs[v.name][0])
    seconds: dict[str, list[list[float]]] = {v.name: [] for v in variants}
    loads = []
    for r in range(rounds):
        for v in variants:
            times = []
            for c in range(calls):
                start = time.perf_counter()
                sessions[v.name].run(None, inputs[v.name][(r * calls + c) % len(windows)])
                times.append(time.perf_counter() - start)
            seconds[v.name].append(times)
        loads.append(load_average())
        log(f"round {r + 1}/{rounds} done, load {loads[-1]}")
    return {v.name: summarise(seconds[v.name]) | {"threads": v.threads, "opt_level": v.opt_level,
                                                  "family": v.family, "onnx": v.onnx.name} for v in variants}, loads


def summarise(rounds: list[list[float]]) -> dict[str, Any]:
    medians = [float(np.median(r)) * 1e3 for r in rounds]
    every = np.concatenate(rounds) * 1e3
    return {"p50_ms": float(np.median(medians)), "round_p50_min_ms": min(medians), "round_p50_max_ms": max(medians),
            "p99_ms": float(np.percentile(every, 99)), "max_ms": float(every.max()), "calls": int(every.size),
            "rounds": len(rounds)}


# -- quality ---------------------------------------------------------------------------------------------
def psnr(target: np.ndarray, output: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(np.mean((target - output) ** 2)), 1e-12)))


def quality(recordings: list[RealRecording], int8_path: Path, fp32_path: Path,
            log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Mean PSNR per recording (second half, k = 1) of the baselines and each lever (see the module doc)."""
    torch.set_num_threads(1)
    table: dict[str, dict[str, float]] = {}
    int8_session, fp32_session = session(int8_path, 2, "all"), session(fp32_path, 2, "all")
    for recording in recordings:
        cases = recording.cases()
        half = len(cases) // 2
        fit, scored = cases[:half], cases[half:]
        height, width = recording.frames.shape[1:]
        c, eps, _ = fit_event_integration(fit, height, width)
        modules = {}
        for variant in ("4step", "1step"):
            model, steps = load_model(variant, "tiny", integration=(c, eps))
            modules[variant] = (FusedPredictor(model, steps).eval(), 16, 4)
        for factor in LATENT_FACTORS:
            model, steps = load_model(f"4step-coarse{factor}", "tiny", integration=(c, eps))
            modules[coarse_name(factor)] = (FusedPredictor(model, steps).eval(), 4 * factor, 4 * factor)
        scores: dict[str, list[float]] = {}
        for case in scored:
            anchor, target = case["anchor"], case["target"]
            window = {"frame": anchor,
                      "voxel": events_voxel(case["events"], case["t_anchor"], case["t_target"], 5, height, width)}
            outputs = {"copy-last": anchor,
                       "event integration": integrate_events(anchor, polarity_sum(case["events"], height, width),
                                                             c, eps)}
            for name, (module, multiple, down) in modules.items():
                probe = Variant(name, "predict", fp32_path, 1, multiple=multiple, latent_down=down)
                with torch.no_grad():
                    out = module(*(torch.from_numpy(a) for a in feeds(probe, window).values()))
                outputs[name] = out.numpy()[0, 0, :height, :width]
            probe = Variant("int8", "predict", fp32_path, 2)
            window_feeds = feeds(probe, window)
            fp32 = fp32_session.run(None, window_feeds)[0][0, 0, :height, :width]
            int8 = int8_session.run(None, window_feeds)[0][0, 0, :height, :width]
            outputs["4step ONNX fp32 (checkpoint calibration)"] = fp32
            outputs["4step ONNX int8 (checkpoint calibration)"] = int8
            for name, output in outputs.items():
                scores.setdefault(name, []).append(psnr(target, output))
        table[recording.name] = {name: float(np.mean(values)) for name, values in scores.items()}
        table[recording.name]["pairs"] = len(scored)
        log(f"quality {recording.name}: {table[recording.name]}")
    return table


# -- reports ---------------------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Student cost levers at the full DAVIS346 sensor (CPU)",
        "",
        f"Written {result['date']} by `{result['command']}` ({result['wall_s']:.0f} s). Machine: "
        f"{result['machine']['cpus']} CPUs, shared: load average {result['load']['start']} at the start, "
        f"{result['load']['end']} at the end (per round: {', '.join(map(str, result['load']['rounds']))}). "
        f"ONNX Runtime {result['onnxruntime']} on the CPU; {result['rounds']} rounds of {result['calls']} calls "
        "per variant, variants interleaved within each round. p50: median over rounds of each round's median "
        "(spread: min-max over rounds); p99 and max over all calls. 346x260 frames are padded to each network's "
        "multiple: 352x272 (16: the 4-step and 1-step students, 4step-coarse4) or 352x264 (8: 4step-coarse2, the "
        "deblur students); the coarse variants pad their pooled copy to the latent path's multiple inside the graph.",
        "",
        "| variant | size | threads | graph opt. | p50 ms (spread) | p99 ms | max ms | frames/s at p50 |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, row in result["timing"].items():
        lines.append(f"| {name} | {row['size']} | {row['threads']} | {row['opt_level']} | {row['p50_ms']:.1f} "
                     f"({row['round_p50_min_ms']:.1f}-{row['round_p50_max_ms']:.1f}) | {row['p99_ms']:.1f} | "
                     f"{row['max_ms']:.1f} | {1e3 / row['p50_ms']:.1f} |")
    if result.get("quality"):
        names = list(next(iter(result["quality"].values())))
        names.remove("pairs")
        recs = list(result["quality"])
        lines += ["", "Quality: mean PSNR (dB) against the next APS frame, second half of each real recording "
                  "(k = 1; see the module docstring for the calibration of each row).", "",
                  "| method | " + " | ".join(f"{r} ({result['quality'][r]['pairs']} pairs)" for r in recs) + " |",
                  "|---|" + "---:|" * len(recs)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{result['quality'][r][name]:.2f}" for r in recs) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evpipe.tools.bench_students", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5, at least 3)")
    parser.add_argument("--calls", type=int, default=6, help="calls per variant and round (default 6)")
    parser.add_argument("--large-calls", type=int, default=2,
                        help="calls per round at 640x480 and 1280x720 (default 2; 0 skips the larger sensors)")
    parser.add_argument("--windows", type=int, default=8, help="DAVIS346 street windows the calls cycle over")
    parser.add_argument("--quality", action="store_true", help="also score the levers on the real recordings")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/students.json"), help="JSON report path")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.rounds < 3:
        parser.error(f"--rounds must be >= 3 (a median with a spread), got {args.rounds}")
    if args.calls < 1 or args.windows < 1 or args.large_calls < 0:
        parser.error("--calls and --windows must be >= 1, --large-calls >= 0")

    def log(message: str) -> None:
        print(f"[bench_students {time.strftime('%H:%M:%S')}] {message}", flush=True)

    import onnxruntime as ort

    from evpipe.nodes.deblur.export import cached_student_onnx
    from evpipe.nodes.predict.export import cached_fused_onnx

    started, load_start = time.time(), load_average()
    log(f"load {load_start}; exporting / finding the graphs")
    four, one = cached_fused_onnx("4step", "tiny"), cached_fused_onnx("1step", "tiny")
    deblur, deblur_rt = cached_student_onnx("tiny"), cached_student_onnx("tiny-rt")
    coarse = {factor: cached_fused_onnx(f"4step-coarse{factor}", "tiny") for factor in LATENT_FACTORS}
    recordings = load_real_recordings(DEFAULT_REAL_DATA)
    int8 = int8_onnx(four, calibration_windows(recordings, 8))
    log("graphs ready; timing")
    variants = [Variant("4-step + head (full resolution)", "predict", four, 2),
                Variant("4-step + head, 1 thread", "predict", four, 1),
                *[Variant(f"4-step + head, graph opt. {level}", "predict", four, 2, level)
                  for level in OPT_LEVELS if level != "all"],
                Variant("1-step (no head)", "predict", one, 2),
                Variant("1-step (no head), 1 thread", "predict", one, 1),
                Variant("4-step + head, static int8", "predict", int8, 2),
                Variant("4-step + head, static int8, 1 thread", "predict", int8, 1),
                *[Variant(coarse_name(factor), "predict", path, 2, multiple=4 * factor, latent_down=4 * factor)
                  for factor, path in coarse.items()],
                *[Variant(coarse_name(factor) + ", 1 thread", "predict", path, 1, multiple=4 * factor,
                          latent_down=4 * factor) for factor, path in coarse.items()],
                Variant("deblur student", "deblur", deblur, 2),
                Variant("deblur student, 1 thread", "deblur", deblur, 1),
                Variant("deblur tiny-rt (compact student)", "deblur", deblur_rt, 2),
                Variant("deblur tiny-rt (compact student), 1 thread", "deblur", deblur_rt, 1)]
    windows = street_windows(args.windows)
    timing, loads = time_rounds(variants, windows, args.rounds, args.calls, log)
    for row in timing.values():
        row["size"] = "346x260"
    if args.large_calls:
        for shape in LARGER_SENSORS:
            big = [tiled(window, shape) for window in windows[:2]]
            larger = [Variant(f"4-step + head, {shape[1]}x{shape[0]}", "predict", four, 2),
                      *[Variant(f"4step-coarse{factor}, {shape[1]}x{shape[0]}", "predict", path, 2,
                                multiple=4 * factor, latent_down=4 * factor) for factor, path in coarse.items()],
                      Variant(f"1-step (no head), {shape[1]}x{shape[0]}", "predict", one, 2),
                      Variant(f"deblur student, {shape[1]}x{shape[0]}", "deblur", deblur, 2),
                      Variant(f"deblur tiny-rt, {shape[1]}x{shape[0]}", "deblur", deblur_rt, 2)]
            rows, more_loads = time_rounds(larger, big, 3, args.large_calls, log)
            for row in rows.values():
                row["size"] = f"{shape[1]}x{shape[0]}"
            timing.update(rows)
            loads += more_loads
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "command": command_line("evpipe.tools.bench_students", None if argv is None else list(argv)),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "onnxruntime": ort.__version__, "rounds": args.rounds, "calls": args.calls,
        "timing": timing,
    }
    if args.quality:
        log("quality on the real recordings")
        result["quality"] = quality(recordings, int8, four, log)
    result["load"] = {"start": load_start, "rounds": loads, "end": load_average()}
    result["wall_s"] = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
