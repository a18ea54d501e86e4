"""Helpers for the live tests (the DV server process playing a real recording is
`evpipe.tools.dv_server.DvServer`): free ports, a running graph's
workers and live status, TLS certificates, and recording measured outcomes for benchmarks/RELIABILITY.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from evpipe.runtime.status import RUN_DIR_ENV, read_status
from evpipe.runtime.supervisor import free_tcp_port
from tests.conftest import SHARED_DATA

DAVIS346 = SHARED_DATA / "davis346_street" / "davis346_street_first1.8s_zstd.aedat4"


def davis_recording() -> Path:
    if not DAVIS346.is_file():
        pytest.skip(f"real recording not available: {DAVIS346} is absent (a fresh clone has no ../shared)")
    return DAVIS346


def free_port() -> int:
    return free_tcp_port("127.0.0.1")


def worker_pid(run: subprocess.Popen, node: str, timeout: float = 60) -> int:
    """PID of the worker process running ``node`` under this `evpipe run` (not another graph's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                status = (entry / "status").read_text()
            except OSError:
                continue
            if b"evpipe.runtime.worker" in cmd and node.encode() in cmd and f"PPid:\t{run.pid}\n" in status:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"no worker for node {node!r}")


def process_environ(pid: int) -> dict[str, str]:
    """The environment a running process was started with."""
    return dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)


def run_dir(pid: int) -> str:
    """The run directory (live status.json) of the graph a worker belongs to, from its environment."""
    return process_environ(pid)[RUN_DIR_ENV]


def processed(folder: str, node: str) -> int:
    """Messages ``node`` has processed (a source: emitted) according to the graph's live status."""
    status = read_status(folder)
    return status["nodes"].get(node, {}).get("processed", 0) if status else 0


def wait_until_processed(pid: int, node: str, count: int, timeout: float = 60) -> None:
    """Wait until the live status of ``pid``'s graph shows ``node`` has processed ``count`` messages."""
    folder = run_dir(pid)
    deadline = time.monotonic() + timeout
    while processed(folder, node) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{node} did not process {count} messages in {timeout} s")
        time.sleep(0.05)


def make_certificates(folder: Path) -> dict[str, str]:
    """A CA, a server and a client certificate signed by it, and a rogue self-signed client (PEM files)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=evpipe-test-ca")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", "/CN=127.0.0.1")
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2",
        "-subj", "/CN=rogue")
    return {name: str(folder / name) for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key",
                                                   "rogue.pem", "rogue.key")}


def record(name: str, outcome: dict) -> None:
    """Append a measured outcome as a JSON line to $EVPIPE_RELIABILITY_OUT when it is set.

    ``python -m evpipe.tools.reliability_report LINES.jsonl`` collects the lines with the run's context
    (commit, machine load) into benchmarks/reliability.json and renders benchmarks/RELIABILITY.md from it.
    """
    out = os.environ.get("EVPIPE_RELIABILITY_OUT")
    if out:
        with open(out, "a") as file:
            file.write(json.dumps({"test": name, **outcome}) + "\n")
