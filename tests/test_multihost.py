"""Multi-host graphs: fragments run per host, cross-host edges over TCP with CURVE, unknown clients refused,
clock offsets estimated. Hosts are network namespaces joined by a veth pair (made and removed here), and
loopback addresses 127.0.0.2/127.0.0.3 where namespaces cannot be made."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

from evpipe.runtime.security import create_keys
from tests.conftest import TESTS
from tests.live_support import record

GRAPH = """\
name: two-hosts
hosts:
  a: {{address: {a}}}
  b: {{address: {b}}}
settings: {{curve_keys: keys, port_base: {port}}}
nodes:
  src:  {{type: event_generator, host: a, params: {{packets: 80, packet_events: 2000, pace: realtime,
          event_rate: 2.0e+6}}}}
  filt: {{type: event_filter, host: b}}
  sink: {{type: metrics, host: b, params: {{warmup: 0}}}}
edges:
  - src.events -> filt.events
  - filt.events -> sink.in
"""

ROGUE = """
import sys, time, zmq, zmq.auth, numpy as np
from evpipe.runtime.events import Events
from evpipe.runtime.wire import Message, encode
import socket
endpoint, mode = sys.argv[1], sys.argv[2]
host, port = endpoint[len("tcp://"):].rsplit(":", 1)
deadline = time.monotonic() + 30
while True:  # wait until host b listens, so the rogue traffic really reaches the CURVE handshake
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("host b never listened")
        time.sleep(0.1)
ctx = zmq.Context()
sock = ctx.socket(zmq.PUSH)
if mode == "wrong-key":
    public, secret = zmq.curve_keypair()
    server_public = zmq.auth.load_certificate(sys.argv[3])[0]
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, public, secret
sock.connect(endpoint)
ev = Events.from_arrays(np.arange(10), np.zeros(10), np.zeros(10), np.ones(10))
msg = Message.from_events(ev)
msg.stream = "rogue." + mode
for _ in range(20):
    try:
        sock.send_multipart(encode(msg), flags=zmq.NOBLOCK)
    except zmq.Again:
        pass
    time.sleep(0.05)
sock.close(linger=1000)
ctx.term()
"""


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@contextmanager
def _namespaces():
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b = f"evpa{tag}", f"evpb{tag}"
    try:
        _sh("ip", "netns", "add", ns_a)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make network namespaces here ({exc}); the loopback variant covers the protocol")
    try:
        _sh("ip", "netns", "add", ns_b)
        _sh("ip", "link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        _sh("ip", "link", "set", f"va{tag}", "netns", ns_a)
        _sh("ip", "link", "set", f"vb{tag}", "netns", ns_b)
        for ns, dev, addr in ((ns_a, f"va{tag}", "10.231.0.1/24"), (ns_b, f"vb{tag}", "10.231.0.2/24")):
            _sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ["ip", "netns", "exec", ns_a], ["ip", "netns", "exec", ns_b], "10.231.0.1", "10.231.0.2"
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _run_two_hosts(tmp_path: Path, in_a: list[str], in_b: list[str], addr_a: str, addr_b: str) -> tuple[dict, dict]:
    port = random.randint(20000, 40000)
    create_keys(tmp_path / "keys", ["a", "b"])
    config = tmp_path / "graph.yaml"
    config.write_text(GRAPH.format(a=addr_a, b=addr_b, port=port))
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}

    def start(prefix: list[str], host: str) -> subprocess.Popen:
        return subprocess.Popen([*prefix, sys.executable, "-m", "evpipe.runtime.cli", "run", str(config), "--host",
                                 host, "--report", str(tmp_path / f"{host}.json")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)

    run_b = start(in_b, "b")
    # While b waits for its input, two rogue clients on host a try the cross-host edge: a wrong key, plaintext.
    endpoint = f"tcp://{addr_b}:{port}"
    for mode in ("wrong-key", "plaintext"):
        subprocess.run([*in_a, sys.executable, "-c", textwrap.dedent(ROGUE), endpoint, mode,
                        str(tmp_path / "keys" / "b.key")], check=True, env=env, timeout=60)
    run_a = start(in_a, "a")
    _, err_a = run_a.communicate(timeout=120)
    _, err_b = run_b.communicate(timeout=120)
    assert run_a.returncode == 0, err_a
    assert run_b.returncode == 0, err_b
    return json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())


def _check(report_a: dict, report_b: dict) -> dict:
    """Assert the graph's data crossed intact and no rogue message reached it; return the measured outcome."""
    produced = report_a["reports"]["src"][0]["produced"]
    streams = report_b["reports"]["sink"][0]["streams"]
    assert set(streams) == {"filt.events"}, f"rogue traffic reached the graph: {streams}"
    assert (streams["filt.events"]["events"], streams["filt.events"]["checksum"]) == (produced["events"],
                                                                                       produced["checksum"])
    assert report_b["reports"]["filt"][0]["removed_events"] == 0
    cross = next(e for e in report_b["edges"] if e["edge"] == "src.events->filt.events")
    assert cross["processed"] == 80 and cross["rejected"] == 0 and cross["lost"] is None  # other side: host a
    assert next(e for e in report_a["edges"] if e["edge"] == "src.events->filt.events")["sent"] == 80
    offset = report_b["clock_offsets_ms"]["a"]
    assert abs(offset["offset_ms"]) <= offset["round_trip_ms"]  # same kernel clock: offset within the error bar
    assert report_b["latency"]["paths"]["src -> filt -> sink"]["count"] == 80
    return {"messages_crossed": cross["processed"], "events_produced": produced["events"],
            "events_delivered": streams["filt.events"]["events"], "checksums": [produced["checksum"],
                                                                                 streams["filt.events"]["checksum"]],
            "rogue_messages_tried": {"wrong-key": 20, "plaintext": 20},
            "rogue_streams_reaching_the_graph": sorted(set(streams) - {"filt.events"}),
            "clock_offset_ms": offset, "latency_ms": report_b["latency"]["paths"]["src -> filt -> sink"]}


def test_multi_host_graph_over_curve_between_network_namespaces(tmp_path):
    with _namespaces() as (in_a, in_b, addr_a, addr_b):
        record("multihost_curve_namespaces", _check(*_run_two_hosts(tmp_path, in_a, in_b, addr_a, addr_b)))


def test_multi_host_graph_over_curve_on_loopback_addresses(tmp_path):
    record("multihost_curve_loopback", _check(*_run_two_hosts(tmp_path, [], [], "127.0.0.2", "127.0.0.3")))


def test_cross_host_edges_require_curve_keys(tmp_path):
    from evpipe.runtime.graph import ConfigError, load_graph

    config = tmp_path / "g.yaml"
    config.write_text(GRAPH.format(a="127.0.0.2", b="127.0.0.3", port=30000).replace("curve_keys: keys, ", ""))
    with pytest.raises(ConfigError, match=r"crosses hosts.*CURVE"):
        load_graph(config)
