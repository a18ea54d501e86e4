"""DV network source and sink against real dv-processing NetworkWriter/NetworkReader peers.

Servers play the real DAVIS346 recording from ../shared/data through `io.NetworkWriter` in a separate
process (evpipe.tools.dv_server); everything runs on loopback TCP or UNIX sockets.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import dv_processing as dv
import numpy as np
import pytest

from evpipe.nodes.dv_io import (
    DvIoError,
    events_from_dv,
    events_to_dv,
    frame_from_dv,
    frame_to_dv,
    free_stale_socket,
    imu_from_dv,
    imu_message,
    imu_to_dv,
    open_reader,
    parse_address,
    tls_files,
)
from evpipe.nodes.sources.dv_network import DvNetworkSource
from evpipe.runtime.events import Events, Frame
from evpipe.tools.dv_server import DvServer
from tests.conftest import run_graph
from tests.live_support import davis_recording, free_port, make_certificates, record


def run_source(params: dict, node: DvNetworkSource | None = None) -> tuple[dict[str, list], dict]:
    """Run a DvNetworkSource in this process until its stream ends: (messages by port, its 'live' report)."""
    node = node or DvNetworkSource("net", {"give_up_after_s": 1.0, "backoff_s": 0.05, **params})
    reports: list[dict] = []
    node.attach_reporter(reports.append)
    node.start()
    out: dict[str, list] = defaultdict(list)
    for port, msg in node.produce():
        out[port].append(msg)
    node.stop()
    return out, next(r["live"] for r in reversed(reports) if "live" in r)


def test_addresses_are_parsed_and_bad_ones_explained():
    assert str(parse_address("tcp://127.0.0.1:7777")) == "tcp://127.0.0.1:7777"
    assert parse_address("unix:///tmp/dv.sock").path == "/tmp/dv.sock"
    for bad, why in [("127.0.0.1:7777", "not a DV stream address"), ("udp://h:1", "unknown scheme"),
                     ("tcp://host", "expected tcp://HOST:PORT"), ("tcp://h:70000", "port in 1..65535"),
                     ("unix://relative.sock", "absolute path")]:
        with pytest.raises(ValueError, match=why):
            parse_address(bad)
    with pytest.raises(ValueError, match="missing tls_key"):
        tls_files(__file__, None, server=False)
    with pytest.raises(ValueError, match="missing tls_ca"):
        tls_files(__file__, __file__, None, server=True)
    with pytest.raises(ValueError, match="is not a file"):
        tls_files("/nonexistent.pem", __file__, server=False)


def test_conversions_round_trip_events_frames_and_imu():
    rng = np.random.default_rng(0)
    events = Events.from_arrays(np.sort(rng.integers(0, 10**6, 500)), rng.integers(0, 346, 500),
                                rng.integers(0, 260, 500), rng.integers(0, 2, 500))
    back = events_from_dv(events_to_dv(events))
    for name in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(getattr(back, name), getattr(events, name))
    rgb = rng.integers(0, 255, (4, 6, 3), dtype=np.uint8)
    frame = frame_from_dv(frame_to_dv(Frame(rgb, t=1_000, exposure_us=400), dv.FrameSource.SENSOR))
    assert (frame.t, frame.exposure_us) == (1_000, 400)  # DV stamps the exposure start, evpipe its midpoint
    np.testing.assert_array_equal(frame.image, rgb)  # RGB -> BGR -> RGB
    gray = frame_from_dv(frame_to_dv(Frame(np.full((4, 6), 0.5, np.float32), t=10), dv.FrameSource.SENSOR))
    assert gray.image.dtype == np.uint8 and gray.image.shape == (4, 6) and gray.image[0, 0] == 128
    t = np.arange(5, dtype=np.int64) * 1000
    accel, gyro = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    imu = imu_from_dv(imu_to_dv(imu_message(t, accel, gyro)))
    np.testing.assert_array_equal(imu.arrays["t"], t)
    np.testing.assert_array_equal(imu.arrays["accel"], accel)
    np.testing.assert_array_equal(imu.arrays["gyro"], gyro)


def test_tcp_source_receives_every_event_of_a_real_recording():
    port = free_port()
    server = DvServer(davis_recording(), "--events", f"tcp://127.0.0.1:{port}", "--wait-clients", "--speed", "4",
                      "--cpus", "0")
    # --cpus pins the whole server, its writers' threads included (bench_realtime keeps its spinning on one core).
    tasks = Path(f"/proc/{server.proc.pid}/task")
    allowed = {line.split(":")[1].strip() for task in tasks.iterdir()
               for line in (task / "status").read_text().splitlines() if line.startswith("Cpus_allowed_list")}
    assert allowed == {"0"} and len(list(tasks.iterdir())) > 1
    out, live = run_source({"address": f"tcp://127.0.0.1:{port}"})
    sent = server.summary()["sent"]
    assert sent["events"] == 59_684  # the whole recording
    assert live["received"]["events"] == sent["events"]
    assert (live["emitted"]["events"], live["emitted"]["events_checksum"]) == (sent["events"],
                                                                                sent["events_checksum"])
    assert sum(len(m.arrays["t"]) for m in out["events"]) == sent["events"]
    assert out["events"][0].meta == {"width": 346, "height": 260}
    assert live["link"]["input"]["camera"] == "DAVIS346_00000002"
    # The server ended: reported as a disconnect, retried with backoff, then given up after give_up_after_s.
    assert len(live["link"]["disconnects"]) == 1 and live["link"]["gave_up"]
    assert live["link"]["failed_attempts"] >= 2
    assert live["arrival_lag_ms"]["count"] == sent["event_packets"]


def test_frames_over_unix_socket_and_imu_over_tcp(tmp_path):
    frames_sock, imu_port = tmp_path / "frames.sock", free_port()
    server = DvServer(davis_recording(), "--frames", f"unix://{frames_sock}", "--imu", f"tcp://127.0.0.1:{imu_port}",
                      "--wait-clients", "--speed", "4")
    results: dict[str, tuple] = {}
    threads = [threading.Thread(target=lambda k=k, a=a: results.__setitem__(k, run_source({"address": a})))
               for k, a in (("frames", f"unix://{frames_sock}"), ("imu", f"tcp://127.0.0.1:{imu_port}"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sent = server.summary()["sent"]
    frames_out, frames_live = results["frames"]
    imu_out, imu_live = results["imu"]
    assert sent["frames"] == 45 and frames_live["emitted"]["frames"] == 45
    images = [m.frame() for m in frames_out["frames"]]
    assert all(f.image.shape == (260, 346) and f.exposure_us == 500 for f in images)
    assert np.all(np.diff([f.t for f in images]) > 0)
    assert sent["imu_samples"] > 0 and sum(len(m.arrays["t"]) for m in imu_out["imu"]) == sent["imu_samples"]
    assert imu_live["received"]["imu_samples"] == sent["imu_samples"]


def test_tls_needs_a_client_certificate_signed_by_the_servers_ca(tmp_path):
    certs = make_certificates(tmp_path)
    port = free_port()
    address = parse_address(f"tcp://127.0.0.1:{port}")
    server = DvServer(davis_recording(), "--events", str(address), "--wait-clients", "--speed", "4",
                      "--tls", certs["server.pem"], certs["server.key"], certs["ca.pem"])
    try:
        rogue = tls_files(certs["rogue.pem"], certs["rogue.key"], server=False)
        with pytest.raises(DvIoError, match="TLS handshake failed"):
            open_reader(address, rogue, timeout_s=2.0)
        t0 = time.monotonic()
        with pytest.raises(DvIoError, match="may expect TLS"):  # a plain client gets an error, not a hang
            open_reader(address, None, timeout_s=1.0)
        assert time.monotonic() - t0 < 15  # a hang would be forever; 15 s allows for a busy machine
        _, live = run_source({"address": str(address), "tls_cert": certs["client.pem"],
                              "tls_key": certs["client.key"]})
    finally:
        sent = server.summary()["sent"]
    assert live["link"]["input"]["tls"] is True
    assert (live["emitted"]["events"], live["emitted"]["events_checksum"]) == (sent["events"],
                                                                                sent["events_checksum"])


def test_disconnect_is_reported_and_reconnected_with_backoff(tmp_path):
    recording = davis_recording()
    address = f"unix://{tmp_path / 'events.sock'}"
    first = DvServer(recording, "--events", address, "--wait-clients", "--speed", "4")
    node = DvNetworkSource("net", {"address": address, "backoff_s": 0.05, "backoff_max_s": 0.4})
    holder: dict = {}
    reader = threading.Thread(target=lambda: holder.update(zip(("out", "live"), run_source({}, node), strict=True)))
    reader.start()
    sent_first = first.summary()["sent"]
    time.sleep(0.6)  # the source is now retrying with backoff
    second = DvServer(recording, "--events", address, "--wait-clients", "--speed", "4")
    sent_second = second.summary()["sent"]
    total = sent_first["events"] + sent_second["events"]
    deadline = time.monotonic() + 30
    # Until the source has the tail (still in the socket) and has seen the second server go away.
    while ((node.received["events"] < total or len(node.link["disconnects"]) < 2)
           and time.monotonic() < deadline):
        time.sleep(0.05)
    node.halt()  # it would keep retrying for give_up_after_s (30 s)
    reader.join(60)
    live = holder["live"]
    link = live["link"]
    assert link["connects"] == 2 and len(link["disconnects"]) == 2  # each server's end
    assert 0.5 < link["disconnects"][0]["reconnected_after_s"] < 30
    assert link["failed_attempts"] >= 3 and not link["gave_up"]
    checksum = (sent_first["events_checksum"] + sent_second["events_checksum"]) % (1 << 64)
    # The second server's clock continues the first's (Unix time), so nothing is dropped as out of order.
    assert live["received"]["events"] == total and live["dropped"]["non_monotonic"] == 0
    assert (live["emitted"]["events"], live["emitted"]["events_checksum"]) == (total, checksum)
    record("server_restarted_cleanly", {"fault": "DV server ended, a new one started 0.6 s later (UNIX socket)",
                                        "link": link, "events_sent": total,
                                        "events_emitted": live["emitted"]["events"]})


def test_a_stalled_consumer_never_stalls_acquisition_and_memory_stays_bounded():
    """The source's buffer drops its oldest messages past max_buffer_mb and counts them; reading never stops."""
    port = free_port()
    server = DvServer(davis_recording(), "--events", f"tcp://127.0.0.1:{port}", "--wait-clients", "--speed", "8")
    node = DvNetworkSource("net", {"address": f"tcp://127.0.0.1:{port}", "give_up_after_s": 0.5,
                                   "max_buffer_mb": 0.1})
    reports: list[dict] = []
    node.attach_reporter(reports.append)
    node.start()
    stream = node.produce()
    taken = [next(stream)]
    sent = server.summary()["sent"]  # the consumer takes nothing while the whole recording is served
    taken.extend(stream)
    node.stop()
    live = reports[-1]["live"]
    assert live["received"]["events"] == sent["events"]  # acquisition read everything
    dropped = live["dropped"]["overflow_events"]
    assert dropped > 0 and live["dropped"]["overflow_messages"] > 0
    assert live["buffer"]["peak_bytes"] <= live["buffer"]["limit_bytes"] + 10_000  # one packet over at most
    assert sum(len(m.arrays["t"]) for _, m in taken) + dropped == sent["events"]  # exact ledger


def test_acquisition_starved_of_cpu_reports_how_far_it_fell_behind():
    """dv-processing's NetworkReader may discard packets silently while its reader is behind (see the hazard
    tests); the source cannot count such a loss, but it measures the backlog it then drains and warns when
    that reaches the reader's queue limit. The starvation is forced: this thread holds the GIL for 2 s (the
    switch interval raised), so the acquisition thread cannot run while the server writes 4000 packets."""
    port = free_port()
    server = DvServer(davis_recording(), "--events", f"tcp://127.0.0.1:{port}", "--wait-clients", "--hold",
                      "--duration-s", "8", "--speed", "8")
    node = DvNetworkSource("net", {"address": f"tcp://127.0.0.1:{port}", "give_up_after_s": 1.0})
    reports: list[dict] = []
    node.attach_reporter(reports.append)
    node.start()
    stream = node.produce()
    taken = [next(stream)]  # connected, the stream is flowing
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0:  # busy, never releasing the GIL
            pass
    finally:
        sys.setswitchinterval(interval)
    try:
        sent = server.summary()["sent"]
        # Acquisition drains its backlog into the source's buffer while the server stays connected: until all
        # of it arrived or nothing more came for 1 s (dv-processing discarded the rest).
        deadline, last, still_since = time.monotonic() + 30, -1, time.monotonic()
        while (node.received["events"] < sent["events"] and time.monotonic() - still_since < 1.0
               and time.monotonic() < deadline):
            if node.received["events"] != last:
                last, still_since = node.received["events"], time.monotonic()
            time.sleep(0.05)
    finally:
        server.release()
    taken.extend(stream)
    node.stop()
    live = reports[-1]["live"]
    backlog = live["input_backlog"]
    assert backlog["peak_packets"] >= backlog["reader_limit"] == 1000 and backlog["bursts_at_reader_limit"] >= 1
    assert sum(len(m.arrays["t"]) for _, m in taken) == live["emitted"]["events"] == live["received"]["events"]
    record("acquisition_starved", {"fault": "acquisition thread starved 2 s (GIL held) while the DV server wrote "
                                            "4000 packets", "events_sent": sent["events"],
                                   "events_received": live["received"]["events"], "input_backlog": backlog})


def test_unknown_server_and_stale_socket_are_explained(tmp_path):
    with pytest.raises(DvIoError, match="cannot connect"):
        open_reader(parse_address(f"tcp://127.0.0.1:{free_port()}"), None, timeout_s=0.5)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    with pytest.raises(DvIoError, match="no DV stream header"):  # something else listens there
        open_reader(parse_address(f"tcp://127.0.0.1:{listener.getsockname()[1]}"), None, timeout_s=0.3)
    listener.close()
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(stale))
    sock.close()  # the file stays, nobody listens: what a crashed server leaves
    free_stale_socket(str(stale))
    assert not stale.exists()
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(stale))
    live.listen()
    with pytest.raises(DvIoError, match="another server is listening"):
        free_stale_socket(str(stale))
    live.close()
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with pytest.raises(DvIoError, match="not a socket"):
        free_stale_socket(str(plain))


SINK_GRAPH = """\
name: to-dv
nodes:
  src: {{type: event_generator, params: {{packets: {packets}, packet_events: 2000, pace: realtime,
        event_rate: {rate}, width: 346, height: 260}}}}
  dv: {{type: dv_network_sink, params: {{events_address: "{address}", sensor_size: [346, 260],
       wait_for_clients: 1, max_queued_packets: {max_queued}}}}}
edges:
  - src.events -> dv.events
"""


def _dv_client(address: str, into: dict) -> None:
    """A DV client: reads the stream until the server goes away."""
    where = parse_address(address)
    deadline = time.monotonic() + 30
    while True:  # the graph's sink binds when its process starts
        try:
            reader = open_reader(where, None, timeout_s=1.0)
            break
        except DvIoError:
            assert time.monotonic() < deadline, f"no DV server at {address}"
            time.sleep(0.05)
    checksum = n = 0
    while True:
        store = reader.getNextEventBatch()
        if store is None:
            if not reader.isRunning():
                break
            time.sleep(0.001)
            continue
        events = events_from_dv(store)
        n += len(events)
        checksum = (checksum + events.checksum()) % (1 << 64)
    into.update(events=n, checksum=checksum, camera=reader.getCameraName())


def _stalled_client(path: str, release: threading.Event) -> None:
    """A viewer that connects and never reads (a NetworkReader would keep reading on its own I/O thread), until
    ``release`` is set."""
    deadline = time.monotonic() + 60
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(path)
            break
        except OSError:
            sock.close()
            if time.monotonic() > deadline or release.is_set():
                return  # the test's assertion on the sink's clients reports it
            time.sleep(0.05)
    release.wait()
    sock.close()


def test_sink_serves_a_graphs_events_to_a_dv_client(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    got: dict = {}
    client = threading.Thread(target=_dv_client, args=(address, got))
    client.start()
    proc, report = run_graph(tmp_path, SINK_GRAPH.format(packets=100, rate=1e6, address=address, max_queued=64))
    client.join(30)
    assert proc.returncode == 0, proc.stderr
    produced = report["reports"]["src"][0]["produced"]
    served = report["reports"]["dv"][0]["dv_network"]
    assert served["streams"]["events"]["events"] == produced["events"] == 200_000
    assert served["streams"]["events"]["dropped_queue_full"] == 0
    assert (got["events"], got["checksum"]) == (produced["events"], produced["checksum"])
    assert got["camera"] == "evpipe"
    record("sink_to_dv_client", {"events_served": served["streams"]["events"]["events"],
                                 "events_received_by_client": got["events"],
                                 "write_us_per_event": served["write_us_per_event"],
                                 "sink_peak_rss_mb": served["peak_rss_mb"]})


def test_a_dv_client_that_stops_reading_never_stalls_the_graph(tmp_path):
    """Writing to DV never blocks: a viewer that connects and stops reading cannot hold the graph back. (The
    memory dv-processing then buffers for that client is not bounded by evpipe: the sink reports its peak.)

    The viewer stays connected, not reading, until the graph has ended: a sink that blocked on it would never
    finish (run_graph's timeout fails the test), however slow or busy the machine is.
    """
    address = f"unix://{tmp_path / 'dv.sock'}"
    release = threading.Event()
    client = threading.Thread(target=_stalled_client, args=(str(tmp_path / "dv.sock"), release), daemon=True)
    client.start()
    try:
        proc, report = run_graph(tmp_path, SINK_GRAPH.format(packets=400, rate=2e7, address=address, max_queued=8),
                                 timeout=180)
    finally:
        release.set()
    client.join(10)
    assert proc.returncode == 0, proc.stderr
    (edge,) = report["edges"]
    served = report["reports"]["dv"][0]["dv_network"]
    stream = served["streams"]["events"]
    assert edge["processed"] == 400 and edge["lost"] == 0
    assert stream["packets"] + stream["dropped_queue_full"] == 400 and stream["peak_queue"] <= 8 + 1
    assert served["clients"] == {"events": 1}  # the stalled viewer was connected until the end
    record("sink_stalled_client", {"fault": "DV client connected but never reading", "packets_in": 400,
                                   "events_in": 800_000, "written": stream["packets"],
                                   "dropped_queue_full": stream["dropped_queue_full"],
                                   "peak_writer_queue": stream["peak_queue"],
                                   "sink_peak_rss_mb": served["peak_rss_mb"]})


def test_unix_socket_path_of_a_crashed_sink_is_reused(tmp_path):
    sock_path = tmp_path / "dv.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))
    stale.close()
    got: dict = {}
    address = f"unix://{sock_path}"
    client = threading.Thread(target=_dv_client, args=(address, got))
    client.start()
    proc, _ = run_graph(tmp_path, SINK_GRAPH.format(packets=20, rate=1e6, address=address, max_queued=64))
    client.join(30)
    assert proc.returncode == 0, proc.stderr
    assert got["events"] == 40_000


def test_bad_sink_parameters_are_reported_with_the_parameter(tmp_path):
    text = SINK_GRAPH.format(packets=5, rate=1e6, address="tcp://127.0.0.1", max_queued=8)
    text = text.replace("name: to-dv\n", "name: to-dv\nsettings: {max_restarts: 0}\n")
    proc, _ = run_graph(tmp_path, text)
    assert proc.returncode == 1
    assert "dv: 'tcp://127.0.0.1': expected tcp://HOST:PORT" in proc.stdout + proc.stderr
