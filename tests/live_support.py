"""Helpers for the live tests: a DV server process playing a real recording, free ports, TLS certificates."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA

DAVIS346 = SHARED_DATA / "davis346_street" / "davis346_street_first1.8s_zstd.aedat4"
SERVER = Path(__file__).resolve().parent / "dv_server.py"


def davis_recording() -> Path:
    if not DAVIS346.is_file():
        pytest.skip(f"real recording not available: {DAVIS346} is absent (a fresh clone has no ../shared)")
    return DAVIS346


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DvServer:
    """tests/dv_server.py in a subprocess: started, waited for (``ready``), its JSON summary read at the end."""

    def __init__(self, recording: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SERVER), str(recording), *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"dv_server did not start: {line!r} {self.proc.stderr.read()}")

    def summary(self, timeout: float = 120) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


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

    ``python -m tests.live_support LINES.jsonl benchmarks/reliability.json`` collects the lines with the
    run's context (commit, machine load); benchmarks/RELIABILITY.md quotes that file.
    """
    out = os.environ.get("EVPIPE_RELIABILITY_OUT")
    if out:
        with open(out, "a") as file:
            file.write(json.dumps({"test": name, **outcome}) + "\n")


def main() -> int:
    """Collect recorded outcomes (JSON lines) into one JSON file with the context of the run."""
    lines, out = sys.argv[1], sys.argv[2]
    results = [json.loads(line) for line in Path(lines).read_text().splitlines() if line.strip()]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    Path(out).write_text(json.dumps({
        "command": "EVPIPE_RELIABILITY_OUT=LINES.jsonl pytest tests/test_live_*.py tests/test_fault_injection.py "
                   "tests/test_fuzz_readers.py -m 'slow or not slow'; python -m tests.live_support LINES.jsonl OUT",
        "commit": commit.strip(), "load_average_1_5_15": list(os.getloadavg()), "cpus": os.cpu_count(),
        "results": {r.pop("test"): r for r in results}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
