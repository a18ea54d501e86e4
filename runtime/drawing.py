"""Draw a graph as a PNG: nodes in columns by depth from the sources, edges labelled with ports and policy."""

from __future__ import annotations

from pathlib import Path

from evpipe.runtime.graph import Graph, topological_order


def layout(graph: Graph) -> dict[str, tuple[float, float]]:
    """(column, row) per node: column = longest path from a source."""
    depth: dict[str, int] = {}
    for name in topological_order(graph):
        depth[name] = max((depth[e.src] + 1 for e in graph.edges_into(name)), default=0)
    rows: dict[int, int] = {}
    positions = {}
    for name in graph.nodes:
        col = depth[name]
        positions[name] = (float(col), -float(rows.get(col, 0)))
        rows[col] = rows.get(col, 0) + 1
    return positions


def draw_graph_png(graph: Graph, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = layout(graph)
    cols = max(x for x, _ in pos.values()) + 1
    rows = max(-y for _, y in pos.values()) + 1
    fig, ax = plt.subplots(figsize=(3.2 * cols + 1, 1.8 * rows + 1))
    for e in graph.edges:
        (x0, y0), (x1, y1) = pos[e.src], pos[e.dst]
        style = "dashed" if e.policy == "latest" else "solid"
        ax.annotate("", xy=(x1 - 0.32, y1), xytext=(x0 + 0.32, y0),
                    arrowprops={"arrowstyle": "-|>", "linestyle": style, "color": "0.3", "lw": 1.3})
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.1, f"{e.src_port}→{e.dst_port}\n{e.kind}, {e.policy}",
                ha="center", va="bottom", fontsize=7, color="0.25")
    for name, (x, y) in pos.items():
        ax.text(x, y, f"{name}\n{graph.nodes[name].type}", ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round,pad=0.5", "fc": "#dbe9f6", "ec": "#3a6ea5"})
    ax.set_xlim(-0.6, cols - 0.4)
    ax.set_ylim(-rows + 0.4, 0.6)
    ax.axis("off")
    ax.set_title(f"{graph.name} (dashed: latest)", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
