"""Benchmark the inference engines: synchronous vs asynchronous (N in flight) on the CPU backends.

For a small convolutional net at a 1x5x128x128 voxel input, measured in one run for each of
ONNX Runtime (CPU) and torch (CPU):

- sync: latency of each ``engine.run`` call (p50/p99) and calls per second;
- async: ``max_in_flight`` requests kept in flight with ``submit``/``collect`` (lossless): latency of
  each request from submit to result (p50/p99) and calls per second;
- ratios async/sync for throughput and p50 latency.

Sync and async alternate in rounds over the same inputs so that load from other jobs on a shared
machine falls on both; calls/s is the median over rounds.

Writes ``benchmarks/engines.json`` and ``benchmarks/engines.md``. Runs in well under a minute.

    python -m evpipe.tools.bench_engines --calls 300 --rounds 5 --in-flight 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.runtime.engines import Engine, ModelSource, TensorSpec, open_engine
from evpipe.runtime.engines.onnx_export import export_onnx

INPUT_SHAPE = (1, 5, 128, 128)


def small_conv_net(in_channels: int = 5, width: int = 16, seed: int = 0) -> Any:
    """A 3-layer 3x3 conv net (voxel bins -> one image), deterministic weights from ``seed``.

    Input: float32 [batch, in_channels, H, W]; output: float32 [batch, 1, H, W].
    """
    import torch

    class SmallConvNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(in_channels, width, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(width, width, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(width, 1, 3, padding=1),
            )

        def forward(self, voxel: torch.Tensor) -> torch.Tensor:
            return self.body(voxel)

    torch.manual_seed(seed)
    return SmallConvNet().eval()


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def measure(
    engine: Engine, feeds_list: Sequence[dict[str, np.ndarray]], rounds: int, progress: Any
) -> dict[str, Any]:
    """Sync and async over the same feeds, alternating in ``rounds`` so that a load spike from
    other jobs on the machine hits both modes alike. Latencies are pooled over rounds; calls/s is
    the median over rounds."""
    for feeds in feeds_list[:10]:  # warm-up: allocator, thread pools, first-call kernels
        engine.run(feeds)
    engine.submit(feeds_list[0])  # warm-up: starts the worker threads
    engine.collect(block=True)
    sync_latencies: list[float] = []
    async_latencies: list[float] = []
    sync_rates, async_rates = [], []
    for chunk in np.array_split(np.arange(len(feeds_list)), rounds):
        batch = [feeds_list[i] for i in chunk]
        start = time.perf_counter()
        for feeds in batch:
            began = time.perf_counter()
            engine.run(feeds)
            sync_latencies.append(time.perf_counter() - began)
        sync_rates.append(len(batch) / (time.perf_counter() - start))
        progress.update(len(batch))

        start = time.perf_counter()
        for feeds in batch:
            engine.submit(feeds)
        results = engine.collect(block=True)
        async_rates.append(len(batch) / (time.perf_counter() - start))
        if len(results) != len(batch):
            raise RuntimeError(f"async round returned {len(results)} results for {len(batch)} requests")
        async_latencies += [r.latency_s for r in results]
        progress.update(len(batch))

    sync = {"calls_per_s": float(np.median(sync_rates)), **_percentiles(sync_latencies)}
    asynchronous = {"calls_per_s": float(np.median(async_rates)), **_percentiles(async_latencies)}
    return {
        "sync": sync,
        "async": asynchronous,
        "async_over_sync_throughput": asynchronous["calls_per_s"] / sync["calls_per_s"],
        "async_over_sync_p50_latency": asynchronous["p50_ms"] / sync["p50_ms"],
    }


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Inference engines: sync vs async on the CPU",
        "",
        f"Input {report['input_shape']} float32, small 3-layer conv net, {report['calls']} calls per mode "
        f"in {report['rounds']} alternating rounds (calls/s: median over rounds), "
        f"async with {report['max_in_flight']} in flight (lossless). "
        f"Machine: {report['machine']['cpus']} usable CPU cores (shared with other jobs). "
        "Latency: sync = one `run` call; async = submit to result ready.",
        "",
        "| backend | sync p50 ms | sync p99 ms | sync calls/s | async p50 ms | async p99 ms | async calls/s "
        "| throughput async/sync | p50 latency async/sync |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["backends"].items():
        s, a = row["sync"], row["async"]
        lines.append(
            f"| {name} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['calls_per_s']:.1f} | "
            f"{a['p50_ms']:.2f} | {a['p99_ms']:.2f} | {a['calls_per_s']:.1f} | "
            f"{row['async_over_sync_throughput']:.2f} | {row['async_over_sync_p50_latency']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300, help="calls per mode and backend (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="sync/async alternations (default 5)")
    parser.add_argument(
        "--in-flight", type=int, default=2, help="requests in flight in async mode (default 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all usable cores)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/engines.json"), help="JSON report path")
    args = parser.parse_args(argv)
    if args.calls < 20:
        parser.error(f"--calls must be >= 20 (p99 needs samples), got {args.calls}")
    if not 1 <= args.rounds <= args.calls:
        parser.error(f"--rounds must be in 1..{args.calls}, got {args.rounds}")
    if args.in_flight < 1:
        parser.error(f"--in-flight must be >= 1, got {args.in_flight}")

    import onnxruntime
    import torch
    from tqdm import tqdm

    spec = TensorSpec("voxel", INPUT_SHAPE, np.float32)
    net = small_conv_net()
    rng = np.random.default_rng(0)
    feeds_list = [{"voxel": rng.standard_normal(INPUT_SHAPE, dtype=np.float32)} for _ in range(args.calls)]
    report: dict[str, Any] = {
        "input_shape": list(INPUT_SHAPE),
        "calls": args.calls,
        "rounds": args.rounds,
        "max_in_flight": args.in_flight,
        "machine": {
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__,
        },
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = export_onnx(net, (torch.zeros(spec.shape),), Path(folder) / "small_conv_net.onnx", [spec.name],
                                "image")
        source = ModelSource(onnx=onnx_path, torch=net)
        backends = {
            "onnxruntime-cpu": {"backend": "onnxruntime", "onnxruntime": {"threads": args.threads}},
            "torch-cpu": {"backend": "torch"},
        }
        with tqdm(total=len(backends) * 2 * args.calls, desc="bench engines", unit="call") as progress:
            for label, settings in backends.items():
                with open_engine(source, device="cpu", max_in_flight=args.in_flight, **settings) as engine:
                    report["backends"][label] = measure(engine, feeds_list, args.rounds, progress)
                    if label == "onnxruntime-cpu":
                        report["machine"]["onnxruntime_threads"] = engine.threads
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    markdown_path = args.out.with_suffix(".md")
    markdown_path.write_text(_markdown(report))
    print(_markdown(report))
    print(f"wrote {args.out} and {markdown_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
