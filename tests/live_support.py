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

    benchmarks/RELIABILITY.md is written from these lines (`python tests/live_support.py FILE`).
    """
    out = os.environ.get("EVPIPE_RELIABILITY_OUT")
    if out:
        with open(out, "a") as file:
            file.write(json.dumps({"test": name, **outcome}) + "\n")
