"""Shared test helpers: running graphs through the real CLI in subprocesses, locating ../shared/data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engines_shared import dynamic_batch_onnx, net, onnx_path  # noqa: F401 - the engine tests' fixtures

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: small tensors on a shared 2-core machine, where more threads only add
    contention (two made the upsample tests about 20x slower under load)."""
    import torch  # only the tests that use this fixture load torch here

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not available: {SHARED_DATA} is absent (a fresh clone has no ../shared)")
    return SHARED_DATA


def _env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            **(extra or {})}


def evpipe(*args: str, timeout: float = 120, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the evpipe CLI in a subprocess (the way users run it); test nodes in tests/ are importable."""
    return subprocess.run([sys.executable, "-m", "evpipe.runtime.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(env), **kwargs)


def start_evpipe(*args: str) -> subprocess.Popen:
    """Start the evpipe CLI in the background (to signal or kill parts of a running graph)."""
    return subprocess.Popen([sys.executable, "-m", "evpipe.runtime.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def run_graph(tmp_path: Path, yaml_text: str, *extra: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess,
                                                                                          dict]:
    config = tmp_path / "graph.yaml"
    config.write_text(yaml_text)
    report = tmp_path / "report.json"
    proc = evpipe("run", str(config), "--report", str(report), *extra, timeout=timeout)
    assert report.exists(), f"no report written; exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(report.read_text())
