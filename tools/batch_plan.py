"""What an ``evpipe batch`` run has to do, independent of the engine that does it.

* Inputs: a glob (or several) expanded in name order; each input's outputs go to ``OUT/<stem>/``,
  so two inputs with the same stem are refused.
* Graph jobs: the graph runs once per input, the input bound to one source parameter (``--param
  NODE.PARAM``; default the graph's only source with a ``path`` parameter) and every output path of
  a node with inputs (its ``path`` or ``dir`` parameter) moved into the input's folder.
* Model jobs: ``restore`` splits a video into the DDS windows the ``restore`` node would restore
  (:func:`evpipe.nodes.restore.windows.window_spans`), ``upsample`` into its frame pairs; each window
  or pair is one unit of work, so one long video spreads over many workers.
* Resources: :func:`resources_for` is the one rule for what a job asks of the cluster.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evpipe.runtime.graph import ConfigError, Graph, load_graph

OUTPUT_PARAMS = ("path", "dir")  # the parameters through which a node with inputs writes files


class BatchError(ValueError):
    """A batch that cannot be planned; the message names the input, node or parameter."""


@dataclass(frozen=True)
class Resources:
    num_cpus: float
    num_gpus: float


def resources_for(node_params: Iterable[dict[str, Any]]) -> Resources:
    """One CPU per job, and one GPU when any node runs a model on CUDA (a ``device`` parameter 'cuda...')."""
    cuda = any(str(params.get("device", "")).startswith("cuda") for params in node_params)
    return Resources(num_cpus=1.0, num_gpus=1.0 if cuda else 0.0)


def expand_inputs(patterns: Iterable[str]) -> list[Path]:
    """Every file the patterns match, sorted, each once; refuses no match and clashing stems."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise BatchError(f"--inputs {pattern!r} matches no file")
        for match in matches:
            found[Path(match).resolve()] = None
    inputs = list(found)
    stems: dict[str, Path] = {}
    for path in inputs:
        if path.stem in stems:
            raise BatchError(f"inputs {stems[path.stem]} and {path} share the stem {path.stem!r}, and each input's "
                             "outputs go to OUT/<stem>/: rename one or run them as two batches")
        stems[path.stem] = path
    return inputs


def fingerprint(settings: Any) -> str:
    """A short hash of a job's settings: a re-run skips an input only when they are unchanged."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GraphJob:
    """One run of a graph on one input: ``overrides`` as for ``evpipe run --set``; outputs are written
    under ``staging`` and moved to ``folder`` when the run succeeds."""

    stem: str
    input: Path
    config: Path
    overrides: tuple[str, ...]
    folder: Path
    staging: Path
    resources: Resources
    settings: str  # fingerprint of config, overrides and graph file contents


def _bound_parameter(graph: Graph, param: str | None) -> tuple[str, str]:
    if param:
        node, dot, name = param.partition(".")
        if not dot or node not in graph.nodes:
            raise BatchError(f"--param {param!r}: write NODE.PARAM with NODE one of {', '.join(graph.nodes)}")
        if name not in graph.nodes[node].cls.spec().params:
            raise BatchError(f"--param {param!r}: node {node!r} ({graph.nodes[node].type}) has no parameter "
                             f"{name!r}; `evpipe nodes {graph.nodes[node].type}` lists them")
        return node, name
    sources = [n for n, cfg in graph.nodes.items() if cfg.cls.is_source() and "path" in cfg.cls.spec().params]
    if len(sources) != 1:
        found = ", ".join(sources) or "none"
        raise BatchError(f"{graph.path}: cannot tell which source reads each input (sources with a 'path': "
                         f"{found}); name it with --param NODE.PARAM")
    return sources[0], "path"


def output_parameters(graph: Graph) -> dict[str, str]:
    """``NODE.PARAM`` -> file name, for every output path of the graph (nodes with inputs)."""
    outputs: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, cfg in graph.nodes.items():
        if cfg.cls.is_source():
            continue
        for param in OUTPUT_PARAMS:
            value = cfg.params.get(param)
            if param in cfg.cls.spec().params and value:
                file_name = Path(str(value)).name
                key = f"{name}.{param}"
                if file_name in names:
                    raise BatchError(f"{graph.path}: {names[file_name]} and {key} both write {file_name!r}; give "
                                     "them different file names")
                names[file_name] = key
                outputs[key] = file_name
    return outputs


def plan_graph_jobs(config: Path, inputs: list[Path], out: Path, param: str | None = None,
                    overrides: Iterable[str] = ()) -> list[GraphJob]:
    """One job per input; raises BatchError (or ConfigError for the graph itself) naming the problem."""
    overrides = list(overrides)
    graph = load_graph(config, overrides, check_inputs=False)  # the template: each job binds its own input
    node, name = _bound_parameter(graph, param)
    outputs = output_parameters(graph)
    if not outputs:
        raise BatchError(f"{graph.path}: no node writes a file (no 'path' or 'dir' parameter outside the "
                         "sources), so a batch would produce nothing")
    text = Path(config).read_text()
    jobs = []
    for path in inputs:
        folder, staging = out / path.stem, out / ".batch" / "staging" / path.stem
        job_overrides = (*overrides, f"{node}.{name}={path}",
                         *(f"{key}={staging / file_name}" for key, file_name in outputs.items()))
        try:  # the bound value and output paths are checked as `evpipe run --set` would check them
            bound = load_graph(config, job_overrides)
        except ConfigError as exc:
            raise BatchError(f"input {path}: {exc}") from None
        resources = resources_for(cfg.params for cfg in bound.nodes.values())
        settings = fingerprint({"graph": text, "overrides": overrides, "param": f"{node}.{name}"})
        jobs.append(GraphJob(path.stem, path, Path(config), job_overrides, folder, staging, resources, settings))
    return jobs


def pair_units(n_frames: int) -> tuple[tuple[int, int], ...]:
    """The frame pairs HiFI fills in: (0, 1), (1, 2), ..."""
    return tuple((i, i + 1) for i in range(n_frames - 1))
