"""Launcher and supervisor: one process per node, a start handshake, restarts, and the run report.

Handshake: every node binds its inputs and connects its outputs, then reports *ready*; only when
all are ready does the supervisor send *start*, so sources never emit before the graph is wired.
A node that exits without reporting *done* has crashed: it is restarted with exponential backoff
up to ``settings.max_restarts`` times, and whatever it held is counted as lost on its input edges.
Ctrl-C / SIGTERM: sources are told to stop, the graph drains, sinks flush, exit code 0; a second
Ctrl-C terminates everything at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq
from rich.console import Console

from evpipe.runtime.counters import Counters
from evpipe.runtime.graph import Graph, NodeConfig
from evpipe.runtime.report import edge_accounting
from evpipe.runtime.status import RUN_DIR_ENV, write_status

READY_TIMEOUT_S = 120.0
DRAIN_GRACE_S = 15.0
STATUS_INTERVAL_S = 5.0  # console status line
SNAPSHOT_INTERVAL_S = 0.5  # status.json for dashboards


@dataclass
class NodeProcess:
    config: NodeConfig
    incarnation: int = 0
    proc: subprocess.Popen | None = None
    state: str = "starting"  # starting -> ready -> running -> done | failed
    restarts: int = 0
    restart_at: float | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)


@dataclass
class RunResult:
    exit_code: int
    report: dict[str, Any]


def _free_tcp_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Supervisor:
    def __init__(self, graph: Graph, *, console: Console | None = None, log_level: str = "INFO") -> None:
        self.graph = graph
        self.console = console or Console(stderr=True)
        self.log_level = log_level
        self.run_dir = tempfile.mkdtemp(prefix="evp-")
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.control_endpoint = f"ipc://{self.run_dir}/control"
        self.router.bind(self.control_endpoint)
        self.endpoints = {e.id: self._endpoint(i) for i, e in enumerate(graph.edges)}
        self.nodes = {name: NodeProcess(cfg) for name, cfg in graph.nodes.items()}
        self.interrupts = 0
        self._print_lock = threading.Lock()

    def _endpoint(self, index: int) -> str:
        if self.graph.settings.transport == "tcp":
            return f"tcp://{self.graph.settings.bind}:{_free_tcp_port(self.graph.settings.bind)}"
        return f"ipc://{self.run_dir}/{index}"

    # -- processes -------------------------------------------------------------------------------
    def _spec(self, np_: NodeProcess) -> dict[str, Any]:
        name = np_.config.name
        done_nodes = {n for n, p in self.nodes.items() if p.state == "done"}
        return {
            "name": name,
            "type": np_.config.type,
            "params": np_.config.params,
            "incarnation": np_.incarnation,
            "control": self.control_endpoint,
            "limits": self.graph.settings.limits.__dict__,
            "log_level": self.log_level,
            "inputs": [{"id": e.id, "dst_port": e.dst_port, "policy": e.policy, "capacity": e.capacity,
                        "endpoint": self.endpoints[e.id]} for e in self.graph.edges_into(name)],
            "outputs": [{"id": e.id, "src_port": e.src_port, "policy": e.policy, "capacity": e.capacity,
                         "endpoint": self.endpoints[e.id]} for e in self.graph.edges_out_of(name)],
            "closed_edges": [e.id for e in self.graph.edges_into(name) if e.src in done_nodes],
            "counters": self._counters_path(name, np_.incarnation),
        }

    def _counters_path(self, name: str, incarnation: int) -> str:
        return f"{self.run_dir}/{name}.{incarnation}.counters"

    def _counters(self, np_: NodeProcess) -> list[dict[str, Any]]:
        """Counters of every incarnation so far (read from their files, so crashed ones count too)."""
        name = np_.config.name
        inputs = [e.id for e in self.graph.edges_into(name)]
        outputs = [e.id for e in self.graph.edges_out_of(name)]
        snaps = []
        for inc in range(np_.incarnation + 1):
            path = self._counters_path(name, inc)
            if os.path.exists(path) and os.path.getsize(path) > 0:
                snaps.append(Counters(path, inputs, outputs, create=False).snapshot())
        return snaps

    def _spawn(self, np_: NodeProcess) -> None:
        np_.state = "starting"
        np_.restart_at = None
        proc = subprocess.Popen(
            [sys.executable, "-m", "evpipe.runtime.worker", "--node", np_.config.name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", RUN_DIR_ENV: self.run_dir},
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(self._spec(np_)).encode())
        proc.stdin.close()
        np_.proc = proc
        threading.Thread(target=self._forward_log, args=(np_.config.name, proc), daemon=True).start()

    def _forward_log(self, name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with self._print_lock:
                self.console.print(f"[bold cyan]\\[{name}][/] {raw.decode(errors='replace').rstrip()}",
                                   markup=True, highlight=False)

    def _send(self, name: str, cmd: str, **fields: Any) -> None:
        np_ = self.nodes[name]
        identity = f"{name}#{np_.incarnation}".encode()
        self.router.send_multipart([identity, msgpack.packb({"cmd": cmd, **fields})])

    # -- control messages ------------------------------------------------------------------------
    def _handle(self, identity: bytes, payload: bytes) -> None:
        name, _, inc = identity.decode().rpartition("#")
        np_ = self.nodes.get(name)
        if np_ is None:
            return
        msg = msgpack.unpackb(payload, raw=False)
        kind = msg.get("type")
        if int(inc) != np_.incarnation:
            return
        if kind == "ready":
            np_.state = "ready"
        elif kind == "report":
            if "live_latency" in msg["data"] and np_.reports and "live_latency" in np_.reports[-1]:
                np_.reports[-1] = msg["data"]  # keep only the newest live snapshot
            else:
                np_.reports.append(msg["data"])
        elif kind == "done":
            np_.state = "done"
            for e in self.graph.edges_out_of(name):
                if self.nodes[e.dst].state == "running":
                    self._send(e.dst, "upstream_done", edges=[e.id])

    def _poll(self, timeout_ms: int) -> None:
        if self.router.poll(timeout_ms, zmq.POLLIN):
            while True:
                try:
                    identity, payload = self.router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(identity, payload)

    def _check_processes(self) -> bool:
        """Reap exited processes, schedule restarts; False when a node has failed for good."""
        now = time.monotonic()
        for np_ in self.nodes.values():
            if np_.proc is None or np_.state == "failed":
                continue
            code = np_.proc.poll()
            if code is None:
                continue
            self._poll(50)  # a clean exit's "done" may still be in flight
            np_.exit_codes.append(code)
            np_.proc = None
            if np_.state == "done":
                continue
            if np_.restarts >= self.graph.settings.max_restarts:
                np_.state = "failed"
                self.console.print(f"[bold red]node {np_.config.name!r} exited with code {code}; "
                                   f"no restarts left ({self.graph.settings.max_restarts} used)[/]")
                return False
            np_.restarts += 1
            delay = self.graph.settings.restart_backoff_s * 2 ** (np_.restarts - 1)
            np_.restart_at = now + delay
            np_.state = "restarting"
            self.console.print(f"[yellow]node {np_.config.name!r} exited with code {code}; restart "
                               f"{np_.restarts}/{self.graph.settings.max_restarts} in {delay:.1f} s[/]")
        for np_ in self.nodes.values():
            if np_.restart_at is not None and now >= np_.restart_at:
                np_.incarnation += 1
                self._spawn(np_)
        return True

    # -- run -------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        t0 = time.monotonic()
        failed = False
        try:
            for np_ in self.nodes.values():
                self._spawn(np_)
            failed = not self._wait_ready()
            if not failed:
                for name in self.nodes:
                    self._send(name, "start")
                    self.nodes[name].state = "running"
                failed = not self._supervise(t0)
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        report = self._report(time.monotonic() - t0, completed=not failed)
        write_status(self.run_dir, {**self._snapshot(time.monotonic() - t0, "done" if not failed else "failed")})
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return RunResult(1 if failed else 0, report)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._poll(50)
            if not self._check_processes():
                return False
            if self.interrupts:
                return False
            if all(p.state == "ready" for p in self.nodes.values()):
                return True
        waiting = [n for n, p in self.nodes.items() if p.state != "ready"]
        self.console.print(f"[bold red]nodes not ready after {READY_TIMEOUT_S:.0f} s: {', '.join(waiting)}[/]")
        return False

    def _supervise(self, t0: float) -> bool:
        stop_sent_at: float | None = None
        last_status = last_snapshot = time.monotonic()
        while not all(p.state == "done" and p.proc is None for p in self.nodes.values()):
            self._poll(100)
            if not self._check_processes():
                return False
            for np_ in self.nodes.values():  # a restarted node starts as soon as it is wired
                if np_.state == "ready":
                    self._send(np_.config.name, "start")
                    np_.state = "running"
            if self.interrupts and stop_sent_at is None:
                stop_sent_at = time.monotonic()
                for name, np_ in self.nodes.items():
                    if np_.config.cls.is_source() and np_.state == "running":
                        self._send(name, "stop")
            if stop_sent_at is not None and time.monotonic() - stop_sent_at > DRAIN_GRACE_S:
                for name, np_ in self.nodes.items():
                    if np_.state == "running":
                        self._send(name, "stop")
                stop_sent_at = time.monotonic()
            if self.interrupts > 1:
                return True
            if time.monotonic() - last_status > STATUS_INTERVAL_S:
                last_status = time.monotonic()
                self._status(time.monotonic() - t0)
            if time.monotonic() - last_snapshot > SNAPSHOT_INTERVAL_S:
                last_snapshot = time.monotonic()
                write_status(self.run_dir, self._snapshot(time.monotonic() - t0, "stopping" if self.interrupts
                                                          else "running"))
        return True

    def _status(self, elapsed: float) -> None:
        parts = []
        for name, np_ in self.nodes.items():
            processed = sum(c["processed"] for c in self._counters(np_))
            parts.append(f"{name}:{processed}" + (f"(restarts {np_.restarts})" if np_.restarts else ""))
        with self._print_lock:
            self.console.print(f"[dim]{elapsed:6.1f} s  messages processed  {'  '.join(parts)}[/]")

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            self.console.print("[yellow]stopping: sources stop, the graph drains (Ctrl-C again to kill)[/]")

    def _shutdown(self) -> None:
        deadline = time.monotonic() + 5.0
        for np_ in self.nodes.values():
            if np_.proc is not None and np_.proc.poll() is None and self.interrupts <= 1:
                while np_.proc.poll() is None and time.monotonic() < deadline:
                    self._poll(50)
            if np_.proc is not None and np_.proc.poll() is None:
                np_.proc.terminate()
                try:
                    np_.proc.wait(3)
                except subprocess.TimeoutExpired:
                    np_.proc.kill()
                    np_.proc.wait()
        self._poll(50)
        self.router.close()
        self.ctx.term()

    # -- report ----------------------------------------------------------------------------------
    def _snapshot(self, elapsed_s: float, state: str) -> dict[str, Any]:
        summed = {name: _sum_counters(self._counters(np_)) for name, np_ in self.nodes.items()}
        live = [r["live_latency"] for np_ in self.nodes.values() for r in np_.reports[-3:] if "live_latency" in r]
        return {
            "state": state,
            "elapsed_s": round(elapsed_s, 3),
            "graph": {"name": self.graph.name,
                      "nodes": {n: c.type for n, c in self.graph.nodes.items()},
                      "edges": [{"id": e.id, "src": e.src, "dst": e.dst, "policy": e.policy, "kind": e.kind}
                                for e in self.graph.edges]},
            "nodes": {name: {"state": np_.state, "restarts": np_.restarts, "processed": summed[name]["processed"]}
                      for name, np_ in self.nodes.items()},
            "edges": edge_accounting([{"id": e.id, "src": e.src, "dst": e.dst, "policy": e.policy}
                                      for e in self.graph.edges], summed),
            "latency": live[-1] if live else None,
        }

    def _report(self, duration_s: float, completed: bool) -> dict[str, Any]:
        summed = {name: _sum_counters(self._counters(np_)) for name, np_ in self.nodes.items()}
        latency_reports = [r["latency"] for np_ in self.nodes.values() for r in np_.reports if "latency" in r]
        final_reports = {name: [r for r in np_.reports if "live_latency" not in r] for name, np_ in self.nodes.items()}
        latency = None
        if latency_reports:
            latency = max(latency_reports, key=lambda r: r.get("messages", 0))
            latency = {**latency, "paths": {p: s for r in latency_reports for p, s in r["paths"].items()}}
        return {
            "graph": self.graph.name,
            "config": self.graph.path,
            "completed": completed,
            "interrupted": self.interrupts > 0,
            "duration_s": round(duration_s, 3),
            "nodes": {name: {"type": np_.config.type, "restarts": np_.restarts, "exit_codes": np_.exit_codes,
                             "processed": summed[name].get("processed", 0)}
                      for name, np_ in self.nodes.items()},
            "edges": edge_accounting([{"id": e.id, "src": e.src, "dst": e.dst, "policy": e.policy}
                                      for e in self.graph.edges], summed),
            "latency": latency,
            "reports": {name: reports for name, reports in final_reports.items() if reports},
        }


def _sum_counters(incarnations: Any) -> dict[str, Any]:
    total: dict[str, Any] = {"processed": 0, "inputs": {}, "outputs": {}}
    for c in incarnations:
        total["processed"] += c.get("processed", 0)
        for group in ("inputs", "outputs"):
            for edge, stats in c.get(group, {}).items():
                acc = total[group].setdefault(edge, {})
                for k, v in stats.items():
                    acc[k] = acc.get(k, 0) + v
    return total
