"""Inference engines: one interface over ONNX Runtime, TensorRT and torch (CUDA graphs).

    from evpipe.runtime.engines import open_engine, ModelSource, TensorSpec

    engine = open_engine("predictor.onnx")                 # auto backend and device
    outputs = engine.run({"voxel": voxel})                 # synchronous
    ticket = engine.submit({"voxel": voxel})               # asynchronous, N in flight
    for done in engine.collect():                          # finished results, in submission order
        use(done.ticket, done.outputs)

See :func:`open_engine` for backends, devices, precisions and options, :class:`Engine` for the
calls, and :mod:`evpipe.runtime.engines.async_runner` for the pipelined mode and its policies.
"""

from evpipe.runtime.engines.async_runner import Completed
from evpipe.runtime.engines.base import (
    BACKENDS,
    POLICIES,
    PRECISIONS,
    BackendUnavailableError,
    Engine,
    EngineInputError,
    EngineRunError,
    ModelSource,
    TensorSpec,
)
from evpipe.runtime.engines.factory import (
    BACKEND_OPTIONS,
    SelectionError,
    available_backends,
    device_unavailable_reason,
    open_engine,
    resolve_device,
    select_engine,
)

__all__ = [
    "BACKENDS",
    "BACKEND_OPTIONS",
    "POLICIES",
    "PRECISIONS",
    "BackendUnavailableError",
    "Completed",
    "Engine",
    "EngineInputError",
    "EngineRunError",
    "ModelSource",
    "SelectionError",
    "TensorSpec",
    "available_backends",
    "device_unavailable_reason",
    "open_engine",
    "resolve_device",
    "select_engine",
]
