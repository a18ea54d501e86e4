"""Live viewer without a browser: drawing, the panel store, the server's protocol and flow control, --view."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import struct
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

from evpipe.nodes.sinks.viewer import Viewer, add_viewer, viewer_urls
from evpipe.nodes.sinks.viewer.panels import PanelStore
from evpipe.nodes.sinks.viewer.render import BIN_GAP_PX, encode_jpeg, render_events, render_frame, render_voxel
from evpipe.nodes.sinks.viewer.server import static_dir
from evpipe.runtime.events import Events, Frame
from evpipe.runtime.graph import ConfigError, build_graph, load_graph
from evpipe.runtime.status import RUN_DIR_ENV, write_status
from evpipe.runtime.wire import Message, Trace, now_ns
from tests.conftest import evpipe


def _events(t: list[int], x: list[int], y: list[int], p: list[int], stream: str = "src.events", **meta) -> Message:
    msg = Message.from_events(Events(np.array(t, np.int64), np.array(x, np.uint16), np.array(y, np.uint16),
                                     np.array(p, np.int8)), **meta)
    msg.stream = stream
    msg.trace = Trace(t[-1], now_ns(), [("src", now_ns(), now_ns())])
    return msg


def _block_events(x0: int, y0: int, size: int, polarity: int, t0: int = 0, **meta) -> Message:
    """Two events at every pixel of a size x size block: a patch of full colour even after JPEG."""
    ys, xs = np.mgrid[y0:y0 + size, x0:x0 + size]
    xs, ys = np.repeat(xs.ravel(), 2), np.repeat(ys.ravel(), 2)
    return _events(list(t0 + np.arange(len(xs))), list(xs), list(ys), [polarity] * len(xs), **meta)


# -- drawing ---------------------------------------------------------------------------------------
def test_events_are_red_for_on_blue_for_off_on_white():
    rgb = render_events([_events([1, 2, 3, 4], [0, 1, 2, 2], [0, 0, 0, 0], [1, 1, -1, 1]),
                         _events([5, 6], [1, 3], [0, 1], [-1, -1])], height=2, width=4)
    assert rgb.shape == (2, 4, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, 128, 128)  # one ON event: half way to red (saturation is 2 events)
    assert tuple(rgb[0, 1]) == (128, 64, 128)  # one ON and one OFF: both channels dimmed
    assert tuple(rgb[1, 3]) == (128, 128, 255)  # one OFF: half way to blue
    assert tuple(rgb[0, 3]) == (255, 255, 255)  # no event: white
    both_red = render_events([_events([1, 2], [0, 0], [0, 0], [1, 1])], 1, 1)
    assert tuple(both_red[0, 0]) == (255, 0, 0)


def test_events_outside_the_sensor_are_left_out_not_fatal():
    rgb = render_events([_events([1, 2], [0, 900], [0, 900], [1, 1])], height=2, width=2)
    assert tuple(rgb[0, 0]) == (255, 128, 128) and (rgb[1:, :] == 255).all()


def test_frames_of_any_dtype_become_rgb_uint8():
    gray = render_frame(np.array([[0, 255]], np.uint8))
    assert gray.shape == (1, 2, 3) and tuple(gray[0, 1]) == (255, 255, 255)
    unit = render_frame(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert list(unit[0, :, 0]) == [0, 127, 255]
    wide = render_frame(np.array([[-2.0, 2.0]], np.float32))  # not in [0, 1]: stretched
    assert list(wide[0, :, 1]) == [0, 255]
    counts = render_frame(np.array([[100, 300]], np.uint16))
    assert list(counts[0, :, 2]) == [0, 255]
    assert render_frame(np.zeros((3, 4, 1), np.float32)).shape == (3, 4, 3)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\)"):
        render_frame(np.zeros((2, 3, 4)))


def test_voxel_grid_is_a_strip_of_bins_on_one_symmetric_scale():
    voxel = np.zeros((3, 10, 20), np.float32)
    voxel[0] = 2.0  # 200 of the 202 nonzero values: the 99th percentile of the magnitudes, full red
    voxel[1, 0, 0] = -1.0  # half of it, negative: half blue
    voxel[2, 0, 0] = -50.0  # a hot pixel saturates instead of washing out the rest
    strip = render_voxel(voxel)
    assert strip.shape == (10, 3 * 20 + 2 * BIN_GAP_PX, 3)
    second, third = 20 + BIN_GAP_PX, 2 * (20 + BIN_GAP_PX)
    assert (strip[:, :20] == (255, 0, 0)).all()
    assert tuple(strip[0, second]) == (128, 128, 255)
    assert tuple(strip[0, third]) == (0, 0, 255)
    assert tuple(strip[5, second + 5]) == (255, 255, 255)
    assert (strip[:, 20:20 + BIN_GAP_PX] != 255).all()  # gutter between bins


def test_jpeg_is_scaled_down_to_max_width():
    picture = Image.open(io.BytesIO(encode_jpeg(np.zeros((100, 400, 3), np.uint8), max_width=200, quality=80)))
    assert picture.format == "JPEG" and picture.size == (200, 50)


# -- panel store -----------------------------------------------------------------------------------
def test_event_panel_keeps_a_window_of_sensor_time_and_the_sensor_size():
    store = PanelStore(event_window_us=1000)
    for k in range(10):
        store.add(_events([k * 400, k * 400 + 1], [1, 2], [1, 2], [1, -1], width=50, height=40))
    assert store.describe() == [{"id": 0, "stream": "src.events", "kind": "events", "received": 10}]
    panel = store._panels["src.events"]
    assert panel.sensor == (40, 50)
    assert [m.t_range[1] for m in panel.packets] == [2801, 3201, 3601]  # newest 3601: from 2601 on
    picture = store.draw(0, max_width=960, quality=80)
    assert (picture.version, picture.info["events"], picture.info["height"], picture.info["width"]) == (10, 6, 40, 50)


def test_sensor_size_without_metadata_grows_with_the_events_seen():
    store = PanelStore(event_window_us=10_000)
    store.add(_events([1], [9], [4], [1]))
    store.add(_events([2], [3], [19], [1]))
    assert store._panels["src.events"].sensor == (20, 10)


def test_a_malformed_message_draws_as_an_error_on_its_panel():
    store = PanelStore(event_window_us=1000)
    msg = Message("voxel", {"voxel": np.zeros((4, 4), np.float32)}, stream="vox.voxels")
    store.add(msg)
    picture = store.draw(0, 960, 80)
    assert "cannot draw this voxel message" in picture.info["error"] and picture.jpeg[:2] == b"\xff\xd8"


# -- server: protocol, flow control, origin check, stop ---------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_picture(data: bytes) -> tuple[dict, Image.Image]:
    length = struct.unpack(">I", data[:4])[0]
    return json.loads(data[4:4 + length]), Image.open(io.BytesIO(data[4 + length:]))


async def _receive(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> tuple[str, object]:
    msg = await ws.receive(timeout)
    if msg.type == aiohttp.WSMsgType.BINARY:
        return "picture", _parse_picture(msg.data)
    if msg.type == aiohttp.WSMsgType.TEXT:
        data = json.loads(msg.data)
        return data["type"], data
    return "closed", msg


async def _next_picture(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> tuple[dict, Image.Image]:
    deadline = time.monotonic() + timeout
    while True:
        kind, data = await _receive(ws, max(0.01, deadline - time.monotonic()))
        if kind == "picture":
            return data
        assert kind != "closed", data


@pytest.fixture
def viewer(tmp_path, monkeypatch):
    """A Viewer node started in this process, with a run directory whose status.json says the graph's shape."""
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path))
    write_status(tmp_path, {
        "state": "running", "elapsed_s": 1.0,
        "graph": {"name": "g", "nodes": {"src": "event_generator", "cam": "x", "viewer": "viewer"},
                  "edges": [{"id": "src.events->viewer.in", "src": "src", "dst": "viewer", "policy": "latest",
                             "kind": "events"},
                            {"id": "cam.frames->viewer.in", "src": "cam", "dst": "viewer", "policy": "latest",
                             "kind": "frame"}]},
        "nodes": {"src": {"state": "running", "restarts": 0, "processed": 10}},
        "edges": [{"edge": "src.events->viewer.in", "policy": "latest", "sent": 10, "processed": 10, "dropped": 0,
                   "rejected": 0, "lost": 0}],
        "latency": None})
    node = Viewer("viewer", {"port": 0, "max_fps": 50.0, "cpu_share": 1.0})
    node.start()
    yield node
    node.stop()


def test_page_is_served_with_local_assets_only(viewer):
    async def fetch() -> tuple[str, str]:
        url = viewer.server.url
        async with aiohttp.ClientSession() as http, http.get(url) as page, http.get(url + "static/viewer.js") as js:
            assert page.status == 200 and js.status == 200
            return await page.text(), await js.text()

    page, js = asyncio.run(fetch())
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert references and all(r.startswith("/static/") for r in references), references
    assert {Path(r).name for r in references} <= {p.name for p in static_dir().iterdir()}
    assert re.findall(r"https?://[^\s\"'`]+", js) == ["http://www.w3.org/2000/svg"]  # an SVG namespace, not a fetch


def test_pictures_flow_only_after_acknowledgement_and_show_the_newest_data(viewer):
    async def session() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(viewer.server.url + "ws") as ws:
            kind, hello = await _receive(ws, 5)
            assert kind == "hello" and hello["viewer"] == "viewer"
            kind, status = await _receive(ws, 5)
            assert kind == "status" and status["status"]["graph"]["name"] == "g"
            # Panels for connected inputs exist before any message, from the graph in status.json.
            assert [(p["stream"], p["kind"], p["received"]) for p in status["panels"]] == [
                ("src.events", "events", 0), ("cam.frames", "frame", 0)]

            viewer.process("in", _block_events(10, 10, 20, +1, width=64, height=48))
            header, picture = await _next_picture(ws)
            assert (header["stream"], header["kind"], picture.size) == ("src.events", "events", (64, 48))
            r, g, b = picture.convert("RGB").getpixel((20, 20))
            assert r > 200 and g < 60 and b < 60, (r, g, b)  # ON block: red
            assert picture.convert("RGB").getpixel((50, 40)) > (240, 240, 240)  # no events: white

            # Not acknowledged: newer data does not produce another picture for this panel.
            # 100 ms later: the first packet is out of the 33 ms event window.
            viewer.process("in", _block_events(10, 10, 20, -1, t0=100_000, width=64, height=48))
            deadline = time.monotonic() + 0.8  # 40 frame intervals at max_fps 50
            while (left := deadline - time.monotonic()) > 0:
                try:
                    kind, _ = await _receive(ws, left)
                except TimeoutError:
                    break
                assert kind != "picture"
            await ws.send_str(json.dumps({"type": "ack", "panel": header["panel"]}))
            header2, picture2 = await _next_picture(ws)
            assert header2["panel"] == header["panel"] and header2["version"] == 2
            r, g, b = picture2.convert("RGB").getpixel((20, 20))
            assert b > 200 and r < 60, (r, g, b)  # the newest packet (OFF) is what is shown

            frame = Message.from_frame(Frame(np.full((30, 40), 200, np.uint8), t=5))
            frame.stream = "cam.frames"
            viewer.process("in", frame)
            header3, picture3 = await _next_picture(ws)
            assert header3["stream"] == "cam.frames" and picture3.size == (40, 30)
            assert abs(picture3.convert("L").getpixel((5, 5)) - 200) <= 3

            await asyncio.to_thread(viewer.stop)
            kinds = []
            while (kind := (await _receive(ws, 5))[0]) != "closed":
                kinds.append(kind)
            assert "stopped" in kinds

    asyncio.run(session())


def test_websocket_from_another_site_is_refused(viewer):
    async def connect() -> int:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(viewer.server.url + "ws", headers={"Origin": "http://evil.example"})
            return exc.value.status

    assert asyncio.run(connect()) == 403


def test_requests_for_another_host_name_are_refused_on_loopback(viewer):
    async def fetch(host: str) -> int:
        async with aiohttp.ClientSession() as http, http.get(viewer.server.url, headers={"Host": host}) as page:
            return page.status

    port = viewer.server.url.rsplit(":", 1)[1].strip("/")
    assert asyncio.run(fetch(f"rebound.example:{port}")) == 403  # DNS rebinding: a foreign name for 127.0.0.1
    assert asyncio.run(fetch(f"localhost:{port}")) == 200


def test_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        node = Viewer("viewer", {"port": port})
        with pytest.raises(OSError, match=rf"viewer cannot listen on 127.0.0.1:{port}.*choose another port"):
            node.start()


def test_viewer_binds_loopback_by_default():
    assert Viewer.spec().params["bind"].default == "127.0.0.1"


# -- add_viewer and --view -----------------------------------------------------------------------
GRAPH = """\
name: g
nodes:
  src: {type: event_generator, params: {packets: 3}}
  filt: {type: event_filter}
  sink: {type: metrics}
edges:
  - src.events -> filt.events
  - filt.events -> sink.in
"""


def test_add_viewer_connects_every_drawable_output_with_latest_edges(tmp_path):
    (tmp_path / "g.yaml").write_text(GRAPH)
    graph = load_graph(tmp_path / "g.yaml")
    viewed = add_viewer(graph, port=9000)
    assert list(viewed.nodes) == ["src", "filt", "sink", "viewer"]  # it has a metrics sink: none added
    added = [e for e in viewed.edges if e.dst == "viewer"]
    assert [(e.id, e.policy, e.kind) for e in added] == [("src.events->viewer.in", "latest", "events"),
                                                         ("filt.events->viewer.in", "latest", "events")]
    assert len(graph.edges) == 2 and "viewer" not in graph.nodes  # the input graph is not changed
    assert viewer_urls(viewed) == ["http://127.0.0.1:9000/"]
    assert add_viewer(viewed) is viewed  # a graph with a viewer keeps it


def test_add_viewer_adds_a_metrics_sink_when_there_is_none(tmp_path):
    doc = {"name": "g", "nodes": {"src": {"type": "event_generator"}, "viewer": {"type": "event_filter"}},
           "edges": ["src.events -> viewer.events"]}
    viewed = add_viewer(build_graph(doc, tmp_path / "g.yaml"), port=0)
    assert list(viewed.nodes) == ["src", "viewer", "viewer2", "metrics"]  # names never collide
    assert {(e.id, e.policy) for e in viewed.edges if e.dst in ("viewer2", "metrics")} == {
        ("src.events->viewer2.in", "latest"), ("viewer.events->viewer2.in", "latest"),
        ("src.events->metrics.in", "latest"), ("viewer.events->metrics.in", "latest")}
    assert "PORT" in viewer_urls(viewed)[0]


def test_add_viewer_errors_are_clear(tmp_path):
    doc = {"name": "g", "hosts": {"a": {"address": "127.0.0.1"}, "b": {"address": "127.0.0.2"}},
           "nodes": {"src": {"type": "event_generator", "host": "a"}, "sink": {"type": "metrics", "host": "a"}},
           "edges": ["src.events -> sink.in"]}
    graph = build_graph(doc, tmp_path / "g.yaml")
    with pytest.raises(ConfigError, match="needs --host"):
        add_viewer(graph)
    with pytest.raises(ConfigError, match="no node has an events, frame or voxel output"):
        add_viewer(graph, host="b")
    viewed = add_viewer(graph, host="a")
    assert viewed.nodes["viewer"].host == "a" and not viewed.cross_host_edges()


def test_run_with_view_prints_the_url_and_the_viewer_listens(tmp_path):
    port = _free_port()
    config = tmp_path / "g.yaml"
    config.write_text(GRAPH.replace("packets: 3", "packets: 300, packet_events: 500, event_rate: 1.0e5, "
                                                  "pace: realtime"))
    proc = evpipe("run", str(config), "--view", "--view-port", str(port), "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    assert f"live viewer: http://127.0.0.1:{port}/" in proc.stderr
    assert f"live viewer at http://127.0.0.1:{port}/" in proc.stderr  # the node's own log line: it did listen
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["nodes"]["viewer"]["processed"] > 0
    into_viewer = [e for e in report["edges"] if e["edge"].endswith("->viewer.in")]
    assert len(into_viewer) == 2 and all(e["policy"] == "latest" and e["lost"] == 0 for e in into_viewer)
    assert report["latency"]["paths"]["src -> filt -> sink"]["count"] > 0


def test_view_on_a_multi_host_graph_without_host_is_a_usage_error(tmp_path):
    config = tmp_path / "g.yaml"
    config.write_text("name: g\nnodes:\n  src: {type: event_generator, host: a}\n  sink: {type: metrics, host: a}\n"
                      "hosts: {a: {address: 127.0.0.1}}\nedges:\n  - src.events -> sink.in\n")
    proc = evpipe("run", str(config), "--view")
    assert proc.returncode == 2 and "needs --host" in proc.stderr
