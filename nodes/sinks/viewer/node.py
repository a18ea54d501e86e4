"""The ``viewer`` sink node, and :func:`add_viewer`, which attaches one to any graph (``evpipe run --view``)."""

from __future__ import annotations

import dataclasses

from evpipe.nodes.sinks.viewer.panels import DRAWN_KINDS, PanelStore
from evpipe.nodes.sinks.viewer.server import ViewerServer, is_loopback
from evpipe.runtime.graph import ConfigError, EdgeConfig, Graph, NodeConfig, resolve_node_type
from evpipe.runtime.node import ANY_KIND, Node, Spec
from evpipe.runtime.status import read_status
from evpipe.runtime.wire import Message

DEFAULT_PORT = 8765
LOOPBACK = "127.0.0.1"


class Viewer(Node):
    """Serves a live web page: one panel per connected stream, the graph with message rates, and latency.

    Panels: event packets as red (ON) / blue (OFF) polarity images over ``event_window_ms`` of sensor
    time, intensity and predicted frames as images, voxel grids as one strip per time bin. The
    latency panel shows what the run's metrics sink measures (end-to-end p50/p99 over a sliding
    window, queueing vs compute per node, throughput) with each edge's drops and each node's restarts:
    the numbers ``evpipe run`` prints at the end, live. ``process`` only keeps a reference to the
    newest message; drawing happens in the server's thread when a browser is ready, within
    ``cpu_share`` of one core, so connect the viewer with ``latest`` edges and the graph never waits.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("in", ANY_KIND, "events, frame or voxel streams; connect each with a `latest` edge")
        spec.param("port", int, DEFAULT_PORT, "TCP port of the page (0 = any free port, logged at start)",
                   minimum=0, maximum=65535)
        spec.param("bind", str, LOOPBACK, "address to listen on; anything but loopback exposes the streams")
        spec.param("max_fps", float, 15.0, "most pictures per second per panel and tab", minimum=0.5, maximum=120.0)
        spec.param("cpu_share", float, 0.25, "most of one CPU core spent drawing pictures", minimum=0.02,
                   maximum=1.0)
        spec.param("event_window_ms", float, 33.0, "sensor time of events accumulated into one event picture",
                   minimum=0.1, maximum=10_000.0)
        spec.param("max_width", int, 960, "pictures wider than this are scaled down (pixels)", minimum=64,
                   maximum=8192)
        spec.param("jpeg_quality", int, 80, "JPEG quality of the pictures", minimum=10, maximum=95)

    def start(self) -> None:
        p = self.params
        self.store = PanelStore(int(p.event_window_ms * 1000))
        self.undrawn: set[str] = set()
        self.server = ViewerServer(self.store, viewer=self.name, bind=p.bind, port=p.port, max_fps=p.max_fps,
                                   cpu_share=p.cpu_share, max_width=p.max_width, quality=p.jpeg_quality,
                                   status=read_status)
        url = self.server.start()
        self.log.info("live viewer at %s", url)
        if not is_loopback(p.bind):
            self.log.warning("the viewer listens on %s: anyone who can reach this address sees the streams", p.bind)

    def process(self, port: str, msg: Message) -> None:
        if msg.kind in DRAWN_KINDS:
            self.store.add(msg)
        elif msg.stream not in self.undrawn:
            self.undrawn.add(msg.stream)
            self.log.warning("stream %s carries %r messages, which the viewer does not draw", msg.stream, msg.kind)

    def stop(self) -> None:
        self.server.stop("every input stream of the viewer has ended (the graph finished or was stopped)")


def _unique_name(graph: Graph, base: str) -> str:
    name, k = base, 2
    while name in graph.nodes:
        name, k = f"{base}{k}", k + 1
    return name


def add_viewer(graph: Graph, *, port: int = DEFAULT_PORT, bind: str = LOOPBACK, host: str | None = None) -> Graph:
    """A copy of ``graph`` with a viewer fed by ``latest`` edges from every events, frame and voxel output.

    A graph without a ``metrics`` sink also gets one, fed the same way, so the page has latency to
    show (``latest`` edges: neither observer can slow the graph). A graph that already has a viewer
    is returned unchanged. For a multi-host graph, ``host`` is the host run here: only its nodes'
    outputs are connected, and the added nodes run on it. Raises ConfigError when nothing can be shown.
    """
    if any(n.cls is Viewer and n.host == host for n in graph.nodes.values()):
        return graph
    if graph.hosts and host not in graph.hosts:
        raise ConfigError(graph.path, None, f"--view on a multi-host graph needs --host (one of "
                          f"{', '.join(graph.hosts)})", "the viewer runs on the host given with --host")
    outputs = [(name, port_name) for name, node in graph.nodes.items() if node.host == host
               for port_name, p in node.cls.spec().outputs.items() if p.kind in DRAWN_KINDS]
    if not outputs:
        raise ConfigError(graph.path, None, "--view: no node has an events, frame or voxel output to show",
                          "the viewer draws event, frame and voxel streams")
    viewer_cls = resolve_node_type("viewer")
    metrics_cls = resolve_node_type("metrics")
    nodes, edges = dict(graph.nodes), list(graph.edges)
    observers = [NodeConfig(_unique_name(graph, "viewer"), "viewer", viewer_cls,
                            viewer_cls.spec().resolve_params({"port": port, "bind": bind}), host)]
    if not any(n.cls is metrics_cls and n.host == host for n in graph.nodes.values()):
        observers.append(NodeConfig(_unique_name(graph, "metrics"), "metrics", metrics_cls,
                                    metrics_cls.spec().resolve_params({}), host))
    for observer in observers:
        nodes[observer.name] = observer
        for src, src_port in outputs:
            kind = graph.nodes[src].cls.spec().outputs[src_port].kind
            edges.append(EdgeConfig(src, src_port, observer.name, "in", kind, policy="latest"))
    return dataclasses.replace(graph, nodes=nodes, edges=edges)


def viewer_urls(graph: Graph, host: str | None = None) -> list[str]:
    """Where the graph's viewers will serve their pages (port 0: the viewer logs the port it got)."""
    urls = []
    for node in graph.nodes.values():
        if node.cls is Viewer and node.host == host:
            address = LOOPBACK if node.params["bind"] in ("0.0.0.0", "::") else node.params["bind"]
            address = f"[{address}]" if ":" in address else address
            port = node.params["port"] or "PORT (any free port: see the viewer's log line)"
            urls.append(f"http://{address}:{port}/")
    return urls
