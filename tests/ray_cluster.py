"""A real two-node Ray cluster on this machine for the batch tests: a head and a second node started
with ``ray start --block`` (each in its own process group), stopped by killing those groups and the
worker processes their session logs name — never ``ray stop``, which would stop every Ray on the machine."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

OBJECT_STORE_BYTES = 200 * 1024 * 1024  # per node; the machine is shared
# A loopback test cluster: no token to distribute between the nodes and the driver.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


class RayCluster:
    """``address`` is what ``evpipe batch --address`` takes; ``env`` what its process needs."""

    def __init__(self, temp_dir: Path, cpus_per_node: int = 1, timeout_s: float = 90.0) -> None:
        self.temp_dir, self.port = temp_dir, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **RAY_ENV}
        self.processes: list[subprocess.Popen] = []
        common = ["--block", f"--num-cpus={cpus_per_node}", f"--object-store-memory={OBJECT_STORE_BYTES}",
                  "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        try:
            self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                                 f"--temp-dir={temp_dir}", *common])
            self._wait(lambda: self._port_open(), timeout_s, "the head's GCS port")
            self._start("node2", [f"--address={self.address}", *common])
            self._wait(lambda: self.nodes() == 2, timeout_s, "the second node to join")
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.temp_dir.parent / f"ray_{name}.log", "w")  # noqa: SIM115 - the process keeps it
        self.processes.append(subprocess.Popen([_ray_cli(), "start", *args], stdout=log, stderr=subprocess.STDOUT,
                                               env=self.env, start_new_session=True))

    def _port_open(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), 1).close()
            return True
        except OSError:
            return False

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray test cluster: {what} not ready after {timeout_s:.0f} s")
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"Ray test cluster: `ray start` exited early (logs in {self.temp_dir.parent})")
            time.sleep(0.5)

    def nodes(self) -> int:
        """Alive nodes, asked of the cluster by a separate driver (this process never joins it)."""
        code = (f"import ray; ray.init(address='{self.address}', logging_level='ERROR', log_to_driver=False); "
                "print(sum(n['Alive'] for n in ray.nodes()))")
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env,
                                 timeout=60)
        except subprocess.TimeoutExpired:
            return 0
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0

    def worker_pids(self) -> set[int]:
        """Ray worker processes of this cluster's session, from their log file names."""
        pids = set()
        for log in self.temp_dir.glob("session_*/logs/python-core-worker-*_*.log"):
            match = re.search(r"_(\d+)\.log$", log.name)
            if match:
                pids.add(int(match.group(1)))
        return pids

    def stop(self) -> None:
        workers = self.worker_pids()
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):  # the group this fixture made: ray start, its daemons
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        deadline = time.monotonic() + 10
        for pid in workers:  # workers leave the group; they exit when their raylet is gone
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid) and "ray" in _command(pid):  # still this session's worker, not a reused pid
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
