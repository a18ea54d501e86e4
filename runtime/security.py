"""CURVE keys for cross-host edges, and the ZAP handler that refuses unknown clients.

``evpipe keys FOLDER a b`` writes one certificate pair per host (``a.key`` public, ``a.key_secret``
secret, ZeroMQ's own format). Deploy each host with its own ``.key_secret`` and every host's public
``.key``: a consumer accepts only clients whose public key is in the folder, so a client with any
other key — or plaintext traffic — is refused by the CURVE handshake before a message is read.
"""

from __future__ import annotations

from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def create_keys(folder: str | Path, hosts: list[str]) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(zmq.auth.create_certificates(folder, host)[1]) for host in hosts]


def _load(folder: str | Path, host: str, secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(folder) / (f"{host}.key_secret" if secret else f"{host}.key")
    if not path.exists():
        raise FileNotFoundError(f"CURVE certificate {path} is missing; make it with `evpipe keys {folder} {host}`")
    return zmq.auth.load_certificate(path)


def server_options(folder: str | Path, host: str) -> dict[str, str]:
    """Options for a consumer socket (CURVE server) on ``host``."""
    public, secret = _load(folder, host, secret=True)
    return {"public": public.decode(), "secret": secret.decode(), "keys_dir": str(folder)}


def client_options(folder: str | Path, host: str, server_host: str) -> dict[str, str]:
    """Options for a producer socket on ``host`` connecting to a consumer on ``server_host``."""
    public, secret = _load(folder, host, secret=True)
    server_public, _ = _load(folder, server_host, secret=False)
    return {"public": public.decode(), "secret": secret.decode(), "server_public": server_public.decode()}


def apply_server(sock: zmq.Socket, options: dict[str, str]) -> None:
    sock.curve_server = True
    sock.curve_secretkey = options["secret"].encode()
    sock.curve_publickey = options["public"].encode()


def apply_client(sock: zmq.Socket, options: dict[str, str]) -> None:
    sock.curve_serverkey = options["server_public"].encode()
    sock.curve_publickey = options["public"].encode()
    sock.curve_secretkey = options["secret"].encode()


def start_authenticator(ctx: zmq.Context, keys_dir: str | Path) -> ThreadAuthenticator:
    """Accept CURVE clients whose public key is in ``keys_dir``, refuse everyone else."""
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys_dir))
    return auth
