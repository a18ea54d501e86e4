"""Live viewer: a sink node that serves a local web page with every stream of a running graph and its latency.

``Viewer`` is the node (type name ``viewer``); :func:`add_viewer` attaches one to any graph, which is
what ``evpipe run CONFIG --view`` does. The page is plain HTML/JS in ``static/``, served locally.
"""

from evpipe.nodes.sinks.viewer.node import DEFAULT_PORT, Viewer, add_viewer, viewer_urls

__all__ = ["DEFAULT_PORT", "Viewer", "add_viewer", "viewer_urls"]
