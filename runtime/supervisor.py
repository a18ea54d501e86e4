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

from evpipe.runtime import security
from evpipe.runtime.clock import ClockServer, estimate_offset
from evpipe.runtime.counters import Counters
from evpipe.runtime.graph import Graph, NodeConfig
from evpipe.runtime.report import edge_accounting, summarize_timings
from evpipe.runtime.status import RUN_DIR_ENV, write_status

READY_TIMEOUT_S = 120.0
DRAIN_GRACE_S = 15.0
STATUS_INTERVAL_S = 5.0  # console status line
SNAPSHOT_INTERVAL_S = 0.5  # status.json for dashboards
# OpenMP's idle workers (Numba's parallel kernels, torch on the CPU) busy-wait a few ms after every parallel
# region by default, on cores the graph's other processes need: measured in the live DAVIS346 deblur graph, the
# spinning took ~0.2 of a core and stretched the model's latency tail (benchmarks/RESULTS.md, issue #26). Workers
# wait passively unless the user's environment says otherwise.
WORKER_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


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
    timings: list[dict[str, Any]] = field(default_factory=list)  # NodeTimings.as_dict() of each incarnation


@dataclass
class RunResult:
    exit_code: int
    report: dict[str, Any]


def free_tcp_port(host: str) -> int:
    """A TCP port on ``host`` that nothing listens on now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Supervisor:
    """Runs a graph, or with ``host`` the fragment of a multi-host graph whose nodes live on that host."""

    def __init__(self, graph: Graph, *, host: str | None = None, console: Console | None = None,
                 log_level: str = "INFO") -> None:
        if graph.hosts and host not in graph.hosts:
            raise ValueError(f"graph {graph.name!r} spans hosts {', '.join(graph.hosts)}: choose one with --host")
        self.graph, self.host = graph, host
        self.console = console or Console(stderr=True)
        self.log_level = log_level
        self.run_dir = tempfile.mkdtemp(prefix="evp-")
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.control_endpoint = f"ipc://{self.run_dir}/control"
        self.router.bind(self.control_endpoint)
        cross = {e.id: k for k, e in enumerate(graph.cross_host_edges())}
        self.endpoints = {e.id: self._endpoint(i, cross.get(e.id), e.dst) for i, e in enumerate(graph.edges)}
        self.nodes = {name: NodeProcess(cfg) for name, cfg in graph.nodes.items() if host is None or cfg.host == host}
        self.local_edges = [e for e in graph.edges if e.src in self.nodes or e.dst in self.nodes]
        self.clock_offsets: dict[str, dict[str, int]] = {}  # host -> {"offset_ns", "round_trip_ns"}
        self.clock_server: ClockServer | None = None
        self.interrupts = 0
        self._print_lock = threading.Lock()

    def _endpoint(self, index: int, cross_index: int | None, dst: str) -> str:
        if cross_index is not None:  # consumer's host address, a port every host derives the same way
            address = self.graph.hosts[self.graph.host_of(dst)].address
            return f"tcp://{address}:{self.graph.settings.port_base + cross_index}"
        if self.graph.settings.transport == "tcp":
            return f"tcp://{self.graph.settings.bind}:{free_tcp_port(self.graph.settings.bind)}"
        return f"ipc://{self.run_dir}/{index}"

    def _clock_endpoint(self, host: str) -> str:
        return f"tcp://{self.graph.hosts[host].address}:{self.graph.settings.port_base - 1}"

    def _sync_clocks(self) -> None:
        """Serve our clock, and in the background measure every other host's offset (each may start later)."""
        keys = self.graph.settings.curve_keys
        self.clock_server = ClockServer(self.ctx, self._clock_endpoint(self.host),
                                        security.server_options(keys, self.host) if keys else None)
        self.clock_server.start()

        def measure() -> None:
            for other in self.graph.hosts:
                if other == self.host:
                    continue
                curve = security.client_options(keys, self.host, other) if keys else None
                result = estimate_offset(self.ctx, self._clock_endpoint(other), curve, timeout_s=60.0)
                if result is None:
                    self.console.print(f"[yellow]host {other!r} did not answer clock requests; its latency "
                                       "stamps are taken as they are[/]")
                else:
                    self.clock_offsets[other] = {"offset_ns": result[0], "round_trip_ns": result[1]}

        threading.Thread(target=measure, name="clock-sync", daemon=True).start()

    def _node_offsets(self) -> dict[str, int]:
        """node -> its host's clock minus ours, for nodes on hosts measured so far."""
        return {n: self.clock_offsets[cfg.host]["offset_ns"] for n, cfg in self.graph.nodes.items()
                if cfg.host in self.clock_offsets}

    # -- processes -------------------------------------------------------------------------------
    def _spec(self, np_: NodeProcess) -> dict[str, Any]:
        name = np_.config.name
        done_nodes = {n for n, p in self.nodes.items() if p.state == "done"}
        keys = self.graph.settings.curve_keys
        inputs = [{"id": e.id, "dst_port": e.dst_port, "policy": e.policy, "capacity": e.capacity,
                   "endpoint": self.endpoints[e.id]} for e in self.graph.edges_into(name)]
        outputs = [{"id": e.id, "src_port": e.src_port, "policy": e.policy, "capacity": e.capacity,
                    "endpoint": self.endpoints[e.id]} for e in self.graph.edges_out_of(name)]
        for spec, edge in zip(inputs, self.graph.edges_into(name), strict=True):
            if self.graph.is_cross_host(edge):
                spec["curve_server"] = security.server_options(keys, self.host)
        for spec, edge in zip(outputs, self.graph.edges_out_of(name), strict=True):
            spec["ack"] = not self.graph.is_cross_host(edge)  # a same-host consumer confirms end-of-stream
            if self.graph.is_cross_host(edge):
                spec["curve_client"] = security.client_options(keys, self.host, self.graph.host_of(edge.dst))
        return {
            "name": name,
            "type": np_.config.type,
            "params": np_.config.params,
            "incarnation": np_.incarnation,
            "control": self.control_endpoint,
            "limits": self.graph.settings.limits.__dict__,
            "log_level": self.log_level,
            "inputs": inputs,
            "outputs": outputs,
            "clock_offsets_ns": self._node_offsets(),
            "closed_edges": [e.id for e in self.graph.edges_into(name) if e.src in done_nodes],
            "counters": self._counters_path(name, np_.incarnation),
            "supervisor_pid": os.getpid(),
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
            env={**WORKER_ENV_DEFAULTS, **os.environ, "PYTHONUNBUFFERED": "1", RUN_DIR_ENV: self.run_dir},
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
        elif kind == "eos":  # a consumer got an end-of-stream: the producer may close its sockets
            src = self.graph.edges_by_id[msg["edge"]].src
            if src in self.nodes:
                self._send(src, "eos_ack", edge=msg["edge"])
        elif kind == "timings":
            np_.timings.append(msg["data"])
        elif kind == "fatal":  # the node printed the message itself
            np_.state = "fatal"
        elif kind == "done":
            np_.state = "done"
            for e in self.graph.edges_out_of(name):
                if e.dst in self.nodes and self.nodes[e.dst].state == "running":
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
            if np_.state == "fatal":
                np_.state = "failed"
                self.console.print(f"[bold red]node {np_.config.name!r} stopped on an error that a restart cannot "
                                   "fix; the graph stops[/]")
                return False
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
            if self.graph.hosts:
                self._sync_clocks()
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
        offsets_sent = 0
        while not all(p.state == "done" and p.proc is None for p in self.nodes.values()):
            self._poll(100)
            if not self._check_processes():
                return False
            for np_ in self.nodes.values():  # a restarted node starts as soon as it is wired
                if np_.state == "ready":
                    self._send(np_.config.name, "start")
                    np_.state = "running"
            if len(self.clock_offsets) != offsets_sent:  # a host's clock was measured: tell the nodes
                offsets_sent = len(self.clock_offsets)
                for name, np_ in self.nodes.items():
                    if np_.state == "running":
                        self._send(name, "clock", offsets=self._node_offsets())
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
        if self.clock_server is not None:
            self.clock_server.stop()
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
            "edges": self._edges(summed),
            "latency": live[-1] if live else None,
        }

    def _edges(self, summed: dict[str, Any]) -> list[dict[str, Any]]:
        """Edge accounting for this host's edges; an edge to another host shows only this side's counts."""
        rows = edge_accounting([{"id": e.id, "src": e.src, "dst": e.dst, "policy": e.policy}
                                for e in self.local_edges], summed)
        for row, e in zip(rows, self.local_edges, strict=True):
            if self.graph.is_cross_host(e):
                row["lost"] = None
                row["remote"] = e.dst if e.src in self.nodes else e.src
        return rows

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
                             "processed": summed[name].get("processed", 0), **summarize_timings(np_.timings)}
                      for name, np_ in self.nodes.items()},
            "edges": self._edges(summed),
            "latency": latency,
            "host": self.host,
            "clock_offsets_ms": {h: {"offset_ms": o["offset_ns"] / 1e6, "round_trip_ms": o["round_trip_ns"] / 1e6}
                                 for h, o in self.clock_offsets.items()},
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
