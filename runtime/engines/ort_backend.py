"""ONNX Runtime backend: the CPU execution provider (the default here) and the CUDA provider.

CPU: session options are chosen for a small, shared CPU: ``threads`` intra-op threads (default: the
cores this process may use), one inter-op thread with sequential execution (the event models are
chains of convolutions, so running graph branches in parallel buys nothing and oversubscribes), all
graph optimisations, and no busy-wait spinning of idle pool threads unless ``spin=True`` (spinning
burns the cores other nodes need and fights concurrent requests of the asynchronous mode).

CUDA (``device="cuda:N"``, needs the ``onnxruntime-gpu`` package): inputs and outputs go through an
IO binding, so outputs stay on the GPU until one copy back, and TF32 is off so that ``fp32`` means
IEEE fp32. Sessions are thread-safe, so the asynchronous mode runs requests on worker threads.

ONNX Runtime executes the graph at the precision it was exported with: ``precision="fp16"`` is
rejected here and served by the tensorrt and torch backends.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.runtime.engines.base import BackendUnavailableError, Engine, TensorSpec

# ONNX Runtime reports tensor types as strings such as "tensor(float)".
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailableError(
            f"backend 'onnxruntime' unavailable: cannot import onnxruntime ({error}). "
            "Install it with: pip install onnxruntime (CPU) or pip install onnxruntime-gpu (CUDA)"
        ) from error
    return onnxruntime


def cuda_provider_available() -> bool:
    """Whether the installed onnxruntime was built with the CUDA execution provider."""
    try:
        ort = import_onnxruntime()
    except BackendUnavailableError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def installed_builds() -> list[str]:
    """Which ONNX Runtime distributions pip has installed: ``onnxruntime`` (CPU) and/or
    ``onnxruntime-gpu`` (CUDA). Both at once is broken: they install the same ``onnxruntime`` package
    folder, so whichever came last overwrote the other's files."""
    from importlib import metadata

    found = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def cuda_provider_missing() -> str:
    """Why this onnxruntime has no CUDA execution provider, and the pip commands that fix it."""
    builds = installed_builds()
    fix = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
    if len(builds) == 2:
        return f"onnxruntime and onnxruntime-gpu are both installed and overwrite each other ({fix})"
    if "onnxruntime-gpu" in builds:
        return ("onnxruntime-gpu is installed but its CUDA execution provider does not load (check that its "
                "CUDA and cuDNN libraries match the driver)")
    return f"onnxruntime has no CUDA execution provider: the CPU build is installed ({fix})"


def usable_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OrtEngine(Engine):
    """An ONNX model in an ONNX Runtime session on the CPU or one CUDA GPU."""

    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: Path,
        *,
        device: str,
        precision: str,
        max_in_flight: int,
        policy: str,
        threads: int | None = None,
        spin: bool = False,
    ) -> None:
        ort = import_onnxruntime()
        if precision != "fp32":
            raise ValueError(
                f"backend 'onnxruntime' runs the ONNX graph at the precision it was exported with; "
                f"precision={precision!r} is served by backend 'tensorrt' or 'torch'"
            )
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3  # errors only: warnings about unused initialisers are noise
        if device == "cpu":
            providers: list[Any] = ["CPUExecutionProvider"]
            self._device_id = -1
        else:
            if not cuda_provider_available():
                raise BackendUnavailableError(f"backend 'onnxruntime' on {device}: {cuda_provider_missing()}")
            self._device_id = int(device.split(":")[1])
            providers = [("CUDAExecutionProvider", {"device_id": self._device_id, "use_tf32": 0})]
        try:
            self._session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        except Exception as error:
            raise ValueError(f"onnxruntime cannot load {onnx_path}: {error}") from error
        super().__init__(
            inputs=[_spec(arg) for arg in self._session.get_inputs()],
            outputs=[_spec(arg) for arg in self._session.get_outputs()],
            device=device,
            precision=precision,
            max_in_flight=max_in_flight,
            policy=policy,
        )
        self._output_names = [spec.name for spec in self.outputs]
        self.onnx_path = onnx_path
        self.threads = options.intra_op_num_threads

    def _run_checked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._device_id < 0:
            results = self._session.run(self._output_names, feeds)
        else:
            # A binding per call keeps concurrent requests independent.
            binding = self._session.io_binding()
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            for name in self._output_names:
                binding.bind_output(name, "cuda", self._device_id)
            self._session.run_with_iobinding(binding)
            results = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, results, strict=True))

    def _release(self) -> None:
        del self._session


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in _ORT_TYPES:
        raise ValueError(f"tensor '{arg.name}' has type {arg.type}, which evpipe engines do not handle")
    # Dynamic axes come back as names (str) or None.
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(_ORT_TYPES[arg.type]))
