"""The live viewer in a real browser: a real graph, headless Chromium, assertions on what the page shows.

One run of about 45 s: the page's panels, pictures that change, latency numbers equal to the run's own
status, the graph drawing, five tabs and a closed browser measured against no browser at all, a node
restart, a viewer restart, and the stop message. A screenshot and the measurements are saved under
out/test-artifacts/viewer/.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evpipe.nodes.sinks.viewer.browser import Chromium, Tab, find_chromium
from evpipe.runtime.status import read_status
from tests.conftest import REPO, TESTS
from tests.test_runtime_graphs import _pids_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_chromium() is None,
                       reason="Chromium not installed (/usr/bin/chromium; Debian: apt-get install chromium)"),
]

ARTIFACTS = REPO / "out" / "test-artifacts" / "viewer"
PATH = "src -> filt -> sink"
RATE = 100.0  # messages per second: 2000-event packets every 10 ms of sensor time, paced in real time
WARMUP = 5  # the metrics sink's default: its first messages are not in the latency series
PHASE_S = 5.0
GRAPH = f"""\
name: viewer-e2e
nodes:
  src: {{type: event_generator, params: {{packets: 9000, packet_events: 2000, event_rate: {RATE * 2000},
        pace: realtime}}}}
  filt: {{type: event_filter}}
  sink: {{type: metrics, params: {{warmup: {WARMUP}, live_interval_s: 0.5}}}}
edges:
  - src.events -> filt.events
  - filt.events -> sink.in
"""

# What the page shows, read from its DOM.
READ_PAGE = """(() => {
  const text = (root, sel) => { const e = root.querySelector(sel); return e ? e.textContent : null; };
  const row = document.querySelector('#paths tr[data-path="PATH"]');
  return {
    elapsed: text(document, '#elapsed'),
    path: row && Object.fromEntries(['count', 'p50', 'p90', 'p99', 'max'].map(k => [k, text(row, '.' + k)])),
    edges: Object.fromEntries([...document.querySelectorAll('#edges tbody tr')].map(r =>
      [r.dataset.edge, {sent: text(r, '.sent'), dropped: text(r, '.dropped'), policy: text(r, '.policy')}])),
    nodes: Object.fromEntries([...document.querySelectorAll('#nodes tbody tr')].map(r =>
      [r.dataset.node, {restarts: text(r, '.restarts'), queue_p50: text(r, '.queue-p50')}])),
    panels: [...document.querySelectorAll('.panel')].map(p => ({stream: p.dataset.stream, kind: p.dataset.kind,
      shown: Number(p.querySelector('.shown').dataset.count), loaded: p.querySelector('img').naturalWidth > 0})),
    graph_nodes: [...document.querySelectorAll('#graph g.node')].map(g => g.dataset.node),
    graph_edges: Object.fromEntries([...document.querySelectorAll('#graph g.edge')].map(g =>
      [g.dataset.edge, g.querySelector('text').textContent])),
    messages: [...document.querySelectorAll('#banner .message')].map(m => [m.dataset.kind, m.textContent]),
    state: document.querySelector('#run-state').dataset.state,
  };
})()""".replace("PATH", PATH)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GraphRun:
    """`evpipe run --view` in a subprocess, with every status.json snapshot it writes, keyed by elapsed time."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        config = tmp_path / "graph.yaml"
        config.write_text(GRAPH)
        runs = tmp_path / "runs"  # the supervisor's run directory goes here, so the test can read status.json
        runs.mkdir()
        self.report_path = tmp_path / "report.json"
        self.log = (tmp_path / "run.log").open("w")
        env = {**os.environ, "TMPDIR": str(runs), "PYTHONPATH": str(TESTS)}
        self.proc = subprocess.Popen([sys.executable, "-m", "evpipe.runtime.cli", "run", str(config), "--view",
                                      "--view-port", str(port), "--report", str(self.report_path)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.runs = runs
        self.snapshots: dict[str, dict] = {}  # f"{elapsed_s:.1f} s" (as the page shows it) -> snapshot
        self.latest: dict | None = None

    async def poll_status(self) -> None:
        while self.proc.poll() is None:
            for run_dir in self.runs.glob("evp-*"):
                status = read_status(run_dir)
                if status is not None:
                    self.latest = status
                    self.snapshots.setdefault(f"{status['elapsed_s']:.1f} s", status)
            await asyncio.sleep(0.05)

    async def wait_status(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while not (self.latest is not None and predicate(self.latest)):
            assert self.proc.poll() is None, f"the graph exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.output()}"
            await asyncio.sleep(0.1)
        return self.latest

    def delivered(self) -> tuple[int, float]:
        """Messages the metrics sink has processed (its input edge's counter), and the snapshot's elapsed time."""
        assert self.latest is not None
        processed = next(e["processed"] for e in self.latest["edges"] if e["edge"] == "filt.events->sink.in")
        return processed, self.latest["elapsed_s"]

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-5000:]


async def _screenshot_array(tab: Tab, selector: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(await tab.screenshot(selector))).convert("RGB"), dtype=np.int16)


async def _open_viewer(browser: Chromium, url: str, streams: set[str]) -> Tab:
    tab = await browser.open(url)
    await tab.wait_for(f"document.querySelectorAll('.panel img[src]').length >= {len(streams)} && "
                       f"document.querySelector('#paths tr[data-path=\"{PATH}\"]') !== null", timeout=30)
    return tab


def _phase_latency(report: dict, first: int, last: int) -> dict[str, float]:
    """p50/p99 (ms) of the messages the sink received between two delivered-counter readings."""
    series = np.asarray(report["latency"]["paths"][PATH]["series_ms"])
    chunk = series[max(0, first - WARMUP):max(0, last - WARMUP)]
    return {"messages": len(chunk), "p50_ms": float(np.percentile(chunk, 50)),
            "p99_ms": float(np.percentile(chunk, 99))}


async def _measure_phase(run: GraphRun, name: str, phases: dict, seconds: float = PHASE_S) -> None:
    start = run.delivered()
    await asyncio.sleep(seconds)
    _record(phases, name, start, run.delivered())


def _record(phases: dict, name: str, start: tuple[int, float], end: tuple[int, float]) -> None:
    phases[name] = {"first": start[0], "last": end[0], "seconds": end[1] - start[1]}


async def _scenario(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    run = GraphRun(tmp_path, port)
    poller = asyncio.create_task(run.poll_status())
    streams = {"src.events", "filt.events"}
    phases: dict[str, dict] = {}
    try:
        await run.wait_status(lambda s: s["state"] == "running" and s["latency"], 60, "the graph to run")
        await asyncio.sleep(2.0)  # past start-up

        # -- A: no browser at all ---------------------------------------------------------------------
        await _measure_phase(run, "no_browser", phases)

        # -- B: one tab; what the page shows -----------------------------------------------------------
        async with Chromium(window=(1600, 1000)) as browser:
            tab = await _open_viewer(browser, url, streams)
            page = await tab.evaluate(READ_PAGE)
            assert {(p["stream"], p["kind"]) for p in page["panels"]} == {(s, "events") for s in streams}
            assert all(p["loaded"] for p in page["panels"]), page["panels"]

            selector = '.panel[data-stream="filt.events"] img'
            first = await _screenshot_array(tab, selector)
            await asyncio.sleep(1.0)
            second = await _screenshot_array(tab, selector)
            assert first.shape == second.shape and first.shape[0] > 100, first.shape
            assert (first < 200).any(axis=2).mean() > 0.01, "the event picture is blank"
            changed = np.abs(first - second).mean()
            assert changed > 3.0, f"the event picture did not change in 1 s (mean abs difference {changed:.2f})"

            # Latency, edge and node numbers equal the run's status snapshot the page is showing.
            compared = 0
            for _ in range(40):
                page = await tab.evaluate(READ_PAGE)
                snapshot = run.snapshots.get(page["elapsed"] or "")
                if snapshot is not None and page["path"] is not None:
                    expected = snapshot["latency"]["paths"][PATH]
                    assert page["path"] == {"count": str(expected["count"]),
                                            **{k: f"{expected[k]:.2f}" for k in ("p50", "p90", "p99", "max")}}
                    for edge in snapshot["edges"]:
                        assert page["edges"][edge["edge"]] == {"sent": str(edge["sent"]),
                                                               "dropped": str(edge["dropped"]),
                                                               "policy": edge["policy"]}
                    for node, info in snapshot["nodes"].items():
                        assert page["nodes"][node]["restarts"] == str(info["restarts"])
                    compared += 1
                await asyncio.sleep(0.25)
            assert compared >= 10, f"the page matched only {compared} of 40 status snapshots"
            page_latency = page["path"]

            # The graph: every node and edge, each edge with its policy and a live rate.
            graph = run.latest["graph"]
            assert sorted(page["graph_nodes"]) == sorted(graph["nodes"])
            assert set(page["graph_edges"]) == {e["id"] for e in graph["edges"]}
            for edge in graph["edges"]:
                label = page["graph_edges"][edge["id"]]
                match = re.fullmatch(r"(lossless|latest) · ([\d.]+) msg/s", label)
                assert match and match[1] == edge["policy"], label
                if edge["policy"] == "lossless":
                    assert abs(float(match[2]) - RATE) < 0.2 * RATE, label
            (ARTIFACTS / "viewer_page.png").write_bytes(await tab.screenshot())
            await _measure_phase(run, "one_tab", phases)

            # -- C: five tabs -------------------------------------------------------------------------
            tabs = [tab] + [await _open_viewer(browser, url, streams) for _ in range(4)]
            shown_before = [sum(p["shown"] for p in (await t.evaluate(READ_PAGE))["panels"]) for t in tabs]
            await _measure_phase(run, "five_tabs", phases)
            pages = [await t.evaluate(READ_PAGE) for t in tabs]
            shown_after = [sum(p["shown"] for p in page["panels"]) for page in pages]
            live_latency = [page_latency, pages[0]["path"]]  # steady state with one tab and with five
            fps = [(a - b) / PHASE_S / len(streams) for a, b in zip(shown_after, shown_before, strict=True)]
            assert min(fps) > 2.0, f"pictures per second per panel in each of five tabs: {fps}"

        # -- D: browser closed ---------------------------------------------------------------------------
        await _measure_phase(run, "browser_closed", phases)
        lossless = [e for e in run.latest["edges"] if e["policy"] == "lossless"]
        assert all(e["dropped"] == 0 and e["rejected"] == 0 for e in lossless), lossless

        # -- a node restart, a viewer restart, the end of the graph ----------------------------------------
        async with Chromium() as browser:
            tab = await _open_viewer(browser, url, streams)
            for pid in _pids_of("filt"):
                os.kill(pid, signal.SIGKILL)
            text = await tab.wait_for("[...document.querySelectorAll('#banner .message[data-kind=restart]')]"
                                      ".map(m => m.textContent).join(' | ')", timeout=20)
            assert "Node 'filt' crashed and was restarted (restart 1)" in text, text
            assert await tab.wait_for("document.querySelector('#nodes tr[data-node=filt] .restarts')"
                                      ".textContent === '1'", timeout=10)

            for pid in _pids_of("viewer"):
                os.kill(pid, signal.SIGKILL)
            text = await tab.wait_for("document.querySelector('#banner .message[data-kind=disconnected]')"
                                      "?.textContent", timeout=10)
            assert "Lost the connection to the viewer" in text
            await tab.wait_for("document.querySelector('#banner .message[data-kind=reconnected]') !== null && "
                               f"document.querySelectorAll('.panel img[src]').length >= {len(streams)}", timeout=40)

            run.proc.send_signal(signal.SIGINT)  # like Ctrl-C: the sources stop, the graph drains
            text = await tab.wait_for("document.querySelector('#banner .message[data-kind=stopped]')?.textContent",
                                      timeout=30)
            assert "Graph stopped" in text
            assert (await tab.evaluate(READ_PAGE))["state"] == "stopped"
            (ARTIFACTS / "viewer_stopped.png").write_bytes(await tab.screenshot())
        assert run.proc.wait(60) == 0, run.output()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        poller.cancel()
        run.log.close()

    # Tabs and a closed browser change nothing for delivery or latency.
    report = json.loads(run.report_path.read_text())
    measured = {name: {**_phase_latency(report, p["first"], p["last"]),
                       "delivered_per_s": (p["last"] - p["first"]) / p["seconds"]} for name, p in phases.items()}
    (ARTIFACTS / "tabs_effect.json").write_text(json.dumps(measured, indent=1))
    print(json.dumps(measured, indent=1))
    baseline = measured["no_browser"]
    for name, m in measured.items():
        assert abs(m["delivered_per_s"] - RATE) < 0.05 * RATE, (name, m)
        assert m["p50_ms"] <= 2.0 * baseline["p50_ms"] + 1.0, (name, m, baseline)

    # The page's live p50 (a 5 s window) against the whole run's in the final report: the same within noise.
    final = report["latency"]["paths"][PATH]
    for shown in live_latency:
        assert abs(float(shown["p50"]) - final["p50"]) <= max(1.0, 0.5 * final["p50"]), (shown, final)


def test_viewer_in_a_real_browser(tmp_path):
    asyncio.run(_scenario(tmp_path))
