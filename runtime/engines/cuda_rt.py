"""Thin helpers over the CUDA runtime API of cuda-python, used by the TensorRT backend.

cuda-python moved its runtime bindings: ``cuda.bindings.runtime`` is the path since cuda-python
12.6 and the only one in 13.x; ``cuda.cudart`` is the older path (removed in 13.x). Both are
supported. Every call returns ``(cudaError_t, *values)``; :func:`check` turns an error into an
exception naming the call.

UNVERIFIED HERE: this workplace has no GPU and no cuda-python; these helpers are exercised only
where the TensorRT tests run.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from evpipe.runtime.engines.base import BackendUnavailableError

INSTALL_HINT = "pip install 'evpipe[trt]' (TensorRT 10 and cuda-python)"


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as error:
            raise BackendUnavailableError(
                f"backend 'tensorrt' unavailable: cannot import cuda-python ({error}). "
                f"Install it with: {INSTALL_HINT}"
            ) from error
    return cudart


def check(result: tuple, what: str) -> Any:
    """Unpack a cuda-python result tuple; raise RuntimeError(what) on a CUDA error."""
    cudart = import_cudart()
    error, values = result[0], result[1:]
    if error != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(error)[1]
        raise RuntimeError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_identity(index: int) -> tuple[str, str]:
    """(GPU name, compute capability such as ``sm_90``) of CUDA device ``index``."""
    cudart = import_cudart()
    props = check(cudart.cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00").strip(), f"sm_{props.major}{props.minor}"


class PinnedBuffer:
    """Page-locked host memory (so cudaMemcpyAsync really is asynchronous), viewed as a flat numpy
    array of ``count`` elements of ``dtype``."""

    def __init__(self, count: int, dtype: np.dtype) -> None:
        cudart = import_cudart()
        self.nbytes = int(count) * np.dtype(dtype).itemsize
        self.ptr: int | None = int(
            check(cudart.cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})")
        )
        raw = (ctypes.c_uint8 * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8).view(dtype)

    def free(self) -> None:
        if self.ptr is not None:
            cudart = import_cudart()
            self.array = np.empty(0, self.array.dtype)  # drop the view before the memory goes
            check(cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = None


class DeviceBuffer:
    """``nbytes`` of device memory."""

    def __init__(self, nbytes: int) -> None:
        cudart = import_cudart()
        self.nbytes = int(nbytes)
        self.ptr: int | None = int(check(cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def free(self) -> None:
        if self.ptr is not None:
            cudart = import_cudart()
            check(cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = None


def create_stream() -> Any:
    cudart = import_cudart()
    # Non-blocking: no implicit synchronisation with the legacy default stream that other
    # libraries in the process might use.
    return check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")


def create_event() -> Any:
    cudart = import_cudart()
    return check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming), "cudaEventCreateWithFlags")


def copy_async(dst: int, src: int, nbytes: int, to_device: bool, stream: Any) -> None:
    cudart = import_cudart()
    kind = (
        cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        if to_device
        else cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    )
    check(cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")


def record(event: Any, stream: Any) -> None:
    check(import_cudart().cudaEventRecord(event, stream), "cudaEventRecord")


def wait_event(stream: Any, event: Any) -> None:
    check(import_cudart().cudaStreamWaitEvent(stream, event, 0), "cudaStreamWaitEvent")


def synchronize_event(event: Any) -> None:
    check(import_cudart().cudaEventSynchronize(event), "cudaEventSynchronize")
