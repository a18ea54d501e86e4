"""The viewer's web server: aiohttp on its own asyncio loop in a thread of the viewer node's process.

One WebSocket per browser tab carries everything:

* server -> page, text: ``hello``; ``status`` (twice a second: the run's live status — graph, node
  states and restarts, edge counters, sliding-window latency — plus message rates per edge and panel
  list); ``stopped`` when the graph ends.
* server -> page, binary: a picture — 4-byte big-endian header length, a JSON header (panel id,
  version, stream, kind, size, data age...), then JPEG bytes.
* page -> server, text: ``{"type": "ack", "panel": id}`` once a picture is on screen.

Frame rate adapts on both sides: a tab gets a panel's next picture only after acknowledging the
previous one (a slow browser skips frames, nothing queues), and drawing is budgeted to a share of
one CPU core (``cpu_share``), so the graph never waits for the viewer or its browsers. A picture is
drawn once per new message and sent to every tab that is ready for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numba
from aiohttp import WSMsgType, web

from evpipe.nodes.sinks.viewer.panels import PanelStore, Picture
from evpipe.nodes.sinks.viewer.render import warm_up

log = logging.getLogger("evpipe.viewer")

STATUS_INTERVAL_S = 0.5
RATE_WINDOW_S = 2.0  # message rates on edges and panels are averaged over about this long
START_TIMEOUT_S = 10.0
MAX_BURST_S = 0.1  # drawing time that can be saved up while no picture is needed


def static_dir() -> Path:
    return Path(str(resources.files("evpipe.nodes.sinks.viewer").joinpath("static")))


@dataclass(eq=False)  # tabs are told apart by identity (kept in a set)
class _Tab:
    """One connected browser tab."""

    ws: web.WebSocketResponse
    awaiting: set[int] = field(default_factory=set)  # panels whose last picture is not acknowledged yet
    shown: dict[int, int] = field(default_factory=dict)  # panel -> newest version sent
    status_busy: bool = False  # a status message is still being written to this tab


class _Rates:
    """Messages per second of named counters, from (time, counts) samples over about RATE_WINDOW_S."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, dict[str, int]]] = deque()

    def update(self, t: float, counts: dict[str, int]) -> dict[str, float]:
        if not self.samples or t > self.samples[-1][0]:  # the same snapshot read twice adds nothing
            self.samples.append((t, counts))
            while len(self.samples) > 2 and t - self.samples[1][0] >= RATE_WINDOW_S:
                self.samples.popleft()
        (t0, old), (t1, new) = self.samples[0], self.samples[-1]
        if t1 <= t0:
            return {}
        return {k: max(0.0, (v - old.get(k, 0)) / (t1 - t0)) for k, v in new.items()}


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def is_loopback(address: str) -> bool:
    """Whether an address (IP literal or "localhost") is reachable from this host only."""
    return address == "localhost" or (_is_ip(address) and ipaddress.ip_address(address).is_loopback)


def _serial_kernels() -> None:
    """Drawing runs one picture at a time on one thread. Numba's parallel kernels would wake a thread per core
    for a small picture: on a busy machine that costs milliseconds and takes cores from the graph's nodes."""
    numba.set_num_threads(1)  # applies to the calling thread only


class ViewerServer:
    """Serves the page and streams pictures and status; ``start`` binds (or raises), ``stop`` says goodbye."""

    def __init__(self, store: PanelStore, *, viewer: str, bind: str, port: int, max_fps: float, cpu_share: float,
                 max_width: int, quality: int, status: Callable[[], dict[str, Any] | None]) -> None:
        self.store, self.viewer = store, viewer
        self.bind, self.port = bind, port
        self.frame_interval_s = 1.0 / max_fps
        self.cpu_share, self.max_width, self.quality = cpu_share, max_width, quality
        self.read_status = status
        self.url = ""
        self._tabs: set[_Tab] = set()
        self._pictures: dict[int, Picture] = {}
        self._drawn_at: dict[int, float] = {}
        self._budget_s, self._budget_at = 0.0, time.monotonic()  # drawing time available now, and when it was
        self._edge_rates, self._panel_rates = _Rates(), _Rates()
        self._declared: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._drawer = ThreadPoolExecutor(1, thread_name_prefix="viewer-draw", initializer=_serial_kernels)
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="viewer-server", daemon=True)

    # -- life cycle (called from the node's thread) -----------------------------------------------
    def start(self) -> str:
        """Bind and serve; returns the page's URL. Raises OSError naming the address when it cannot bind."""
        self._drawer.submit(warm_up).result()
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise RuntimeError(f"viewer server did not start within {START_TIMEOUT_S:.0f} s")
        if self._start_error is not None:
            self._drawer.shutdown(wait=False)
            raise self._start_error
        return self.url

    def stop(self, reason: str) -> None:
        """Tell every tab why the graph stopped, close the connections and the server."""
        if self._thread.is_alive() and self._stopping is not None:
            future = asyncio.run_coroutine_threadsafe(self._shutdown(reason), self._loop)
            with contextlib.suppress(Exception):
                future.result(5.0)
            self._thread.join(5.0)
        self._drawer.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._check_host])
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._websocket)
        app.router.add_static("/static", static_dir())
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.bind, self.port, reuse_address=True)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._start_error = OSError(exc.errno, f"viewer cannot listen on {self.bind}:{self.port}: {exc.strerror}"
                                        " — choose another port (param 'port', or --view-port; 0 = any free port)")
            self._started.set()
            return
        host, port = runner.addresses[0][:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        self._started.set()
        pump = asyncio.create_task(self._pump())
        await self._stopping.wait()
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        await runner.cleanup()

    async def _shutdown(self, reason: str) -> None:
        async def goodbye(tab: _Tab) -> None:
            with contextlib.suppress(Exception):
                await tab.ws.send_str(json.dumps({"type": "stopped", "reason": reason}))
                await tab.ws.close(code=1001, message=b"graph stopped")

        await asyncio.gather(*(goodbye(tab) for tab in list(self._tabs)))
        assert self._stopping is not None
        self._stopping.set()

    # -- HTTP ------------------------------------------------------------------------------------
    @web.middleware
    async def _check_host(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """On loopback, answer only requests addressed to an IP or localhost: a web page whose own domain name
        resolves to 127.0.0.1 (DNS rebinding) must not read the streams through the user's browser."""
        hostname = urlsplit(f"//{request.host}").hostname or ""
        if is_loopback(self.bind) and hostname != "localhost" and not _is_ip(hostname):
            raise web.HTTPForbidden(text=f"this viewer answers to 127.0.0.1 or localhost, not {hostname}")
        return await handler(request)

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-store"})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        # A page from another site must not read the streams through the user's browser.
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text=f"origin {origin} is not this viewer ({request.host})")
        # JPEG does not compress further: permessage-deflate would only cost CPU.
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=1 << 16, compress=False, timeout=2.0)
        await ws.prepare(request)
        tab = _Tab(ws)
        self._tabs.add(tab)
        try:
            await ws.send_str(json.dumps({"type": "hello", "viewer": self.viewer,
                                          "frame_interval_s": self.frame_interval_s}))
            self._send_status(tab, self._status_message())
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(data, dict) and data.get("type") == "ack" and isinstance(data.get("panel"), int):
                    tab.awaiting.discard(data["panel"])
        finally:
            self._tabs.discard(tab)
        return ws

    # -- pictures and status -----------------------------------------------------------------------
    async def _pump(self) -> None:
        """Every frame interval: draw what some tab is ready for, send it; twice a second: status."""
        next_status = next_tick = 0.0
        while True:
            next_tick = max(next_tick + self.frame_interval_s, time.monotonic())
            await asyncio.sleep(next_tick - time.monotonic())
            if not self._tabs:
                continue
            try:
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + STATUS_INTERVAL_S
                    message = self._status_message()
                    for tab in list(self._tabs):
                        self._send_status(tab, message)
                await self._send_pictures()
            except Exception:  # a bug in one picture or status must not end the live view; it is logged
                log.exception("viewer: drawing or sending failed")

    async def _send_pictures(self) -> None:
        # Least recently drawn first, so that when the CPU budget allows few drawings every panel gets its turn.
        for panel_id, version in sorted(self.store.versions(), key=lambda pv: self._drawn_at.get(pv[0], 0.0)):
            ready = [t for t in self._tabs if panel_id not in t.awaiting and t.shown.get(panel_id, 0) < version]
            if not ready:
                continue
            picture = await self._picture(panel_id, version)
            if picture is None:
                continue
            header = json.dumps({"panel": panel_id, "version": picture.version, **picture.info}).encode()
            payload = struct.pack(">I", len(header)) + header + picture.jpeg
            for tab in ready:
                if tab.shown.get(panel_id, 0) < picture.version:
                    tab.awaiting.add(panel_id)
                    tab.shown[panel_id] = picture.version
                    self._spawn(tab.ws.send_bytes(payload))

    async def _picture(self, panel_id: int, version: int) -> Picture | None:
        """The panel's newest picture, drawn now if it is stale and the CPU budget allows."""
        cached = self._pictures.get(panel_id)
        if cached is not None and cached.version >= version:
            return cached
        # Token bucket: drawing time accrues at cpu_share seconds per second (a burst of at most MAX_BURST_S).
        now = time.monotonic()
        self._budget_s = min(MAX_BURST_S, self._budget_s + (now - self._budget_at) * self.cpu_share)
        self._budget_at = now
        if self._budget_s <= 0.0:
            return cached
        picture = await self._loop.run_in_executor(self._drawer, self.store.draw, panel_id, self.max_width,
                                                   self.quality)
        self._budget_s -= time.monotonic() - now  # wall time of a drawing bounds its CPU time
        self._pictures[panel_id] = picture
        self._drawn_at[panel_id] = now
        return picture

    def _status_message(self) -> str:
        status = self.read_status()
        if status is not None:
            for edge in status["graph"]["edges"]:
                stream = edge["id"].split("->")[0]
                if edge["dst"] == self.viewer and stream not in self._declared:
                    self._declared.add(stream)
                    self.store.declare(stream, edge["kind"])
        panels = self.store.describe()
        edge_rates = {}
        if status is not None:
            edge_rates = self._edge_rates.update(float(status["elapsed_s"]), {e["edge"]: e["sent"]
                                                                             for e in status["edges"]})
        panel_rates = self._panel_rates.update(time.monotonic(), {str(p["id"]): p["received"] for p in panels})
        for p in panels:
            p["rate"] = panel_rates.get(str(p["id"]))
        return json.dumps({"type": "status", "status": status, "edge_rates": edge_rates, "panels": panels})

    def _send_status(self, tab: _Tab, message: str) -> None:
        if tab.status_busy:  # a slow tab skips status updates rather than queueing them
            return
        tab.status_busy = True

        async def send() -> None:
            try:
                await tab.ws.send_str(message)
            finally:
                tab.status_busy = False

        self._spawn(send())

    def _spawn(self, coro: Any) -> None:
        """Run a send in the background; a tab that went away just stops receiving."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a browser tab went away: %s", task.exception())
