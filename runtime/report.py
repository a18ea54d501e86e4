"""Latency statistics from message traces, and the run report (table, JSON, PNG).

End-to-end latency is *newest input event available* (the source's ``emit_ns``) → *delivered to
the sink* (receive time). Each hop splits into queueing (previous stamp → this node took the
message: transport plus waiting) and compute (taken → emitted). Unlike data-flow tracking that
needs queue size 1 and no drops, this works under every delivery policy: a message's trace is
self-contained, and drops are counted separately from latency.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.runtime.wire import Trace

PERCENTILES = (50, 90, 99)


def describe_ms(samples_ns: list[int] | np.ndarray) -> dict[str, float]:
    """count, mean, p50/p90/p99 and max of nanosecond samples, in milliseconds."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if a.size == 0:
        return {"count": 0}
    out = {"count": int(a.size), "mean": float(a.mean()), "max": float(a.max())}
    for q, v in zip(PERCENTILES, np.percentile(a, PERCENTILES), strict=True):
        out[f"p{q}"] = float(v)
    return out


class LatencyRecorder:
    """Accumulates traces arriving at a sink; the first ``warmup`` messages of each path are skipped."""

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup
        self.e2e: dict[str, list[int]] = defaultdict(list)
        self.arrival_ns: dict[str, list[int]] = defaultdict(list)
        self.queue: dict[str, list[int]] = defaultdict(list)
        self.compute: dict[str, list[int]] = defaultdict(list)
        self.skipped: dict[str, int] = defaultdict(int)
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def add(self, trace: Trace, recv_ns: int, sink: str, clock_offsets_ns: dict[str, int] | None = None) -> None:
        """Record one arrival. Stamps made by nodes on other hosts are moved onto the local clock with
        ``clock_offsets_ns`` (node -> remote clock minus local clock)."""
        if clock_offsets_ns:
            trace = _to_local_clock(trace, clock_offsets_ns)
        path = " -> ".join([*(h[0] for h in trace.hops), sink])
        if self.skipped[path] < self.warmup:
            self.skipped[path] += 1
            return
        self.first_ns = recv_ns if self.first_ns is None else self.first_ns
        self.last_ns = recv_ns
        self.e2e[path].append(recv_ns - trace.emit_ns)
        self.arrival_ns[path].append(recv_ns)
        prev = trace.emit_ns
        for node, in_ns, out_ns in trace.hops[1:]:  # hops[0] is the source: it emits at emit_ns
            self.queue[node].append(in_ns - prev)
            self.compute[node].append(out_ns - in_ns)
            prev = out_ns
        self.queue[sink].append(recv_ns - prev)

    def recent(self, window_s: float, now_ns: int) -> dict[str, Any]:
        """Sliding-window latency over the last ``window_s`` seconds, per path, plus throughput."""
        paths = {}
        for path, samples in self.e2e.items():
            arrivals = np.asarray(self.arrival_ns[path][-5000:], dtype=np.int64)
            recent = arrivals >= now_ns - int(window_s * 1e9)
            values = np.asarray(samples[-5000:], dtype=np.int64)[recent]
            paths[path] = {**describe_ms(values), "msgs_s": float(recent.sum() / window_s)}
        nodes = {n: {"queue": describe_ms(self.queue[n][-500:]), "compute": describe_ms(self.compute.get(n, [])[-500:])}
                 for n in self.queue}
        return {"window_s": window_s, "paths": paths, "nodes": nodes}

    def summary(self, max_samples: int = 20_000) -> dict[str, Any]:
        paths = {}
        for path, samples in self.e2e.items():
            arrivals = np.asarray(self.arrival_ns[path], dtype=np.int64)
            keep = np.linspace(0, len(samples) - 1, min(len(samples), max_samples)).astype(int)
            paths[path] = {
                **describe_ms(samples),
                "warmup_skipped": self.skipped[path],
                "series_t_s": ((arrivals[keep] - arrivals[0]) / 1e9).round(6).tolist(),
                "series_ms": (np.asarray(samples, dtype=np.float64)[keep] / 1e6).round(4).tolist(),
            }
        nodes = {n: {"queue": describe_ms(self.queue[n]), "compute": describe_ms(self.compute.get(n, []))}
                 for n in self.queue}
        span_s = (self.last_ns - self.first_ns) / 1e9 if self.first_ns is not None else 0.0
        total = sum(len(s) for s in self.e2e.values())
        return {"paths": paths, "nodes": nodes, "messages": total,
                "throughput_msgs_s": total / span_s if span_s > 0 else 0.0}


class NodeTimings:
    """What every node measures of itself, with or without a metrics sink: per message, queueing (the upstream
    node emitted it -> this node took it) and compute (took it -> ``process`` returned), plus the span from the
    first message taken to the last one done, for throughput. Samples beyond ``keep`` are a uniform reservoir,
    so the percentiles describe the whole run."""

    def __init__(self, keep: int = 20_000, seed: int = 0) -> None:
        self.keep = keep
        self.queue_ns: list[int] = []
        self.compute_ns: list[int] = []
        self.messages = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self._rng = np.random.default_rng(seed)

    def add(self, queue_ns: int | None, in_ns: int, out_ns: int) -> None:
        """One processed message; ``queue_ns`` is None for a source's (it has no upstream)."""
        self.messages += 1
        self.first_ns = in_ns if self.first_ns is None else self.first_ns
        self.last_ns = out_ns
        slot = self.messages - 1 if self.messages <= self.keep else int(self._rng.integers(self.messages))
        if slot >= self.keep:
            return
        for samples, value in ((self.queue_ns, queue_ns), (self.compute_ns, out_ns - in_ns)):
            if value is None:
                continue
            if slot < len(samples):
                samples[slot] = value
            else:
                samples.append(value)

    def as_dict(self) -> dict[str, Any]:
        """Raw samples and counts (sent to the supervisor, merged over a node's incarnations there)."""
        span = (self.last_ns - self.first_ns) if self.first_ns is not None else 0
        return {"queue_ns": self.queue_ns, "compute_ns": self.compute_ns, "messages": self.messages,
                "span_ns": span}


def summarize_timings(incarnations: list[dict[str, Any]]) -> dict[str, Any]:
    """``compute`` and ``queue`` (:func:`describe_ms`) and ``msgs_s`` (messages over the time each incarnation
    spent between its first and last message) of a node's :meth:`NodeTimings.as_dict` reports."""
    queue = [v for t in incarnations for v in t["queue_ns"]]
    compute = [v for t in incarnations for v in t["compute_ns"]]
    messages = sum(t["messages"] for t in incarnations)
    span_s = sum(t["span_ns"] for t in incarnations) / 1e9
    return {"queue": describe_ms(queue), "compute": describe_ms(compute),
            "msgs_s": messages / span_s if span_s > 0 else None}


def _to_local_clock(trace: Trace, offsets: dict[str, int]) -> Trace:
    source = trace.hops[0][0] if trace.hops else None
    hops = [(n, i - offsets.get(n, 0), o - offsets.get(n, 0)) for n, i, o in trace.hops]
    return Trace(trace.sensor_t, trace.emit_ns - offsets.get(source, 0), hops)


def edge_accounting(edges: list[dict[str, Any]], counters: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per edge: sent (emitted by the producer), processed, dropped (by the latest policy, at either end),
    rejected (malformed or over a limit) and lost = sent - processed - dropped - rejected, exactly: the
    counters of crashed incarnations survive in their files.

    ``counters`` maps node -> summed counters over all its incarnations.
    """
    rows = []
    for e in edges:
        eid = e["id"]
        out = counters.get(e["src"], {}).get("outputs", {}).get(eid, {})
        inn = counters.get(e["dst"], {}).get("inputs", {}).get(eid, {})
        sent = out.get("sent", 0) + out.get("dropped_send", 0)
        dropped = out.get("dropped_send", 0) + inn.get("dropped_latest", 0)
        processed, rejected = inn.get("processed", 0), inn.get("rejected", 0)
        rows.append({"edge": eid, "policy": e["policy"], "sent": sent, "processed": processed,
                     "dropped": dropped, "rejected": rejected, "gaps": inn.get("gaps", 0),
                     "bytes": out.get("bytes", 0), "lost": sent - processed - dropped - rejected})
    return rows


def render_tables(report: dict[str, Any]) -> list[Any]:
    """rich Tables for the end-of-run report."""
    from rich.table import Table

    tables: list[Any] = []
    paths = (report.get("latency") or {}).get("paths", {})
    if paths:
        t = Table(title="End-to-end latency (ms): newest event available -> delivered")
        for col in ("path", "count", "p50", "p90", "p99", "max"):
            t.add_column(col, justify="left" if col == "path" else "right")
        for path, s in paths.items():
            t.add_row(path, str(s.get("count", 0)), *(f"{s[k]:.2f}" if k in s else "-"
                                                        for k in ("p50", "p90", "p99", "max")))
        tables.append(t)
    else:
        tables.append("End-to-end latency: not measured — it needs a `metrics` sink at the end of a path "
                      "(`evpipe nodes metrics`); per-node times below are measured by every node.")
    t = Table(title="Per node (ms): queueing vs compute, measured by each node")
    for col in ("node", "queue p50", "queue p99", "compute p50", "compute p99", "compute max", "msgs/s", "restarts",
                "processed"):
        t.add_column(col, justify="left" if col == "node" else "right")
    for name, info in report["nodes"].items():
        q, c = info.get("queue", {}), info.get("compute", {})
        rate = info.get("msgs_s")
        t.add_row(name, *(f"{d[k]:.2f}" if k in d else "-" for d, k in
                          ((q, "p50"), (q, "p99"), (c, "p50"), (c, "p99"), (c, "max"))),
                  "-" if rate is None else f"{rate:.1f}", str(info["restarts"]), str(info["processed"]))
    tables.append(t)
    t = Table(title="Edges")
    for col in ("edge", "policy", "sent", "processed", "dropped", "rejected", "lost"):
        t.add_column(col, justify="left" if col in ("edge", "policy") else "right")
    for e in report["edges"]:
        remote = f" (to/from {e['remote']} on another host)" if e.get("remote") else ""
        t.add_row(e["edge"] + remote, e["policy"],
                  *("-" if e[k] is None else str(e[k]) for k in ("sent", "processed", "dropped", "rejected", "lost")))
    tables.append(t)
    if report.get("engines"):
        t = Table(title="Model engines: what each model node ran on")
        for col in ("node", "backend", "device", "precision", "engine cache"):
            t.add_column(col)
        for name, e in report["engines"].items():
            t.add_row(name, e["backend"], e["device"], e["precision"], e["cache"])
        tables.append(t)
    return tables


def write_report(report: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    """Write the report as JSON and a PNG (latency histogram, latency over time, per-node breakdown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    png = path.with_suffix(".png")
    latency = report.get("latency") or {"paths": {}, "nodes": {}}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, s in latency["paths"].items():
        label = f"{name} (p50 {s.get('p50', 0):.2f} ms, p99 {s.get('p99', 0):.2f} ms)"
        axes[0].hist(s["series_ms"], bins=60, alpha=0.6, label=label)
        axes[1].plot(s["series_t_s"], s["series_ms"], ".", ms=2, label=name)
    axes[0].set(xlabel="end-to-end latency (ms)", ylabel="messages", title="Latency histogram")
    axes[1].set(xlabel="time since first message (s)", ylabel="latency (ms)", title="Latency over time")
    names = list(report["nodes"])
    q50 = [report["nodes"][n].get("queue", {}).get("p50", 0) for n in names]
    c50 = [report["nodes"][n].get("compute", {}).get("p50", 0) for n in names]
    axes[2].bar(names, q50, label="queueing p50")
    axes[2].bar(names, c50, bottom=q50, label="compute p50")
    axes[2].set(ylabel="ms", title="Per node (p50)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return path, png
