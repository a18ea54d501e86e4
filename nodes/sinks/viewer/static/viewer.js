// evpipe live viewer: one WebSocket carries status (JSON text) and pictures (binary); see server.py.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const RECONNECT_MS = 1000;
const FPS_WINDOW_MS = 2000;

const view = {
  ws: null,
  connectedOnce: false,
  stopped: false,
  panels: new Map(),      // panel id -> {id, el, canvas, shownTimes[], shown}
  restarts: null,         // node -> restarts seen so far (null until the first status)
  deferredAcks: new Set(), // panels whose acknowledgement waits for a hidden tab to be shown
  graphKey: "",
  viewer: "",
};

const $ = (sel) => document.querySelector(sel);
const fmt = (v, digits = 2) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits));
const clock = () => new Date().toLocaleTimeString();

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// -- messages at the top ---------------------------------------------------------------------------
function showMessage(kind, text, { replace = true, timeoutMs = 0 } = {}) {
  const banner = $("#banner");
  if (replace) banner.querySelectorAll(`.message[data-kind="${kind}"]`).forEach((m) => m.remove());
  const message = el("div", { class: "message", "data-kind": kind }, el("time", {}, clock()), text);
  banner.prepend(message);
  const same = banner.querySelectorAll(`.message[data-kind="${kind}"]`);
  for (let i = 5; i < same.length; i++) same[i].remove();
  if (timeoutMs) setTimeout(() => message.remove(), timeoutMs);
}

function clearMessages(...kinds) {
  for (const kind of kinds) $("#banner").querySelectorAll(`.message[data-kind="${kind}"]`).forEach((m) => m.remove());
}

function setState(state) {
  const badge = $("#run-state");
  badge.dataset.state = state;
  badge.textContent = state;
}

// -- connection ------------------------------------------------------------------------------------
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  view.ws = ws;
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onText(JSON.parse(event.data));
    else onPicture(event.data);
  };
  ws.onclose = () => {
    view.ws = null;
    if (view.stopped) {
      setState("stopped");
    } else if (view.connectedOnce) {
      setState("disconnected");
      showMessage("disconnected", "Lost the connection to the viewer: the graph has stopped or the viewer node " +
        "crashed (a restarted viewer reconnects by itself). The last pictures stay on screen.");
    }
    setTimeout(connect, view.stopped ? 4 * RECONNECT_MS : RECONNECT_MS);
  };
}

function onText(msg) {
  if (msg.type === "hello") {
    if (view.connectedOnce) {
      // A new viewer process (restarted, or a new run on this port): its panels start afresh.
      for (const p of view.panels.values()) p.el.remove();
      view.panels.clear();
      clearMessages("disconnected", "stopped");
      showMessage("reconnected", `Connected to viewer '${msg.viewer}' again.`, { timeoutMs: 8000 });
    }
    view.connectedOnce = true;
    view.stopped = false;
    view.viewer = msg.viewer;
  } else if (msg.type === "status") {
    onStatus(msg);
  } else if (msg.type === "stopped") {
    view.stopped = true;
    setState("stopped");
    clearMessages("stopping", "disconnected");
    showMessage("stopped", `Graph stopped: ${msg.reason}. The last pictures and numbers stay on screen.`);
  }
}

// -- pictures --------------------------------------------------------------------------------------
function ensurePanel(id, stream, kind) {
  let panel = view.panels.get(id);
  if (panel) return panel;
  const canvas = el("canvas", { width: 0, height: 0, role: "img", "aria-label": `${stream} (${kind})` });
  const figure = el("figure", { class: "panel", "data-panel": id, "data-stream": stream, "data-kind": kind },
    el("figcaption", {}, el("span", { class: "name" }, stream), el("span", { class: "kind" }, kind)),
    el("div", { class: "frame" }, canvas, el("div", { class: "placeholder" }, "waiting for the first message…")),
    el("div", { class: "stats" },
      el("span", { class: "rate" }, "– msg/s in"), el("span", { class: "fps" }, "– fps shown"),
      el("span", { class: "age" }), el("span", { class: "detail" }),
      el("span", { class: "shown", "data-count": "0" }, "0 shown")),
    el("div", { class: "error" }));
  panel = { id, el: figure, canvas, shownTimes: [], shown: 0 };
  view.panels.set(id, panel);
  const container = $("#panels");
  const after = [...container.children].find((c) => Number(c.dataset.panel) > id);
  container.insertBefore(figure, after || null);
  return panel;
}

// Pictures are decoded off the main thread (createImageBitmap) and drawn on a canvas: a panel never flashes
// empty, and no image element or URL is made per picture. The server sends this panel's next picture only after
// the acknowledgement, which is what paces a slow browser.
async function showPicture(panel, blob) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch {
    acknowledge(panel);
    return;
  }
  const canvas = panel.canvas;
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
  panel.el.dataset.shown = "yes";
  panel.shown += 1;
  const now = performance.now();
  panel.shownTimes.push(now);
  while (panel.shownTimes.length && panel.shownTimes[0] < now - FPS_WINDOW_MS) panel.shownTimes.shift();
  const shown = panel.el.querySelector(".shown");
  shown.dataset.count = String(panel.shown);
  shown.textContent = `${panel.shown} shown`;
  panel.el.querySelector(".fps").textContent =
    `${fmt(panel.shownTimes.length / (FPS_WINDOW_MS / 1000), 1)} fps shown`;
  acknowledge(panel);
}

// A hidden tab (another tab in front, a minimised window) asks for nothing until it is shown again.
function acknowledge(panel) {
  if (document.hidden) {
    view.deferredAcks.add(panel);
  } else if (view.ws && view.ws.readyState === WebSocket.OPEN) {
    view.ws.send(JSON.stringify({ type: "ack", panel: panel.id }));
  }
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) return;
  const waiting = [...view.deferredAcks];
  view.deferredAcks.clear();
  waiting.forEach(acknowledge);
});

function onPicture(buffer) {
  const headerLength = new DataView(buffer).getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, headerLength)));
  const panel = ensurePanel(header.panel, header.stream, header.kind);
  showPicture(panel, new Blob([new Uint8Array(buffer, 4 + headerLength)], { type: "image/jpeg" }));
  const figure = panel.el;
  figure.querySelector(".age").textContent = `data age ${fmt(header.age_ms, 1)} ms`;
  let detail = `${header.width}×${header.height}`;
  if (header.kind === "events") detail += ` · ${header.events} events in ${fmt(header.window_ms, 1)} ms`;
  if (header.kind === "voxel") detail += ` · ${header.bins} bins`;
  figure.querySelector(".detail").textContent = detail;
  figure.querySelector(".error").textContent = header.error || "";
}

// -- status: header, latency, nodes, edges, graph ----------------------------------------------------
function onStatus(msg) {
  for (const p of msg.panels) {
    const panel = ensurePanel(p.id, p.stream, p.kind);
    panel.el.querySelector(".rate").textContent = `${fmt(p.rate, 1)} msg/s in`;
  }
  const status = msg.status;
  if (!status) {
    $("#graph-name").textContent = "no run status (this viewer is not inside `evpipe run`)";
    return;
  }
  $("#graph-name").textContent = status.graph.name;
  $("#elapsed").textContent = `${fmt(status.elapsed_s, 1)} s`;
  if (!view.stopped) setState(status.state);
  if (status.state === "stopping") showMessage("stopping", "Graph is stopping (interrupted): sources stopped, the graph drains.");
  if (status.state === "failed") showMessage("failed", "Graph failed: a node crashed more often than max_restarts.");
  noteRestarts(status.nodes);
  renderLatency(status.latency, status.nodes);
  renderEdges(status.edges, msg.edge_rates);
  renderGraph(status.graph, status.nodes, msg.edge_rates);
  const paths = Object.values((status.latency && status.latency.paths) || {});
  const throughput = paths.reduce((s, p) => s + (p.msgs_s || 0), 0);
  const dropped = status.edges.reduce((s, e) => s + e.dropped, 0);
  const lost = status.edges.reduce((s, e) => s + (e.lost || 0), 0);
  const restarts = Object.values(status.nodes).reduce((s, n) => s + n.restarts, 0);
  $("#summary").textContent =
    `throughput ${fmt(throughput, 1)} msg/s · dropped ${dropped} · lost ${lost} · restarts ${restarts}`;
}

function noteRestarts(nodes) {
  const first = view.restarts === null;
  view.restarts = view.restarts || {};
  for (const [name, info] of Object.entries(nodes)) {
    const before = view.restarts[name] || 0;
    if (info.restarts > before) {
      showMessage("restart", first
        ? `Node '${name}' has restarted ${info.restarts} time(s) in this run; it is ${info.state}.`
        : `Node '${name}' crashed and was restarted (restart ${info.restarts}); it is ${info.state}.`,
      { replace: false });
    }
    view.restarts[name] = info.restarts;
  }
}

function cells(row, values) {
  for (const [cls, text] of values) row.append(el("td", { class: cls }, text));
  return row;
}

function renderLatency(latency, nodes) {
  const body = $("#paths tbody");
  body.replaceChildren();
  const paths = (latency && latency.paths) || {};
  $("#no-latency").hidden = Object.keys(paths).length > 0;
  $("#latency-window").textContent = latency ? `(last ${fmt(latency.window_s, 0)} s)` : "";
  for (const [path, s] of Object.entries(paths)) {
    body.append(cells(el("tr", { "data-path": path }), [
      ["path", path], ["count", String(s.count)], ["p50", fmt(s.p50)], ["p90", fmt(s.p90)], ["p99", fmt(s.p99)],
      ["max", fmt(s.max)], ["rate", fmt(s.msgs_s, 1)]]));
  }
  const perNode = (latency && latency.nodes) || {};
  const bars = $("#bars");
  bars.replaceChildren();
  const total = (n) => (n.queue.p50 || 0) + (n.compute.p50 || 0);
  const scale = Math.max(1e-9, ...Object.values(perNode).map(total));
  for (const [name, n] of Object.entries(perNode)) {
    const q = n.queue.p50 || 0;
    const c = n.compute.p50 || 0;
    bars.append(el("div", { class: "row", "data-node": name }, el("span", { class: "label" }, name),
      el("div", { class: "bar" },
        el("span", { class: "queue", style: `width:${(100 * q) / scale}%`, title: `queueing p50 ${fmt(q)} ms` }),
        el("span", { class: "compute", style: `width:${(100 * c) / scale}%`, title: `compute p50 ${fmt(c)} ms` })),
      el("span", { class: "value" }, `${fmt(q + c)} ms`)));
  }
  const table = $("#nodes tbody");
  table.replaceChildren();
  for (const [name, info] of Object.entries(nodes)) {
    const n = perNode[name] || { queue: {}, compute: {} };
    table.append(cells(el("tr", { "data-node": name }), [
      ["name", name], ["state", info.state], ["queue-p50", fmt(n.queue.p50)], ["queue-p99", fmt(n.queue.p99)],
      ["compute-p50", fmt(n.compute.p50)], ["compute-p99", fmt(n.compute.p99)],
      [info.restarts ? "restarts bad" : "restarts", String(info.restarts)], ["processed", String(info.processed)]]));
  }
}

function renderEdges(edges, rates) {
  const body = $("#edges tbody");
  body.replaceChildren();
  for (const e of edges) {
    body.append(cells(el("tr", { "data-edge": e.edge }), [
      ["edge", e.edge], ["policy", e.policy], ["rate", fmt(rates[e.edge], 1)], ["sent", String(e.sent)],
      ["processed", String(e.processed)], ["dropped", String(e.dropped)],
      [e.rejected ? "rejected bad" : "rejected", String(e.rejected)],
      ["lost", e.lost === null ? "–" : String(e.lost)]]));
  }
}

// Columns by longest path from the sources; rows ordered by the mean row of each node's inputs. Each edge
// has its own anchor on both boxes, so edges sharing a node stay apart and their labels do not overlap.
const BOX_W = 128, MIN_H = 40, ANCHOR_GAP = 24, GAP_X = 150, GAP_Y = 26, PAD = 10;

function layoutGraph(graph) {
  const names = Object.keys(graph.nodes);
  const column = Object.fromEntries(names.map((n) => [n, 0]));
  for (let i = 0; i < names.length; i++) {
    for (const e of graph.edges) column[e.dst] = Math.max(column[e.dst], column[e.src] + 1);
  }
  const columns = [];
  for (const n of names) (columns[column[n]] = columns[column[n]] || []).push(n);
  const row = {};
  columns.forEach((members, c) => {
    if (c > 0) {
      const mean = (n) => {
        const inputs = graph.edges.filter((e) => e.dst === n).map((e) => row[e.src]);
        return inputs.length ? inputs.reduce((a, b) => a + b, 0) / inputs.length : 0;
      };
      members.sort((a, b) => mean(a) - mean(b));
    }
    members.forEach((n, r) => { row[n] = r + c * 1e-3; });
  });
  const outs = {}, ins = {};
  for (const n of names) {
    outs[n] = graph.edges.filter((e) => e.src === n).sort((a, b) => row[a.dst] - row[b.dst]);
    ins[n] = graph.edges.filter((e) => e.dst === n).sort((a, b) => row[a.src] - row[b.src]);
  }
  const height = (n) => Math.max(MIN_H, ANCHOR_GAP * (Math.max(outs[n].length, ins[n].length) + 1));
  const columnHeight = (members) => members.reduce((s, n) => s + height(n), 0) + (members.length - 1) * GAP_Y;
  const tallest = Math.max(...columns.map(columnHeight));
  const box = {};
  columns.forEach((members, c) => {
    let y = PAD + (tallest - columnHeight(members)) / 2;
    for (const n of members) {
      box[n] = { x: PAD + c * (BOX_W + GAP_X), y, h: height(n) };
      y += height(n) + GAP_Y;
    }
  });
  // Inputs ordered by where their sources sit, outputs by where they arrive: as few crossings as possible.
  const anchors = Object.fromEntries(graph.edges.map((e) => [e.id, {}]));
  const centre = (n) => box[n].y + box[n].h / 2;
  for (const n of names) {
    ins[n].sort((a, b) => centre(a.src) - centre(b.src));
    ins[n].forEach((e, i) => { anchors[e.id].y2 = box[n].y + (box[n].h * (i + 1)) / (ins[n].length + 1); });
  }
  for (const n of names) {
    outs[n].sort((a, b) => anchors[a.id].y2 - anchors[b.id].y2);
    outs[n].forEach((e, i) => { anchors[e.id].y1 = box[n].y + (box[n].h * (i + 1)) / (outs[n].length + 1); });
  }
  return { box, anchors, width: 2 * PAD + columns.length * BOX_W + (columns.length - 1) * GAP_X, height: 2 * PAD + tallest };
}

function renderGraph(graph, nodes, rates) {
  const root = $("#graph");
  const key = JSON.stringify([graph.nodes, graph.edges]);
  if (key !== view.graphKey) {
    view.graphKey = key;
    root.replaceChildren();
    const { box, anchors, width, height } = layoutGraph(graph);
    root.setAttribute("viewBox", `0 0 ${width} ${height}`);
    for (const e of graph.edges) {
      const x1 = box[e.src].x + BOX_W, x2 = box[e.dst].x, { y1, y2 } = anchors[e.id], dx = (x2 - x1) / 2;
      const group = svg("g", { class: "edge", "data-edge": e.id, "data-policy": e.policy });
      const title = svg("title");
      title.textContent = `${e.id} (${e.kind}, ${e.policy})`;
      group.append(title, svg("path", { d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}` }));
      // The label sits just after the source, on the edge's own anchor, where edges are still a row apart.
      group.append(svg("text", { x: x1 + 6, y: y1 - 3, "text-anchor": "start" }));
      root.append(group);
    }
    for (const [name, type] of Object.entries(graph.nodes)) {
      const b = box[name];
      const group = svg("g", { class: "node", "data-node": name, transform: `translate(${b.x},${b.y})` });
      const title = svg("text", { x: BOX_W / 2, y: b.h / 2 - 2 });
      title.textContent = name;
      const kind = svg("text", { class: "type", x: BOX_W / 2, y: b.h / 2 + 11 });
      kind.textContent = type;
      group.append(svg("rect", { width: BOX_W, height: b.h }), title, kind);
      root.append(group);
    }
  }
  for (const group of root.querySelectorAll("g.edge")) {
    group.querySelector("text").textContent = `${group.dataset.policy} · ${fmt(rates[group.dataset.edge], 1)} msg/s`;
  }
  for (const group of root.querySelectorAll("g.node")) {
    group.dataset.state = (nodes[group.dataset.node] || {}).state || "unknown";
  }
}

connect();
