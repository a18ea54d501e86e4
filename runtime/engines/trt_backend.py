"""TensorRT 10 backend: engines built from ONNX files, cached on disk, run on cuda-python streams.

UNVERIFIED HERE: TensorRT cannot be installed in this workplace and it has no GPU, so this module
has never run in it. It is written against the TensorRT 10 Python API (names checked against the
TensorRT 10 documentation) and its tests (tests/test_engines_trt.py) run wherever ``tensorrt``
imports.

Build (once per ONNX file, precision, shape profile, GPU and TensorRT version): ``trt.Builder`` ->
``create_network(0)`` (TensorRT 10 networks are always explicit-batch; the ``EXPLICIT_BATCH``
creation flag is deprecated and ignored) -> ``trt.OnnxParser.parse_from_file`` -> builder config
with a workspace limit, ``BuilderFlag.FP16`` for fp16 and ``BuilderFlag.TF32`` cleared for fp32 (so
fp32 is IEEE fp32) -> one optimisation profile for inputs with dynamic dimensions (``input_shapes``)
-> ``build_serialized_network``. The plan is written to ``cache_dir`` under a key made of the ONNX
bytes (and its external data), the GPU name and compute capability, the TensorRT version, the
precision, the profile and the workspace size, so a changed model, GPU or TensorRT rebuilds it.

Run: one execution context; each pipeline slot owns pinned host buffers and device buffers sized
for the profile's largest shapes. A request is enqueued as: copy into pinned memory,
``cudaMemcpyAsync`` host->device on the upload stream, event; the compute stream waits on that
event, ``set_input_shape`` / ``set_tensor_address`` for the slot's buffers, ``execute_async_v3``,
event; the download stream waits on that event, copies device->host, event. So uploads of request
k+1 and downloads of k-1 overlap the compute of k. Requires TensorRT 10 (11 removed the
weak-typing ``BuilderFlag.FP16`` this backend uses for fp16).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.runtime.engines import cuda_rt
from evpipe.runtime.engines.base import (
    BackendUnavailableError,
    Engine,
    EngineInputError,
    TensorSpec,
)

_SYNC_SLOT = -1  # run() uses its own slot, apart from the asynchronous mode's 0..max_in_flight-1
ShapeSpec = Sequence[int] | tuple[Sequence[int], Sequence[int], Sequence[int]]


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as error:
        raise BackendUnavailableError(
            f"backend 'tensorrt' unavailable: cannot import tensorrt ({error}). "
            f"Install it with: {cuda_rt.INSTALL_HINT}"
        ) from error
    major = int(trt.__version__.split(".")[0])
    if major != 10:
        raise BackendUnavailableError(
            f"backend 'tensorrt' needs TensorRT 10, found {trt.__version__}. "
            "Install it with: pip install 'tensorrt>=10,<11'"
        )
    return trt


def default_cache_dir() -> Path:
    """``$EVPIPE_ENGINE_CACHE``, else ``~/.cache/evpipe/tensorrt``."""
    configured = os.environ.get("EVPIPE_ENGINE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "evpipe" / "tensorrt"


def profile_shapes(input_shapes: Mapping[str, ShapeSpec] | None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Normalise ``input_shapes`` to ``{name: (min, opt, max)}``; a single shape means min=opt=max."""
    profiles: dict[str, tuple[tuple[int, ...], ...]] = {}
    for name, given in (input_shapes or {}).items():
        if len(given) == 3 and all(isinstance(part, (list, tuple)) for part in given):
            triple = tuple(tuple(int(d) for d in part) for part in given)
        elif all(isinstance(d, (int, np.integer)) for d in given):
            triple = (tuple(int(d) for d in given),) * 3
        else:
            raise ValueError(
                f"input_shapes['{name}'] = {given!r}: "
                "give one shape (a tuple of ints) or (min, opt, max) shapes"
            )
        low, opt, high = triple
        if not (len(low) == len(opt) == len(high)) or any(
            not 0 < a <= b <= c for a, b, c in zip(low, opt, high, strict=True)
        ):
            raise ValueError(
                f"input_shapes['{name}'] = {given!r}: need 0 < min <= opt <= max in every dimension"
            )
        profiles[name] = triple
    return profiles


def model_files(onnx_path: Path) -> list[Path]:
    """The ONNX file and the external-data files its initialisers point to."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [onnx_path, *sorted(onnx_path.parent / location for location in locations)]


def engine_cache_key(
    onnx_path: Path,
    *,
    gpu_name: str,
    compute_capability: str,
    trt_version: str,
    precision: str,
    profiles: Mapping[str, tuple[tuple[int, ...], ...]],
    workspace_mb: int,
) -> str:
    """Hex digest naming a built plan: changes whenever anything the plan depends on changes."""
    digest = hashlib.sha256()
    for path in model_files(onnx_path):
        digest.update(path.name.encode())
        with open(path, "rb") as file:
            for block in iter(lambda f=file: f.read(1 << 20), b""):
                digest.update(block)
    digest.update(
        json.dumps(
            {
                "gpu": gpu_name,
                "cc": compute_capability,
                "tensorrt": trt_version,
                "precision": precision,
                "profiles": {name: [list(s) for s in triple] for name, triple in sorted(profiles.items())},
                "workspace_mb": workspace_mb,
            },
            sort_keys=True,
        ).encode()
    )
    return digest.hexdigest()


def _build_plan(
    trt: Any, logger: Any, onnx_path: Path, precision: str, profiles: Mapping[str, tuple], workspace_mb: int
) -> bytes:
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    network_inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    unknown = sorted(set(profiles) - set(network_inputs))
    if unknown:
        raise ValueError(
            f"input_shapes names {unknown}, which are not inputs of {onnx_path} ({sorted(network_inputs)})"
        )
    dynamic = {name: tensor for name, tensor in network_inputs.items() if any(d < 0 for d in tensor.shape)}
    for name, tensor in network_inputs.items():
        if name in profiles and name not in dynamic:
            raise ValueError(
                f"input_shapes['{name}']: input has the fixed shape {list(tensor.shape)} in {onnx_path}"
            )
    if dynamic:
        profile = builder.create_optimization_profile()
        for name, tensor in dynamic.items():
            if name not in profiles:
                raise ValueError(
                    f"input '{name}' of {onnx_path} has dynamic shape {list(tensor.shape)}: "
                    f"give input_shapes={{'{name}': (min, opt, max)}} or one fixed shape"
                )
            low, opt, high = profiles[name]
            profile.set_shape(name, min=low, opt=opt, max=high)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(
            f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)"
        )
    return bytes(plan)


@dataclass
class _Slot:
    host: dict[str, cuda_rt.PinnedBuffer]
    device: dict[str, cuda_rt.DeviceBuffer]
    uploaded: Any
    computed: Any
    downloaded: Any


class TrtEngine(Engine):
    """An ONNX model compiled by TensorRT 10 for one CUDA GPU (UNVERIFIED here, see module docstring)."""

    backend = "tensorrt"
    stages_feeds_on_start = True

    def __init__(
        self,
        onnx_path: Path,
        *,
        device: str,
        precision: str,
        max_in_flight: int,
        policy: str,
        cache_dir: str | os.PathLike[str] | None = None,
        input_shapes: Mapping[str, ShapeSpec] | None = None,
        workspace_mb: int = 1024,
        rebuild: bool = False,
    ) -> None:
        trt = import_tensorrt()
        cudart = cuda_rt.import_cudart()
        self._index = int(device.split(":")[1])
        cuda_rt.check(cudart.cudaSetDevice(self._index), f"cudaSetDevice({self._index})")
        gpu_name, capability = cuda_rt.device_identity(self._index)
        profiles = profile_shapes(input_shapes)
        key = engine_cache_key(
            onnx_path,
            gpu_name=gpu_name,
            compute_capability=capability,
            trt_version=trt.__version__,
            precision=precision,
            profiles=profiles,
            workspace_mb=workspace_mb,
        )
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.plan_path = cache / f"{onnx_path.stem}-{key[:20]}.plan"
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = None
        if self.plan_path.is_file() and not rebuild:
            engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        # True when this engine built its plan, False when it loaded the cached one (build-engines says which).
        self.plan_built = engine is None
        if engine is None:  # no plan yet, rebuild asked, or a stale/corrupt plan file
            plan = _build_plan(trt, self._logger, onnx_path, precision, profiles, workspace_mb)
            _write_atomically(self.plan_path, plan)
            _write_atomically(
                self.plan_path.with_suffix(".json"),
                json.dumps(
                    {
                        "onnx": str(onnx_path),
                        "gpu": gpu_name,
                        "compute_capability": capability,
                        "tensorrt": trt.__version__,
                        "precision": precision,
                        "input_shapes": {n: [list(s) for s in t] for n, t in profiles.items()},
                        "workspace_mb": workspace_mb,
                    },
                    indent=2,
                ).encode(),
            )
            engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise RuntimeError(
                    f"TensorRT could not deserialize the engine it just built from {onnx_path}"
                )
        self._engine = engine
        self._context = engine.create_execution_context()
        inputs, outputs, self._max_shapes, self._ranges = self._describe_io(trt)
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            device=device,
            precision=precision,
            max_in_flight=max_in_flight,
            policy=policy,
        )
        self.onnx_path = onnx_path
        self._upload = cuda_rt.create_stream()
        self._compute = cuda_rt.create_stream()
        self._download = cuda_rt.create_stream()
        self._slots: dict[int, _Slot] = {}
        self._enqueue_lock = threading.Lock()
        self._sync_lock = threading.Lock()

    def _describe_io(self, trt: Any) -> tuple[list[TensorSpec], list[TensorSpec], dict, dict]:
        engine, context = self._engine, self._context
        inputs, outputs = [], []
        max_shapes: dict[str, tuple[int, ...]] = {}
        ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                continue
            shape = tuple(engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
                ranges[name] = (low, high)
                max_shapes[name] = high
                context.set_input_shape(name, high)
            else:
                max_shapes[name] = shape
            inputs.append(
                TensorSpec(name, tuple(d if d >= 0 else None for d in shape), _np_dtype(trt, engine, name))
            )
        for name in names:
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                continue
            largest = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in largest):
                raise ValueError(f"output '{name}' has a data-dependent shape {list(largest)}; not supported")
            max_shapes[name] = largest
            shape = tuple(engine.get_tensor_shape(name))
            outputs.append(
                TensorSpec(name, tuple(d if d >= 0 else None for d in shape), _np_dtype(trt, engine, name))
            )
        return inputs, outputs, max_shapes, ranges

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = super().check_feeds(feeds)
        for name, (low, high) in self._ranges.items():
            shape = checked[name].shape
            if any(not a <= s <= b for a, s, b in zip(low, shape, high, strict=True)):
                raise EngineInputError(
                    f"input '{name}': shape {list(shape)} is outside the engine's profile "
                    f"{list(low)}..{list(high)}"
                )
        return checked

    def _slot(self, index: int) -> _Slot:
        if index not in self._slots:
            specs = {spec.name: spec for spec in (*self.inputs, *self.outputs)}
            host, device = {}, {}
            for name, shape in self._max_shapes.items():
                count = int(np.prod(shape))
                host[name] = cuda_rt.PinnedBuffer(count, specs[name].dtype)
                device[name] = cuda_rt.DeviceBuffer(count * specs[name].dtype.itemsize)
            self._slots[index] = _Slot(
                host, device, cuda_rt.create_event(), cuda_rt.create_event(), cuda_rt.create_event()
            )
        return self._slots[index]

    def _start(self, feeds: dict[str, np.ndarray], slot: int) -> tuple[_Slot, dict[str, tuple[int, ...]]]:
        cudart = cuda_rt.import_cudart()
        cuda_rt.check(cudart.cudaSetDevice(self._index), "cudaSetDevice")  # per thread in the runtime API
        buffers = self._slot(slot)
        for name, array in feeds.items():
            buffers.host[name].array[: array.size] = array.reshape(-1)
            cuda_rt.copy_async(
                buffers.device[name].ptr, buffers.host[name].ptr, array.nbytes, True, self._upload
            )
        cuda_rt.record(buffers.uploaded, self._upload)
        with self._enqueue_lock:  # one context: shapes/addresses and the enqueue must not interleave
            cuda_rt.wait_event(self._compute, buffers.uploaded)
            for name, array in feeds.items():
                if not self._context.set_input_shape(name, array.shape):
                    raise EngineInputError(f"input '{name}': TensorRT rejected shape {list(array.shape)}")
            for name, memory in buffers.device.items():
                self._context.set_tensor_address(name, memory.ptr)
            out_shapes = {
                spec.name: tuple(self._context.get_tensor_shape(spec.name)) for spec in self.outputs
            }
            if not self._context.execute_async_v3(int(self._compute)):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.onnx_path}")
            cuda_rt.record(buffers.computed, self._compute)
        cuda_rt.wait_event(self._download, buffers.computed)
        for spec in self.outputs:
            nbytes = int(np.prod(out_shapes[spec.name])) * spec.dtype.itemsize
            cuda_rt.copy_async(
                buffers.host[spec.name].ptr, buffers.device[spec.name].ptr, nbytes, False, self._download
            )
        cuda_rt.record(buffers.downloaded, self._download)
        return buffers, out_shapes

    def _wait(self, handle: tuple[_Slot, dict[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
        buffers, out_shapes = handle
        cuda_rt.synchronize_event(buffers.downloaded)
        return {
            name: buffers.host[name].array[: int(np.prod(shape))].reshape(shape).copy()
            for name, shape in out_shapes.items()
        }

    def _run_checked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._sync_lock:
            return self._wait(self._start(feeds, _SYNC_SLOT))

    def _release(self) -> None:
        cudart = cuda_rt.import_cudart()
        for stream in (self._upload, self._compute, self._download):
            cuda_rt.check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        for buffers in self._slots.values():
            for memory in (*buffers.host.values(), *buffers.device.values()):
                memory.free()
            for event in (buffers.uploaded, buffers.computed, buffers.downloaded):
                cuda_rt.check(cudart.cudaEventDestroy(event), "cudaEventDestroy")
        self._slots.clear()
        for stream in (self._upload, self._compute, self._download):
            cuda_rt.check(cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")
        del self._context, self._engine


def _np_dtype(trt: Any, engine: Any, name: str) -> np.dtype:
    trt_dtype = engine.get_tensor_dtype(name)
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError as error:
        raise ValueError(
            f"tensor '{name}' has TensorRT type {trt_dtype}, which has no numpy equivalent"
        ) from error


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)  # concurrent builders never see a half-written plan
