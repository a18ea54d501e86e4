"""Live status of a running graph, for dashboards such as the viewer.

The supervisor rewrites ``status.json`` in the run directory about twice a second (atomically);
every node process finds the run directory in ``EVPIPE_RUN_DIR``. The snapshot holds the graph's
shape (nodes, edges, policies), node states and restarts, per-edge counters (the same numbers as
the final report) and the metrics sinks' latest sliding-window latency.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "EVPIPE_RUN_DIR"
STATUS_FILE = "status.json"


def write_status(run_dir: str | Path, status: dict[str, Any]) -> None:
    path = Path(run_dir) / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def read_status(run_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The latest snapshot, or None when there is none (yet) or the graph has gone."""
    run_dir = run_dir or os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        return None
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
