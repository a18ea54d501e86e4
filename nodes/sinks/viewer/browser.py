"""Headless Chromium over the DevTools protocol: open pages, read them, take screenshots.

Used by the viewer's end-to-end tests and to take the README's screenshot::

    python -m evpipe.nodes.sinks.viewer.browser http://127.0.0.1:8765/ viewer.png --wait-panels 3

It drives the system's Chromium (Debian's ``chromium`` package, ``/usr/bin/chromium``) through one
DevTools WebSocket with flattened target sessions; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
LAUNCH_TIMEOUT_S = 30.0
# Flags that work in containers and CI: no sandbox (root), no GPU, no network chatter of its own.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--hide-scrollbars",
         "--remote-debugging-port=0")


class BrowserError(RuntimeError):
    """Chromium is missing, did not start, or a DevTools command failed."""


def find_chromium() -> str | None:
    """Path of a Chromium executable, or None."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """A headless Chromium process and its DevTools connection; use ``async with Chromium() as browser``."""

    def __init__(self, executable: str | None = None, window: tuple[int, int] = (1600, 1000)) -> None:
        executable = executable or find_chromium()
        if executable is None:
            raise BrowserError(f"Chromium not found at {CHROMIUM} or on PATH (Debian: apt-get install chromium)")
        self.executable, self.window = executable, window
        self.profile = Path(tempfile.mkdtemp(prefix="evpipe-chromium-"))
        self.process: subprocess.Popen | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> Chromium:
        log = (self.profile / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            [self.executable, *FLAGS, f"--window-size={self.window[0]},{self.window[1]}",
             f"--user-data-dir={self.profile}", "about:blank"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.profile / "chromium.log").read_text(errors="replace")[-2000:]
                await self.close()
                raise BrowserError(f"Chromium did not start (exit {self.process.returncode}):\n{tail}")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=256 << 20)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Quit Chromium (the way a user closes the browser: every tab's connection ends)."""
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
        for future in self._pending.values():
            future.set_exception(BrowserError("the DevTools connection closed"))

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
                   timeout: float = 30.0) -> dict[str, Any]:
        """One DevTools command; returns its result or raises BrowserError with the protocol's message."""
        if self._ws is None:
            raise BrowserError("Chromium is not running")
        command_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        message = {"id": command_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply["result"]

    async def open(self, url: str, new_window: bool = False) -> Tab:
        """A new tab showing ``url`` (returns once the page has loaded). Only the front tab of a window is visible
        to the page (``document.hidden`` is true in the others); ``new_window`` gives the page a window of its own."""
        target = (await self.send("Target.createTarget", {"url": "about:blank", "newWindow": new_window}))["targetId"]
        session = (await self.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        tab = Tab(self, target, session)
        await self.send("Page.enable", session=session)
        await self.send("Page.navigate", {"url": url}, session=session)
        await tab.wait_for("document.readyState === 'complete'", timeout=30.0)
        return tab


class Tab:
    """One page of a :class:`Chromium`."""

    def __init__(self, browser: Chromium, target: str, session: str) -> None:
        self.browser, self.target, self.session = browser, target, session

    async def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression (JSON-serialisable), or BrowserError with the page's exception."""
        result = await self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                              "awaitPromise": True}, self.session)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression[:80]}: {details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, interval: float = 0.1) -> Any:
        """Poll until ``expression`` is truthy; returns its value, or raises TimeoutError saying what it waited for."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"page did not satisfy {expression!r} within {timeout:.0f} s")
            await asyncio.sleep(interval)

    async def screenshot(self, selector: str | None = None) -> bytes:
        """PNG of one element (``selector``) or of the whole page."""
        if selector is None:
            size = await self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            clip = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        else:
            box = await self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                                      ".getBoundingClientRect(); return [r.x + scrollX, r.y + scrollY, r.width, "
                                      "r.height]; })()")
            clip = {"x": box[0], "y": box[1], "width": box[2], "height": box[3], "scale": 1}
        result = await self.browser.send("Page.captureScreenshot", {"format": "png", "clip": clip,
                                                                    "captureBeyondViewport": True}, self.session)
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        with contextlib.suppress(BrowserError):
            await self.browser.send("Target.closeTarget", {"targetId": self.target})


async def _capture(url: str, out: Path, panels: int, settle_s: float, timeout: float) -> None:
    async with Chromium() as browser:
        tab = await browser.open(url)
        await tab.wait_for("[...document.querySelectorAll('.panel .shown')].filter(e => e.dataset.count > 0)"
                           f".length >= {panels} && "
                           "document.querySelector('#paths tbody tr') !== null", timeout)
        await asyncio.sleep(settle_s)
        out.write_bytes(await tab.screenshot())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot a running evpipe viewer page with headless Chromium.")
    parser.add_argument("url", help="the viewer's URL, e.g. http://127.0.0.1:8765/")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--wait-panels", type=int, default=1, help="wait until this many panels show a picture")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait after that (s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this long (s)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_capture(args.url, args.out, args.wait_panels, args.settle, args.timeout))
    except (BrowserError, TimeoutError, aiohttp.ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
