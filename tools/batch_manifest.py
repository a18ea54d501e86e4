"""A batch's memory and its summary: which inputs are finished (outputs checksummed), and the report.

``OUT/batch_manifest.json`` holds one entry per input that finished (``done``) or gave up
(``failed``): its settings fingerprint, attempts, seconds, the SHA-256 of every output file and of
its report, and the graph report's latency/drop figures. A re-run skips an input whose entry is
``done`` with the same settings and whose files still have those checksums; anything else runs again.
The manifest is rewritten atomically after every input, so an interrupted batch loses no finished input.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

MANIFEST = "batch_manifest.json"
REPORT = "batch_report"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksums(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def graph_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of a graph report a batch summary shows: end-to-end latency of its busiest path
    (p50/p99/max ms) and the messages dropped and lost over all edges."""
    paths = (report.get("latency") or {}).get("paths") or {}
    busiest = max(paths.items(), key=lambda item: item[1].get("count", 0), default=(None, {}))
    edges = report.get("edges") or []
    return {"latency_path": busiest[0], **{f"latency_{k}_ms": busiest[1].get(k) for k in ("p50", "p99", "max")},
            "dropped": sum(e.get("dropped") or 0 for e in edges), "lost": sum(e.get("lost") or 0 for e in edges),
            "graph_seconds": report.get("duration_s")}


class Manifest:
    """The finished inputs of the batch writing to ``out``."""

    def __init__(self, out: Path) -> None:
        self.path = out / MANIFEST
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())["inputs"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.path}: not a batch manifest ({exc}); move it away to start afresh") from None

    def finished(self, stem: str, settings: str, folder: Path) -> bool:
        """Done before with these settings, and every output still has its checksum."""
        entry = self.entries.get(stem)
        if not entry or entry.get("status") != "done" or entry.get("settings") != settings:
            return False
        try:
            return checksums(folder) == entry["outputs"]
        except OSError:
            return False

    def record(self, stem: str, entry: dict[str, Any]) -> None:
        self.entries[stem] = entry
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps({"inputs": self.entries}, indent=1, sort_keys=True))
        os.replace(temporary, self.path)


def write_summary(out: Path, command: str, rows: list[dict[str, Any]], wall_s: float, workers: int,
                  interrupted: bool) -> tuple[Path, Path]:
    """``OUT/batch_report.json`` and ``.md``: one row per input (status, attempts, time, figures), totals."""
    counts = {status: sum(row["status"] == status for row in rows)
              for status in ("done", "skipped", "failed", "interrupted", "not started")}
    busy = sum(row.get("seconds") or 0.0 for row in rows if row["status"] == "done")
    totals = {"inputs": len(rows), **counts, "wall_s": round(wall_s, 3), "job_seconds": round(busy, 3),
              "workers": workers, "parallelism": round(busy / wall_s, 2) if wall_s > 0 else None,
              "dropped": sum(row.get("dropped") or 0 for row in rows),
              "lost": sum(row.get("lost") or 0 for row in rows)}
    document = {"command": command, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "interrupted": interrupted,
                "totals": totals, "inputs": rows}
    json_path, md_path = out / f"{REPORT}.json", out / f"{REPORT}.md"
    json_path.write_text(json.dumps(document, indent=1))

    def cell(value: Any, digits: int = 2) -> str:
        if value is None:
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value).replace("|", "/")

    lines = [f"# Batch report{' (interrupted)' if interrupted else ''}", "", f"`{command}`", "",
             f"{totals['inputs']} inputs: {counts['done']} done, {counts['skipped']} skipped (finished before), "
             f"{counts['failed']} failed, {counts['interrupted']} interrupted, {counts['not started']} not started; "
             f"wall {wall_s:.1f} s, {busy:.1f} s of job time on {workers} workers (parallelism "
             f"{cell(totals['parallelism'])}); dropped {totals['dropped']}, lost {totals['lost']}.", "",
             "| input | status | attempts | seconds | units | latency p50 / p99 / max (ms) | dropped | lost | error |",
             "|---|---|---:|---:|---:|---|---:|---:|---|"]
    for row in rows:
        latency = " / ".join(cell(row.get(f"latency_{k}_ms")) for k in ("p50", "p99", "max"))
        lines.append(f"| {row['stem']} | {row['status']} | {row.get('attempts', 0)} | {cell(row.get('seconds'), 1)} | "
                     f"{cell(row.get('units'))} | {latency} | {cell(row.get('dropped'))} | {cell(row.get('lost'))} | "
                     f"{cell(row.get('error'))} |")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
