"""torch backend: eager on the CPU, CUDA graphs on a GPU.

CPU (:class:`TorchCpuEngine`): the module runs eagerly under ``torch.inference_mode``; the
asynchronous mode runs requests on worker threads (torch releases the GIL inside its kernels).

GPU (:class:`TorchCudaEngine`): the module is warmed up on a side stream and captured once as a CUDA
graph over static input/output buffers (input shapes are fixed per engine: sensor size, bins, batch),
then every request replays it. Each pipeline slot owns pinned host buffers and device buffers; a
request is enqueued as upload (upload stream) -> copy into the static inputs, replay, copy out of
the static outputs (compute stream) -> download (download stream), chained by CUDA events, so the
upload of request k+1 and the download of request k-1 overlap the compute of request k.
``cuda_graph=False`` runs the module eagerly on the compute stream instead (for models that cannot
be captured). ``precision="fp32"`` switches TF32 off process-wide for cuDNN convolutions and
matmuls, so fp32 means IEEE fp32 (each evpipe model node is its own process).

UNVERIFIED HERE: this workplace has no GPU, so :class:`TorchCudaEngine` has never run in it; the
CPU path is tested. The GPU path follows the documented torch CUDA-graph recipe.

Inputs and outputs keep the module's own dtypes: with ``precision="fp16"`` the module runs under
``torch.autocast(float16)`` (weights stay fp32; convolutions and matmuls compute in fp16) and floating
outputs come back as float32. Autocast rather than ``module.half()``: the diffusion samplers build
fp32 tensors inside their forward (time embeddings, schedule constants), which a half module rejects.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evpipe.runtime.engines.base import (
    BackendUnavailableError,
    Engine,
    EngineInputError,
    TensorSpec,
    normalize_output,
)

# The synchronous run() of the GPU engine uses its own slot, so it never collides with the slots
# 0..max_in_flight-1 that the asynchronous mode hands out.
_SYNC_SLOT = -1


def import_torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise BackendUnavailableError(
            f"backend 'torch' unavailable: cannot import torch ({error}). Install it with: pip install torch"
        ) from error
    return torch


def torch_cuda_available() -> bool:
    try:
        torch = import_torch()
    except BackendUnavailableError:
        return False
    return bool(torch.cuda.is_available())


def load_module(module_or_loader: Any) -> Any:
    """The ``torch.nn.Module`` itself, or what a zero-argument loader returns."""
    torch = import_torch()
    module = module_or_loader if isinstance(module_or_loader, torch.nn.Module) else module_or_loader()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"the torch model loader returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _check_static(inputs: Sequence[TensorSpec]) -> None:
    for spec in inputs:
        if not spec.is_static:
            raise ValueError(
                f"backend 'torch' needs fixed input shapes (one CUDA graph per engine); input {spec} "
                "has a dynamic dimension: give ModelSource(inputs=[TensorSpec(name, fixed_shape, dtype)])"
            )


def _declared_dtype(tensor: Any, precision: str) -> np.dtype:
    """Output dtype the caller sees: the model's own, i.e. float32 where fp16 was only internal."""
    torch = import_torch()
    if precision == "fp16" and tensor.is_floating_point():
        return np.dtype(np.float32)
    return np.dtype(torch.empty((), dtype=tensor.dtype).numpy().dtype)


class TorchCpuEngine(Engine):
    """A torch module running eagerly on the CPU."""

    backend = "torch"

    def __init__(
        self,
        module_or_loader: Any,
        *,
        inputs: Sequence[TensorSpec],
        output_names: Sequence[str] | None,
        precision: str,
        max_in_flight: int,
        policy: str,
    ) -> None:
        torch = import_torch()
        _check_static(inputs)
        self._fp16 = precision == "fp16"
        self._module = load_module(module_or_loader).eval()
        self._output_names = output_names
        with torch.inference_mode():
            trial = self._forward([np.zeros(spec.shape, spec.dtype) for spec in inputs])
        outputs = [
            TensorSpec(name, tuple(t.shape), _declared_dtype(t, precision)) for name, t in trial.items()
        ]
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            device="cpu",
            precision=precision,
            max_in_flight=max_in_flight,
            policy=policy,
        )

    def _forward(self, arrays: list[np.ndarray]) -> dict[str, Any]:
        torch = import_torch()
        args = []
        for array in arrays:
            # from_numpy shares memory; a read-only array would make torch warn on every call.
            args.append(torch.from_numpy(array if array.flags.writeable else array.copy()))
        with torch.autocast("cpu", dtype=torch.float16, enabled=self._fp16):
            return normalize_output(self._module(*args), self._output_names)

    def _run_checked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = import_torch()
        with torch.inference_mode():
            result = self._forward([feeds[spec.name] for spec in self.inputs])
            return {
                spec.name: result[spec.name].to(_torch_dtype(spec.dtype)).numpy() for spec in self.outputs
            }


@dataclass
class _Slot:
    """Buffers and events private to one in-flight request."""

    host_in: dict[str, Any]  # pinned torch tensors
    host_in_np: dict[str, np.ndarray]  # numpy views of host_in
    dev_in: dict[str, Any]
    dev_out: dict[str, Any]
    host_out: dict[str, Any]
    host_out_np: dict[str, np.ndarray]
    uploaded: Any
    computed: Any
    downloaded: Any


class TorchCudaEngine(Engine):
    """A torch module on one CUDA GPU, replayed as a CUDA graph (UNVERIFIED here: no GPU)."""

    backend = "torch"
    stages_feeds_on_start = True

    def __init__(
        self,
        module_or_loader: Any,
        *,
        inputs: Sequence[TensorSpec],
        output_names: Sequence[str] | None,
        device: str,
        precision: str,
        max_in_flight: int,
        policy: str,
        cuda_graph: bool = True,
        warmup: int = 3,
    ) -> None:
        torch = import_torch()
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"backend 'torch' on {device}: this torch ({torch.__version__}) sees no CUDA GPU. "
                "Install a CUDA build of torch matching the driver "
                "(pip install torch from the CUDA wheel index)"
            )
        _check_static(inputs)
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (cuBLAS/cuDNN initialise before capture), got {warmup}")
        self._torch_device = torch.device(device)
        if precision == "fp32":
            _disable_tf32(torch)
        self._fp16 = precision == "fp16"
        module = copy.deepcopy(load_module(module_or_loader))  # leave the caller's module on its device
        self._module = module.to(device=self._torch_device).eval()
        self._output_names = output_names
        self._cuda_graph = cuda_graph
        self._graph: Any = None
        self._upload = torch.cuda.Stream(self._torch_device)
        self._compute = torch.cuda.Stream(self._torch_device)
        self._download = torch.cuda.Stream(self._torch_device)
        self._enqueue_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}
        with torch.cuda.device(self._torch_device), torch.inference_mode():
            self._static_in = {
                spec.name: torch.zeros(spec.shape, dtype=_torch_dtype(spec.dtype), device=self._torch_device)
                for spec in inputs
            }
            self._static_out = self._capture(warmup)
        outputs = [
            TensorSpec(name, tuple(t.shape), _declared_dtype(t, precision))
            for name, t in self._static_out.items()
        ]
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            device=device,
            precision=precision,
            max_in_flight=max_in_flight,
            policy=policy,
        )

    def _forward(self, args: Sequence[Any]) -> dict[str, Any]:
        """The module on device tensors, under fp16 autocast for ``precision="fp16"`` (no autocast
        cache: its cached casts would go stale between CUDA graph replays)."""
        torch = import_torch()
        with torch.autocast("cuda", dtype=torch.float16, enabled=self._fp16, cache_enabled=False):
            return normalize_output(self._module(*args), self._output_names)

    def _capture(self, warmup: int) -> dict[str, Any]:
        torch = import_torch()
        args = list(self._static_in.values())
        # Warm-up on a side stream, as torch requires before capture (lazy cuDNN/cuBLAS set-up
        # and autotuning must not be recorded into the graph).
        side = torch.cuda.Stream(self._torch_device)
        side.wait_stream(torch.cuda.current_stream(self._torch_device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                result = self._forward(args)
        torch.cuda.current_stream(self._torch_device).wait_stream(side)
        if not self._cuda_graph:
            return result
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            static_out = self._forward(args)
        torch.cuda.synchronize(self._torch_device)
        return static_out

    def _slot(self, index: int) -> _Slot:
        torch = import_torch()
        if index not in self._slots:

            def pinned(spec: TensorSpec) -> Any:
                return torch.empty(spec.shape, dtype=_torch_dtype(spec.dtype), pin_memory=True)

            def on_device(spec: TensorSpec) -> Any:
                return torch.empty(spec.shape, dtype=_torch_dtype(spec.dtype), device=self._torch_device)

            host_in = {spec.name: pinned(spec) for spec in self.inputs}
            host_out = {spec.name: pinned(spec) for spec in self.outputs}
            self._slots[index] = _Slot(
                host_in=host_in,
                host_in_np={name: t.numpy() for name, t in host_in.items()},
                dev_in={spec.name: on_device(spec) for spec in self.inputs},
                dev_out={spec.name: on_device(spec) for spec in self.outputs},
                host_out=host_out,
                host_out_np={name: t.numpy() for name, t in host_out.items()},
                uploaded=torch.cuda.Event(),
                computed=torch.cuda.Event(),
                downloaded=torch.cuda.Event(),
            )
        return self._slots[index]

    def _start(self, feeds: dict[str, np.ndarray], slot: int) -> _Slot:
        torch = import_torch()
        buffers = self._slot(slot)
        # The slot's previous request was waited for, so its pinned buffers are free to overwrite.
        for name, array in feeds.items():
            np.copyto(buffers.host_in_np[name], array)
        with torch.cuda.device(self._torch_device), torch.inference_mode(), self._enqueue_lock:
            with torch.cuda.stream(self._upload):
                for name, host in buffers.host_in.items():
                    buffers.dev_in[name].copy_(host, non_blocking=True)
                buffers.uploaded.record(self._upload)
            self._compute.wait_event(buffers.uploaded)
            with torch.cuda.stream(self._compute):
                if self._cuda_graph:
                    for name, static in self._static_in.items():
                        static.copy_(buffers.dev_in[name])
                    self._graph.replay()
                    result = self._static_out
                else:
                    result = self._forward([buffers.dev_in[spec.name] for spec in self.inputs])
                for name, device_out in buffers.dev_out.items():
                    device_out.copy_(result[name])  # also casts fp16 -> the declared dtype
                buffers.computed.record(self._compute)
            self._download.wait_event(buffers.computed)
            with torch.cuda.stream(self._download):
                for name, host in buffers.host_out.items():
                    host.copy_(buffers.dev_out[name], non_blocking=True)
                buffers.downloaded.record(self._download)
        return buffers

    def run_torch(self, tensors: Sequence[Any]) -> dict[str, Any]:
        """Device tensors in and out without a host round trip: the inputs are copied into the CUDA
        graph's static inputs on the compute stream (after the caller's stream), the graph replays and
        the outputs are cloned; the caller's stream then waits for the compute stream."""
        torch = import_torch()
        self._check_open()
        if len(tensors) != len(self.inputs):
            raise EngineInputError(f"{len(tensors)} tensors given; this engine expects {[s.name for s in self.inputs]}")
        for spec, tensor in zip(self.inputs, tensors, strict=True):
            if tuple(tensor.shape) != spec.shape:
                raise EngineInputError(f"input '{spec.name}': shape {list(tensor.shape)}, expected {list(spec.shape)}")
        with torch.cuda.device(self._torch_device), torch.inference_mode(), self._enqueue_lock:
            caller = torch.cuda.current_stream(self._torch_device)
            self._compute.wait_stream(caller)
            with torch.cuda.stream(self._compute):
                for spec, tensor in zip(self.inputs, tensors, strict=True):
                    self._static_in[spec.name].copy_(tensor, non_blocking=True)
                if self._cuda_graph:
                    self._graph.replay()
                    result = self._static_out
                else:
                    result = self._forward(list(self._static_in.values()))
                outputs = {spec.name: result[spec.name].to(_torch_dtype(spec.dtype), copy=True)
                           for spec in self.outputs}
            caller.wait_stream(self._compute)
            for tensor in outputs.values():
                tensor.record_stream(caller)  # made on the compute stream, used on the caller's
        return outputs

    def _wait(self, handle: _Slot) -> dict[str, np.ndarray]:
        handle.downloaded.synchronize()
        return {name: array.copy() for name, array in handle.host_out_np.items()}

    def _run_checked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._sync_lock:
            return self._wait(self._start(feeds, _SYNC_SLOT))

    def _release(self) -> None:
        torch = import_torch()
        torch.cuda.synchronize(self._torch_device)
        self._slots.clear()
        self._graph = None
        self._static_in.clear()
        self._static_out.clear()


def _torch_dtype(dtype: np.dtype) -> Any:
    torch = import_torch()
    return torch.from_numpy(np.empty(0, dtype)).dtype


def _disable_tf32(torch: Any) -> None:
    try:  # torch >= 2.9
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    except AttributeError:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
