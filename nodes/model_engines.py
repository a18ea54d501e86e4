"""What the four model nodes (predictor, deblur, restore, upsample) share about inference.

* the ``backend`` / ``device`` / ``precision`` parameters (:func:`declare_engine_params`);
* checking them against this machine before a graph starts (:func:`choose_engine`, called from the
  nodes' ``check_machine``): a backend or device that was asked for and is missing is a
  :class:`~evpipe.runtime.node.ParamError` naming the node, the parameter and what to install — never
  a silent fall back to the CPU;
* :func:`pad_to_multiple`: how a frame of any sensor size meets a network's stride;
* :class:`NetworkEngines`: a family's network behind :func:`evpipe.runtime.engines.open_engine`, one
  engine per distinct input shape (a TensorRT plan or a CUDA graph is built for fixed shapes), called
  with numpy arrays (:meth:`NetworkEngines.run`) or torch tensors (calling it, for the samplers).

No family has a private inference path: each builds one :class:`NetworkEngines` from its torch module
and, for the ONNX backends, a function that returns its cached ONNX export.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.runtime.engines import BACKENDS, PRECISIONS, Engine, ModelSource, SelectionError, TensorSpec, select_engine
from evpipe.runtime.node import ParamError, Spec

BACKEND_CHOICES = ("auto", *BACKENDS)
DEVICE_FORMS = "auto, cpu, cuda, cuda:N"


def declare_engine_params(spec: Spec, auto: str, forms: Sequence[str] = BACKENDS) -> None:
    """Declare ``backend``, ``device`` and ``precision`` on a model node's spec; ``auto`` says what
    backend ``auto`` picks for this family, ``forms`` which backends can run it."""
    spec.param("backend", str, "auto", f"inference backend; auto: {auto}",
               choices=["auto", *[name for name in BACKENDS if name in forms]])
    spec.param("device", str, "auto", f"where the network runs, one of {DEVICE_FORMS} (auto: the first CUDA GPU "
               "when torch sees one, else the CPU); a device asked for and missing stops the graph before it starts")
    spec.param("precision", str, "fp32", "compute precision; fp16 needs backend torch or tensorrt (inputs and "
               "outputs stay float32)", choices=list(PRECISIONS))


def add_engine_arguments(parser: argparse.ArgumentParser, node: str) -> None:
    """``--backend``, ``--device``, ``--precision`` for a command that runs model node ``node``."""
    spec = Spec()
    declare_engine_params(spec, auto="")
    parser.add_argument("--backend", default="auto", choices=spec.params["backend"].choices,
                        help=f"inference backend (default auto: `evpipe nodes {node}` says what it picks)")
    parser.add_argument("--device", default="auto", help=f"{DEVICE_FORMS} (default auto: the first CUDA GPU when "
                        "torch sees one, else the CPU); a device asked for and missing stops with exit 2")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32 (default) or fp16 (torch and tensorrt on a GPU)")


@dataclass(frozen=True)
class EngineChoice:
    """The backend, device (``cpu`` or ``cuda:N``) and precision a model node runs on."""

    backend: str
    device: str
    precision: str


def choose_engine(node: str, params: Mapping[str, Any], forms: Sequence[str] = BACKENDS,
                  auto_forms: Sequence[str] | None = None) -> EngineChoice:
    """What node ``node`` runs on here, given its ``backend``/``device``/``precision`` parameters.

    ``forms``: the backends this family can run on; ``auto_forms``: those ``auto`` considers (default
    ``forms``). Raises ParamError such as "predictor.backend: tensorrt is not installed (pip install
    'evpipe[trt]')" when what the parameters ask for cannot run on this machine.
    """
    backend = params["backend"]
    candidates = tuple(forms if backend != "auto" or auto_forms is None else auto_forms)
    try:
        chosen, device = select_engine(backend, params["device"], params["precision"], candidates)
    except SelectionError as error:
        raise ParamError(f"{node}.{error.parameter}: {error}") from None
    return EngineChoice(chosen, device, params["precision"])


def engine_summary(choice: EngineChoice, cache: str) -> dict[str, str]:
    """The run header's and report's description of a model node's engine."""
    return {"backend": choice.backend, "device": choice.device, "precision": choice.precision, "cache": cache}


def no_cache(choice: EngineChoice) -> str:
    """The cache entry of a backend that keeps nothing on disk (torch)."""
    return "none (torch CUDA graphs, captured per input shape)" if choice.device != "cpu" else "none (torch eager)"


def onnx_engine_summary(name: str, choice: EngineChoice, onnx_path: Callable[[], Path], exported_when: str,
                        plan_per: str) -> dict[str, str]:
    """A model node's ``check_machine`` answer: its engine, and for the ONNX backends the export
    ``onnx_path()`` names (made ``exported_when`` if missing) and what a TensorRT plan is built per.
    A checkpoint ``onnx_path`` cannot resolve is a ParamError naming ``name.checkpoint``."""
    if choice.backend == "torch":
        return engine_summary(choice, no_cache(choice))
    try:
        path = onnx_path()
    except (FileNotFoundError, ValueError) as error:
        raise ParamError(f"{name}.checkpoint: {error}") from None
    cache = f"{path} ({'cached' if path.is_file() else f'exported {exported_when}'})"
    if choice.backend == "tensorrt":
        cache += f"; a TensorRT plan per {plan_per}, built once and cached"
    return engine_summary(choice, cache)


def prepare_onnx(onnx_path: Path, export: Callable[[], Path]) -> tuple[str, str]:
    """``evpipe build-engines``' line for an ONNX export: (file, ``built`` or ``cached``), after ``export()``
    made sure it exists."""
    state = "cached" if onnx_path.is_file() else "built"
    export()
    return str(onnx_path), state


def warm_up(model: Any, frame_size: list[int]) -> None:
    """Open a model node's engine for frames of ``frame_size`` ([width, height]) and run it once, so the
    first frames of a stream do not wait for it (a ``latest`` edge would skip the frames arriving
    meanwhile)."""
    if len(frame_size) != 2 or not all(isinstance(v, int) and v > 0 for v in frame_size):
        raise ParamError(f"parameter 'frame_size' must be [width, height] (positive integers), got {frame_size}")
    model.warm_up(frame_size[1], frame_size[0])


def build_plans(model: Any, frame_size: list[int]) -> list[tuple[str, str]]:
    """Build (or find) the static-shape engines of a model node's sampler for frames of ``frame_size``
    ([width, height]) by opening them once; returns (file, ``built`` or ``cached``) per engine file."""
    try:
        warm_up(model, frame_size)
        return model.network.plans()
    finally:
        model.close()


def pad_to_multiple(array: np.ndarray, multiple: int, mode: str) -> np.ndarray:
    """``array`` (..., H, W) padded at the bottom and right up to multiples of ``multiple`` (a network's
    stride), float32; the caller crops the output back with ``[..., :H, :W]``, so any sensor size runs.

    ``mode="edge"`` (replicate) for images and the EDI integral: the border pixel continues the scene
    with no new gradient for the convolutions to react to, where ``reflect`` would mirror structure
    (edges, texture) into the pad and ``zeros`` would put a dark-to-bright step next to the crop.
    ``mode="zeros"`` for event voxel grids: no events happened outside the sensor, and replicating a
    border pixel's counts would invent motion there.
    """
    height, width = array.shape[-2:]
    pad = [(0, 0)] * (array.ndim - 2) + [(0, -height % multiple), (0, -width % multiple)]
    array = np.asarray(array, np.float32)
    if mode == "zeros":
        return np.pad(array, pad)
    if mode != "edge":
        raise ValueError(f"pad mode must be edge or zeros, got {mode!r}")
    return np.pad(array, pad, mode="edge")


class NetworkEngines:
    """One network on one :class:`EngineChoice`, an engine per distinct set of input shapes.

    module: the torch module (used by the torch backend; the ONNX backends never call it).
    input_names / output_name: the network's inputs in call order and its one output.
    onnx: returns the path of the network's ONNX export (exporting it on first use); needed for the
        onnxruntime and tensorrt backends.
    threads: ONNX Runtime intra-op threads (None: all usable cores).
    """

    def __init__(self, choice: EngineChoice, module: Any, input_names: Sequence[str], output_name: str, *,
                 onnx: Callable[[], Path] | None = None, threads: int | None = None) -> None:
        if choice.backend != "torch" and onnx is None:
            raise ValueError(f"backend {choice.backend} needs the network's ONNX export")
        self.choice = choice
        self.module = module
        self.input_names = tuple(input_names)
        self.output_name = output_name
        self._onnx = onnx
        self._threads = threads
        self._engines: dict[tuple[tuple[int, ...], ...], Engine] = {}

    def _engine(self, shapes: tuple[tuple[int, ...], ...]) -> Engine:
        engine = self._engines.get(shapes)
        if engine is None:
            from evpipe.runtime.engines import open_engine

            choice = self.choice
            options: dict[str, Any] = {}
            if choice.backend == "torch":
                specs = [TensorSpec(name, shape, np.dtype(np.float32))
                         for name, shape in zip(self.input_names, shapes, strict=True)]
                source = ModelSource(torch=self.module, inputs=specs, output_names=[self.output_name])
            else:
                source = ModelSource(onnx=self._onnx())
                if choice.backend == "tensorrt":  # one static-shape plan per input shape
                    options["tensorrt"] = {"input_shapes": dict(zip(self.input_names, shapes, strict=True))}
                elif self._threads:
                    options["onnxruntime"] = {"threads": self._threads}
            engine = open_engine(source, backend=choice.backend, device=choice.device, precision=choice.precision,
                                 **options)
            self._engines[shapes] = engine
        return engine

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """The output for numpy ``feeds`` (one float32 array per input name)."""
        shapes = tuple(tuple(feeds[name].shape) for name in self.input_names)
        return self._engine(shapes).run(feeds)[self.output_name]

    def __call__(self, *tensors: Any) -> Any:
        """The output for torch tensors (in ``input_names`` order), on their device."""
        tensors = tuple(tensor.contiguous() for tensor in tensors)
        shapes = tuple(tuple(tensor.shape) for tensor in tensors)
        return self._engine(shapes).run_torch(tensors)[self.output_name]

    def cache_files(self) -> list[str]:
        """The on-disk artefacts of the engines opened so far (ONNX exports, TensorRT plans)."""
        found = []
        for engine in self._engines.values():
            path = getattr(engine, "plan_path", None) or getattr(engine, "onnx_path", None)
            if path is not None and str(path) not in found:
                found.append(str(path))
        return found

    def summary(self) -> dict[str, str]:
        """What this network ran on, for the run report: the choice and the cache files opened so far
        (or what the backend keeps instead)."""
        files = self.cache_files()
        return engine_summary(self.choice, ", ".join(files) if files else no_cache(self.choice))

    def plans(self) -> list[tuple[str, str]]:
        """(TensorRT plan file, ``built`` or ``cached``) of the engines opened so far."""
        return [(str(engine.plan_path), "built" if engine.plan_built else "cached")
                for engine in self._engines.values() if hasattr(engine, "plan_path")]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
