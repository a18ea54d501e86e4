"""``open_engine``: choose a backend for a model, device and precision, and open it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.runtime.engines.base import (
    BACKENDS,
    POLICIES,
    PRECISIONS,
    BackendUnavailableError,
    Engine,
    ModelSource,
    TensorSpec,
)

# Fastest first, per device. TensorRT and ONNX Runtime read the ONNX form, torch the module form.
_AUTO_ORDER = {"cuda": ("tensorrt", "torch", "onnxruntime"), "cpu": ("onnxruntime", "torch")}

# Options each backend accepts (beyond model, device, precision, max_in_flight, policy).
BACKEND_OPTIONS = {
    "onnxruntime": ("threads", "spin"),
    "tensorrt": ("cache_dir", "input_shapes", "workspace_mb", "rebuild"),
    "torch": ("cuda_graph", "warmup"),
}


def open_engine(
    model: ModelSource | str | os.PathLike[str],
    backend: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    *,
    max_in_flight: int = 2,
    policy: str = "lossless",
    onnxruntime: Mapping[str, Any] | None = None,
    tensorrt: Mapping[str, Any] | None = None,
    torch: Mapping[str, Any] | None = None,
) -> Engine:
    """Open ``model`` on one backend and device.

    model: a path to an ``.onnx`` file, or a :class:`ModelSource` bundling the ONNX file and/or the
        torch module (``auto`` can then pick whichever backend is fastest here).
    backend: ``auto`` | ``onnxruntime`` | ``tensorrt`` | ``torch``. ``auto`` takes the first that is
        installed, can use a form of the model and supports ``precision``, in the order: on a GPU
        TensorRT, torch (CUDA graphs), the ONNX Runtime CUDA provider; on the CPU ONNX Runtime,
        torch.
    device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``. ``auto`` tries the first CUDA GPU (if torch
        sees one) and then the CPU, so a model no GPU backend can run still opens on the CPU.
    precision: ``fp32`` | ``fp16`` (fp16: tensorrt and torch; inputs/outputs keep the model's dtypes).
    max_in_flight, policy: the asynchronous mode (``submit``/``collect``): how many requests run at
        once, and ``lossless`` (submit blocks when full) or ``latest`` (stale waiting requests are
        skipped and counted).
    onnxruntime, tensorrt, torch: options for that backend, used only if it is the one opened (so
        one configuration serves ``auto`` on every machine). onnxruntime: ``threads`` (intra-op
        threads, default all usable cores), ``spin`` (busy-wait, default False). tensorrt:
        ``cache_dir``, ``input_shapes`` (``{input: shape or (min, opt, max)}`` for dynamic inputs),
        ``workspace_mb`` (1024), ``rebuild`` (False). torch (GPU only; the CPU path has no
        options): ``cuda_graph`` (True), ``warmup`` (3).

    Raises BackendUnavailableError (naming what to install) when the backend cannot run here,
    ValueError for bad arguments.
    """
    source = _as_source(model)
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
    per_backend = {
        "onnxruntime": dict(onnxruntime or {}),
        "tensorrt": dict(tensorrt or {}),
        "torch": dict(torch or {}),
    }
    for name, given in per_backend.items():
        unknown = sorted(set(given) - set(BACKEND_OPTIONS[name]))
        if unknown:
            raise ValueError(
                f"{name}= options {unknown} are unknown; backend '{name}' takes {list(BACKEND_OPTIONS[name])}"
            )
    backend, device = _choose(source, backend, device, precision)
    options = per_backend[backend]
    common = {"precision": precision, "max_in_flight": max_in_flight, "policy": policy}
    if backend == "onnxruntime":
        from evpipe.runtime.engines.ort_backend import OrtEngine

        return OrtEngine(_onnx_path(source, backend), device=device, **common, **options)
    if backend == "tensorrt":
        from evpipe.runtime.engines.trt_backend import TrtEngine

        if device == "cpu":
            raise BackendUnavailableError("backend 'tensorrt' runs on a CUDA GPU only; device is 'cpu'")
        return TrtEngine(_onnx_path(source, backend), device=device, **common, **options)
    return _open_torch(source, device, common, options)


def resolve_device(device: str) -> str:
    """Normalise a device string to ``cpu`` or ``cuda:N``."""
    if device == "auto":
        return "cuda:0" if _torch_sees_gpu() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda":
        return "cuda:0"
    if device.startswith("cuda:") and device[5:].isdigit():
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


class SelectionError(BackendUnavailableError):
    """What a caller asked for cannot run on this machine. ``parameter`` names what to change
    (``backend``, ``device`` or ``precision``); the message names the missing package or device and
    how to get it, without the parameter's name (the caller prefixes its own, e.g. ``predictor.backend``)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def select_engine(backend: str, device: str, precision: str, forms: tuple[str, ...] = BACKENDS) -> tuple[str, str]:
    """The (backend, device) that ``open_engine`` will use here for a model available to ``forms``.

    backend ``auto`` takes the fastest of ``forms`` (backends the model can be given to) that can run,
    in the order of :func:`open_engine`; an explicit backend, device or precision that cannot run here
    raises :class:`SelectionError` naming what is missing — never a silent fall back to another
    backend or to the CPU. ``device`` ``auto`` is the first CUDA GPU when torch sees one, else the CPU.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise SelectionError("backend", f"{backend!r} is not one of auto, {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise SelectionError("precision", f"{precision!r} is not one of {', '.join(PRECISIONS)}")
    try:
        where = resolve_device(device)
    except ValueError as error:
        raise SelectionError("device", str(error).replace("device must be", "must be")) from None
    if device != "auto":
        missing = device_unavailable_reason(where)
        if missing is not None:
            raise SelectionError("device", missing)
    if backend != "auto":
        if backend not in forms:
            raise SelectionError("backend", f"{backend} cannot run this model (it is given to {', '.join(forms)})")
        reason = _selection_reason(backend, where, precision)
        if reason is not None:
            raise reason
        return backend, where
    order = [name for name in _AUTO_ORDER["cpu" if where == "cpu" else "cuda"] if name in forms]
    reasons = []
    for name in order:
        reason = _selection_reason(name, where, precision)
        if reason is None:
            return name, where
        reasons.append(f"{name}: {reason}")
    raise SelectionError("precision" if precision != "fp32" else "backend",
                         f"no backend can run this model on {where} at {precision} ({'; '.join(reasons)})")


def device_unavailable_reason(device: str) -> str | None:
    """Why the normalised ``device`` (``cpu`` or ``cuda:N``) cannot be used here (None: it can)."""
    if device == "cpu":
        return None
    try:
        from evpipe.runtime.engines.torch_backend import import_torch

        torch = import_torch()
    except BackendUnavailableError as error:
        return f"{device} needs torch to find the GPU ({error})"
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        return (f"{device.split(':')[0]} is not available: no CUDA GPU is visible (torch {torch.__version__} is "
                f"{build}; on a CUDA machine pip install 'evpipe[gpu]' with a CUDA build of torch)")
    index, count = int(device.split(":")[1]), torch.cuda.device_count()
    if index >= count:
        return f"{device} does not exist: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})"
    return None


def _selection_reason(backend: str, device: str, precision: str) -> SelectionError | None:
    """Why ``backend`` cannot run on ``device`` at ``precision`` here, phrased for a user (None: it can)."""
    if backend == "onnxruntime":
        try:
            from evpipe.runtime.engines.ort_backend import (
                cuda_provider_available,
                cuda_provider_missing,
                import_onnxruntime,
            )

            import_onnxruntime()
        except BackendUnavailableError:
            return SelectionError("backend", "onnxruntime is not installed (pip install onnxruntime, or "
                                  "onnxruntime-gpu on a CUDA machine)")
        if precision != "fp32":
            return SelectionError("precision", f"{precision} is not supported by onnxruntime (it runs the ONNX "
                                  "graph at its exported fp32; use backend torch or tensorrt)")
        if device != "cpu" and not cuda_provider_available():
            return SelectionError("backend", cuda_provider_missing())
        return None
    if backend == "tensorrt":
        try:
            from evpipe.runtime.engines.cuda_rt import import_cudart
            from evpipe.runtime.engines.trt_backend import import_tensorrt

            import_tensorrt()
            import_cudart()
        except BackendUnavailableError:
            return SelectionError("backend", "tensorrt is not installed (pip install 'evpipe[trt]')")
        if device == "cpu":
            return SelectionError("device", "cpu cannot run backend tensorrt (it runs on a CUDA GPU only)")
        return None
    try:
        from evpipe.runtime.engines.torch_backend import import_torch

        import_torch()
    except BackendUnavailableError:
        return SelectionError("backend", "torch is not installed (pip install torch)")
    missing = device_unavailable_reason(device)
    return None if missing is None else SelectionError("device", missing)


def available_backends(device: str = "auto", precision: str = "fp32") -> dict[str, str | None]:
    """For each backend: None if it can run on ``device`` at ``precision`` here, else the reason."""
    device = resolve_device(device)
    return {name: _unavailable_reason(name, device, precision) for name in BACKENDS}


def _as_source(model: ModelSource | str | os.PathLike[str]) -> ModelSource:
    if isinstance(model, ModelSource):
        return model
    if isinstance(model, (str, os.PathLike)):
        return ModelSource(onnx=model)
    raise TypeError(
        f"model must be a path to an .onnx file or a ModelSource, got {type(model).__name__}; "
        "wrap a torch module as ModelSource(torch=module, inputs=[TensorSpec(...)])"
    )


def _onnx_path(source: ModelSource, backend: str) -> Path:
    if source.onnx is None:
        raise ValueError(f"backend '{backend}' needs an ONNX file: give ModelSource(onnx=path, ...)")
    return Path(source.onnx)


def _torch_sees_gpu() -> bool:
    from evpipe.runtime.engines.torch_backend import torch_cuda_available

    return torch_cuda_available()


def _unavailable_reason(backend: str, device: str, precision: str) -> str | None:
    """Why ``backend`` cannot run on ``device`` at ``precision`` here (None: it can)."""
    try:
        if backend == "onnxruntime":
            from evpipe.runtime.engines.ort_backend import cuda_provider_available, import_onnxruntime

            import_onnxruntime()
            if precision != "fp32":
                return "onnxruntime runs ONNX graphs at their exported precision (fp32 here)"
            if device != "cpu" and not cuda_provider_available():
                return "onnxruntime lacks the CUDA execution provider (pip install onnxruntime-gpu)"
        elif backend == "tensorrt":
            if device == "cpu":
                return "tensorrt runs on a CUDA GPU only"
            from evpipe.runtime.engines.cuda_rt import import_cudart
            from evpipe.runtime.engines.trt_backend import import_tensorrt

            import_tensorrt()
            import_cudart()
        else:
            from evpipe.runtime.engines.torch_backend import import_torch, torch_cuda_available

            import_torch()
            if device != "cpu" and not torch_cuda_available():
                return "this torch build sees no CUDA GPU (install a CUDA build of torch)"
    except BackendUnavailableError as error:
        return str(error)
    return None


def _choose(source: ModelSource, backend: str, device: str, precision: str) -> tuple[str, str]:
    """(backend, device) to open: the first candidate, fastest first, that can run here."""
    if device == "auto":
        devices = (["cuda:0"] if _torch_sees_gpu() else []) + ["cpu"]
    else:
        devices = [resolve_device(device)]
    candidates = [
        (name, where)
        for where in devices
        for name in _AUTO_ORDER["cpu" if where == "cpu" else "cuda"]
        if backend in ("auto", name)
    ]
    reasons = []
    for name, where in candidates:
        form_missing = source.torch is None if name == "torch" else source.onnx is None
        if form_missing:
            reasons.append(
                f"{name} on {where}: model has no {'torch module' if name == 'torch' else 'ONNX file'}"
            )
            continue
        reason = _unavailable_reason(name, where, precision)
        if reason is None:
            return name, where
        reasons.append(f"{name} on {where}: {reason}")
    if backend != "auto":
        # Open it anyway on the requested (or most likely) device: the backend's own error is the
        # most specific (what is missing and how to install it).
        return backend, devices[0]
    raise BackendUnavailableError(
        f"no backend can run this model on {' or '.join(devices)} at {precision}: " + "; ".join(reasons)
    )


def _open_torch(source: ModelSource, device: str, common: dict[str, Any], options: dict[str, Any]) -> Engine:
    from evpipe.runtime.engines.torch_backend import TorchCpuEngine, TorchCudaEngine

    if source.torch is None:
        raise ValueError(
            "backend 'torch' needs a torch module: give ModelSource(torch=module_or_loader, ...)"
        )
    inputs, output_names = _torch_io(source)
    if device == "cpu":
        return TorchCpuEngine(source.torch, inputs=inputs, output_names=output_names, **common)
    return TorchCudaEngine(
        source.torch, inputs=inputs, output_names=output_names, device=device, **common, **options
    )


def _torch_io(source: ModelSource) -> tuple[tuple[TensorSpec, ...], tuple[str, ...] | None]:
    """Input specs and output names for the torch form: given explicitly, else from the ONNX graph."""
    if source.inputs is not None:
        return tuple(source.inputs), source.output_names
    if source.onnx is None:
        raise ValueError(
            "backend 'torch' needs the module's inputs: give ModelSource(inputs=[TensorSpec(...)])"
        )
    import onnx

    graph = onnx.load(str(source.onnx), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in initializers:  # older exporters list weights among the inputs
            continue
        tensor_type = value.type.tensor_type
        shape = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor_type.shape.dim
        )
        inputs.append(
            TensorSpec(
                value.name, shape, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
            )
        )
    names = source.output_names or tuple(value.name for value in graph.output)
    return tuple(inputs), names
