"""The model registry: what a model factory gets (:class:`ModelContext`) and how ``--model`` names resolve
(built-in baselines, :func:`register_model`, a node family's ``evpipe.nodes.<task>.evaluation.MODELS``, or
``package.module:factory``)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TASKS = ("predict", "deblur", "upsample", "restore")
BASELINES: dict[str, tuple[str, ...]] = {
    "predict": ("copy-last", "event-integration"),
    "deblur": ("blurry", "edi"),
    "upsample": ("blend", "cubic", "aligned-blend"),
    "restore": ("degraded",),
}

Case = dict[str, Any]
ModelFn = Callable[..., np.ndarray]


@dataclass
class ModelContext:
    """What a model factory gets: see the package docstring."""

    task: str
    height: int
    width: int
    channels: int
    fit_samples: Callable[[], list[Case]]
    checkpoint: Path | None = None
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)


Factory = Callable[[ModelContext], ModelFn]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Factory
    description: str = ""


_REGISTRY: dict[str, dict[str, ModelSpec]] = {task: {} for task in TASKS}


def register_model(task: str, name: str, factory: Factory, description: str = "") -> None:
    """Make ``name`` available to ``--model`` for ``task``."""
    if task not in TASKS:
        raise ValueError(f"register_model: unknown task {task!r}; expected one of {TASKS}")
    _REGISTRY[task][name] = ModelSpec(name, factory, description)


def _plugin_models(task: str) -> dict[str, Factory]:
    """``MODELS`` of ``evpipe.nodes.<task>.evaluation`` if that module exists (import errors propagate)."""
    module_name = f"evpipe.nodes.{task}.evaluation"
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return {}
    models = getattr(importlib.import_module(module_name), "MODELS", None)
    if not isinstance(models, dict):
        raise TypeError(f"{module_name}.MODELS: expected a dict name -> factory, got {type(models).__name__}")
    return models


def available_models(task: str) -> dict[str, ModelSpec]:
    """Registered models of ``task`` (baselines first), including the node family's plugin models."""
    specs = dict(_REGISTRY[task])
    for name, factory in _plugin_models(task).items():
        specs.setdefault(name, ModelSpec(name, factory, f"evpipe.nodes.{task}.evaluation"))
    return specs


def resolve_model(task: str, name: str) -> ModelSpec:
    """A model by registered name or ``package.module:factory``; a clear error otherwise."""
    specs = available_models(task)
    if name in specs:
        return specs[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"--model {name}: cannot load {attr!r} from {module_name!r} ({error})") from error
        return ModelSpec(name, factory, name)
    raise ValueError(f"--model {name!r}: unknown for task {task!r}; available: {sorted(specs)} "
                     "(or give package.module:factory)")
