"""The one inference-engine interface every backend implements.

An :class:`Engine` runs a fixed model on numpy arrays: ``run(feeds)`` synchronously, or
``submit(feeds)`` / ``collect()`` with up to ``max_in_flight`` requests in flight whose results come
back in submission order (see :mod:`evpipe.runtime.engines.async_runner`). Backends subclass it and
implement ``_run_checked``; GPU backends also override ``_start`` / ``_wait`` so that upload, compute
and download of consecutive requests overlap on separate CUDA streams.

Input and output dtypes are the model's own (what the ONNX graph or the torch module declares);
``precision`` changes only how a backend computes inside, never what the caller passes or gets back.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from evpipe.runtime.engines.async_runner import AsyncRunner, Completed

BACKENDS = ("onnxruntime", "tensorrt", "torch")
PRECISIONS = ("fp32", "fp16")
POLICIES = ("lossless", "latest")


class BackendUnavailableError(RuntimeError):
    """A requested backend (or any backend, for ``auto``) cannot run here; the message says what to
    install."""


class EngineInputError(ValueError):
    """Feeds given to an engine do not match its declared inputs (names, shapes or dtypes)."""


class EngineRunError(RuntimeError):
    """An asynchronous request failed while running; raised by ``collect`` for that request."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one engine input or output.

    ``shape`` holds one entry per dimension: a positive int for a fixed size, ``None`` for a
    dimension the engine accepts at any size (a dynamic ONNX axis).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def is_static(self) -> bool:
        return all(d is not None for d in self.shape)

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype.name}[{dims}]"


@dataclass(frozen=True)
class ModelSource:
    """Every form in which one model is available; ``open_engine`` picks a backend that can use one.

    onnx: path to an ``.onnx`` file (read by the onnxruntime and tensorrt backends).
    torch: a ``torch.nn.Module``, or a callable with no arguments returning one (called only when the
        torch backend is chosen, so other backends never pay for loading it).
    inputs: the torch module's inputs in ``forward`` argument order; needed for the torch backend
        when no ``onnx`` is given (otherwise they are read from the ONNX graph).
    output_names: names for the torch module's outputs, in return order; defaults to the ONNX graph's
        output names, else ``output`` (one tensor) / ``output0``, ``output1``... (tuple) / the keys
        (dict).
    """

    onnx: str | os.PathLike[str] | None = None
    torch: Any = None
    inputs: Sequence[TensorSpec] | None = None
    output_names: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.onnx is None and self.torch is None:
            raise ValueError("ModelSource needs at least one of onnx= (a path) or torch= (a module)")
        if self.onnx is not None:
            path = Path(self.onnx)
            if not path.is_file():
                raise FileNotFoundError(f"ModelSource.onnx: no such file: {path}")
            object.__setattr__(self, "onnx", path)
        if self.torch is not None and not callable(self.torch):
            raise TypeError(
                f"ModelSource.torch must be a torch.nn.Module or a callable returning one, "
                f"got {type(self.torch).__name__}"
            )
        if self.inputs is not None:
            object.__setattr__(self, "inputs", tuple(self.inputs))
        if self.output_names is not None:
            object.__setattr__(self, "output_names", tuple(self.output_names))


@dataclass
class _Pool:
    """Worker threads for the CPU backends' asynchronous mode (created on first ``submit``)."""

    workers: int
    executor: ThreadPoolExecutor | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        with self.lock:
            if self.executor is None:
                self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="evpipe-engine")
        return self.executor.submit(fn, *args)

    def shutdown(self) -> None:
        with self.lock:
            if self.executor is not None:
                self.executor.shutdown(wait=True)
                self.executor = None


class Engine(ABC):
    """A loaded model on one device, with a synchronous and an asynchronous (pipelined) call.

    Attributes: ``backend`` (``onnxruntime`` | ``tensorrt`` | ``torch``), ``device`` (``cpu`` or
    ``cuda:N``), ``precision`` (``fp32`` | ``fp16``), ``inputs`` / ``outputs`` (tuples of
    :class:`TensorSpec`), ``max_in_flight`` and ``policy`` of the asynchronous mode.
    """

    backend: str = ""
    # True when _start copies the feeds (into pinned buffers) before returning, so the
    # asynchronous mode need not copy them first; CPU backends read them later, on a worker thread.
    stages_feeds_on_start: bool = False

    def __init__(
        self,
        *,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: str,
        precision: str,
        max_in_flight: int,
        policy: str,
    ) -> None:
        self.inputs: tuple[TensorSpec, ...] = tuple(inputs)
        self.outputs: tuple[TensorSpec, ...] = tuple(outputs)
        self.device = device
        self.precision = precision
        self.max_in_flight = max_in_flight
        self.policy = policy
        self._input_by_name = {spec.name: spec for spec in self.inputs}
        self._pool = _Pool(workers=max_in_flight)
        self._runner: AsyncRunner | None = None
        self._runner_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        ins = "; ".join(map(str, self.inputs))
        outs = "; ".join(map(str, self.outputs))
        return f"<{type(self).__name__} {self.device} {self.precision} in=({ins}) out=({outs})>"

    # ---- public API -------------------------------------------------------------------------

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one request and wait for it.

        feeds: one array per input name, each matching that input's dtype and shape exactly.
        Returns one freshly allocated array per output name (the caller owns them).
        Raises EngineInputError naming the offending input when feeds do not match ``inputs``.
        """
        self._check_open()
        return self._run_checked(self.check_feeds(feeds))

    def run_torch(self, tensors: Sequence[Any]) -> dict[str, Any]:
        """``run`` for callers that hold torch tensors (the diffusion samplers): ``tensors`` in
        ``inputs`` order, outputs as torch tensors on the first input's device.

        This default goes through numpy: zero-copy for contiguous CPU tensors, one host copy each way
        for GPU tensors. The torch backend on a GPU overrides it so tensors never leave the device.
        """
        import torch

        if len(tensors) != len(self.inputs):
            raise EngineInputError(f"{len(tensors)} tensors given; this engine expects {[s.name for s in self.inputs]}")
        device = tensors[0].device
        feeds = {spec.name: tensor.detach().to("cpu").contiguous().numpy()
                 for spec, tensor in zip(self.inputs, tensors, strict=True)}
        return {name: torch.from_numpy(array).to(device) for name, array in self.run(feeds).items()}

    def submit(self, feeds: Mapping[str, np.ndarray]) -> int:
        """Queue one request for asynchronous execution; returns its ticket (0, 1, 2, ...).

        With policy ``lossless`` this blocks while ``max_in_flight`` requests are running. With
        ``latest`` it never blocks: a request that cannot start yet waits, replacing (and counting
        in ``skipped``) any older request still waiting. Feeds are validated here, in the caller's
        thread, and may be reused by the caller as soon as this returns.
        """
        return self._async_runner().submit(feeds)

    def collect(self, block: bool = False, timeout: float | None = None) -> list[Completed]:
        """Results of finished requests, oldest first, each delivered once.

        block: wait until every submitted request has finished or been skipped (``timeout`` in
        seconds, None = no limit; TimeoutError when it runs out). Raises EngineRunError for a
        request that failed, after the results submitted before it have been returned.
        """
        if self._runner is None:
            return []
        return self._runner.collect(block=block, timeout=timeout)

    @property
    def skipped(self) -> int:
        """Requests dropped unrun by the ``latest`` policy (or discarded, still waiting, by close)."""
        return 0 if self._runner is None else self._runner.skipped

    @property
    def pending(self) -> int:
        """Requests submitted but not yet collectable (running or waiting to start)."""
        return 0 if self._runner is None else self._runner.pending

    def close(self) -> None:
        """Finish requests in flight, drop those still waiting, and free the backend's resources."""
        if self._closed:
            return
        if self._runner is not None:
            self._runner.close()
        self._pool.shutdown()
        self._release()
        self._closed = True

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate feeds against ``inputs``; returns C-contiguous arrays in input order.

        Nothing is cast: a wrong dtype is an error, because silently converting (say) float64
        voxels would hide a bug upstream and cost a copy per call.
        """
        if not isinstance(feeds, Mapping):
            raise EngineInputError(
                f"feeds must be a dict of input name -> numpy array, got {type(feeds).__name__}"
            )
        expected = list(self._input_by_name)
        unknown = [name for name in feeds if name not in self._input_by_name]
        missing = [name for name in expected if name not in feeds]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown input(s) {unknown}")
            if missing:
                parts.append(f"missing input(s) {missing}")
            raise EngineInputError(f"{'; '.join(parts)}; this engine expects {expected}")
        checked: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            value = feeds[spec.name]
            if not isinstance(value, np.ndarray):
                raise EngineInputError(
                    f"input '{spec.name}': expected a numpy array, got {type(value).__name__}"
                )
            if value.dtype != spec.dtype:
                raise EngineInputError(
                    f"input '{spec.name}': dtype {value.dtype.name}, expected {spec.dtype.name}"
                )
            if value.ndim != len(spec.shape) or any(
                want is not None and got != want for got, want in zip(value.shape, spec.shape, strict=True)
            ):
                raise EngineInputError(
                    f"input '{spec.name}': shape {list(value.shape)}, expected {_shape_text(spec.shape)}"
                )
            if any(got == 0 for got in value.shape):
                raise EngineInputError(f"input '{spec.name}': empty array of shape {list(value.shape)}")
            checked[spec.name] = np.ascontiguousarray(value)
        return checked

    # ---- backend hooks ----------------------------------------------------------------------

    @abstractmethod
    def _run_checked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated feeds synchronously (any thread may call this concurrently)."""

    def _start(self, feeds: dict[str, np.ndarray], slot: int) -> Any:
        """Begin one asynchronous request using pipeline slot ``slot`` (0 <= slot < max_in_flight,
        owned by this request until ``_wait`` returns); returns a handle for ``_wait``.

        The default hands the request to a worker thread, so on the CPU the preparation of request
        k+1 overlaps the compute of request k.
        """
        return self._pool.submit(self._run_checked, feeds)

    def _wait(self, handle: Any) -> dict[str, np.ndarray]:
        """Block until the request behind ``handle`` is done; returns its outputs."""
        return handle.result()

    def _release(self) -> None:  # noqa: B027 - optional hook: CPU backends hold nothing to free
        """Free backend resources (device buffers, streams, sessions)."""

    # ---- internals --------------------------------------------------------------------------

    def _async_runner(self) -> AsyncRunner:
        self._check_open()
        with self._runner_lock:
            if self._runner is None:
                from evpipe.runtime.engines.async_runner import AsyncRunner

                self._runner = AsyncRunner(self, max_in_flight=self.max_in_flight, policy=self.policy)
            return self._runner

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} on {self.device} is closed")


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("any" if d is None else str(d) for d in shape) + "]"


def normalize_output(result: Any, names: Sequence[str] | None) -> dict[str, Any]:
    """Map a model's return value (one tensor, a tuple/list, or a dict) to ``{name: tensor}``."""
    if isinstance(result, Mapping):
        if names is None:
            return dict(result)
        if set(names) != set(result):
            raise ValueError(f"model returned outputs {sorted(result)}, but output_names are {list(names)}")
        return {name: result[name] for name in names}
    tensors = list(result) if isinstance(result, (tuple, list)) else [result]
    if names is None:
        names = ["output"] if len(tensors) == 1 else [f"output{i}" for i in range(len(tensors))]
    if len(names) != len(tensors):
        raise ValueError(
            f"model returned {len(tensors)} output(s), but output_names has {len(names)}: {list(names)}"
        )
    return dict(zip(names, tensors, strict=True))
