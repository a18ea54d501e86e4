"""The ``evpipe`` command line.

Exit codes: 0 the graph completed (also after Ctrl-C with a clean drain), 1 it failed (a node
crashed more often than allowed), 2 bad usage or an invalid configuration.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from rich.console import Console

from evpipe.runtime.graph import ConfigError, Graph, check_machine, load_graph
from evpipe.runtime.logs import configure_logging

DEFAULT_GRAPH = "default.yaml"


def _stdout_console() -> Console:
    """Tables keep their width when piped to a file (rich would wrap them at 80 columns)."""
    console = Console()
    return console if console.is_terminal else Console(width=180)


def default_graph_path() -> Path:
    return Path(str(resources.files("evpipe.configs").joinpath(DEFAULT_GRAPH)))


def _load(config: str | None, overrides: list[str], console: Console, check_inputs: bool = True) -> Graph | None:
    path = Path(config) if config else default_graph_path()
    if config and not path.exists():
        shipped = Path(str(resources.files("evpipe.configs").joinpath(config)))
        path = shipped if shipped.exists() else path
    try:
        return load_graph(path, overrides, check_inputs)
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return None


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from evpipe.runtime.report import render_tables, write_report
    from evpipe.runtime.supervisor import Supervisor

    graph = _load(args.config, args.set, console)
    if graph is None:
        return 2
    if args.view:
        from evpipe.nodes.sinks.viewer import add_viewer, viewer_urls

        try:
            graph = add_viewer(graph, port=args.view_port, host=args.host)
        except ConfigError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            return 2
        console.print(f"live viewer: {' '.join(viewer_urls(graph, args.host))}", highlight=False, soft_wrap=True)
    console.print(f"running graph [bold]{graph.name}[/] ({graph.path}): {len(graph.nodes)} nodes, "
                  f"{len(graph.edges)} edges, transport {graph.settings.transport}")
    if graph.hosts and args.host not in graph.hosts:
        console.print(f"[bold red]error:[/] {graph.path}: the graph spans hosts {', '.join(graph.hosts)}; "
                      "run each host's part with --host NAME", soft_wrap=True)
        return 2
    if args.host and not graph.hosts:
        console.print(f"[bold red]error:[/] {graph.path}: --host given but the graph has no 'hosts' section",
                      soft_wrap=True)
        return 2
    engines = _check_machine(graph, args.host, console)
    if engines is None:
        return 2
    try:
        supervisor = Supervisor(graph, host=args.host, console=console, log_level=args.log_level)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        return 2
    result = supervisor.run()
    result.report["engines"] = _engines_ran(engines, result.report)
    out = _stdout_console()
    for table in render_tables(result.report):
        out.print(table)
    state = "completed" if result.exit_code == 0 else "FAILED"
    out.print(f"graph {state} in {result.report['duration_s']:.2f} s"
              + (" (interrupted, drained)" if result.report["interrupted"] else ""))
    if args.report:
        json_path, png_path = write_report(result.report, args.report)
        out.print(f"report: {json_path}  plot: {png_path}")
    return result.exit_code


def _check_machine(graph: Graph, host: str | None, console: Console) -> dict[str, dict[str, str]] | None:
    """Stop before anything starts when a node asks for a backend or device this machine lacks; print
    what each model node runs on (the run header). None after an error."""
    from rich.markup import escape  # messages hold install hints such as evpipe[trt]

    try:
        engines = check_machine(graph, host)
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return None
    for name, engine in engines.items():
        console.print(escape(f"  {name}: backend {engine['backend']}, device {engine['device']}, precision "
                             f"{engine['precision']}, engine cache {engine['cache']}"), highlight=False, soft_wrap=True)
    return engines


def _engines_ran(planned: dict[str, dict[str, str]], report: dict) -> dict[str, dict[str, str]]:
    """The header's engines, with the cache files each node reported opening (the truth after the run)."""
    engines = {}
    for name, engine in planned.items():
        opened = [r["engine"] for r in report.get("reports", {}).get(name, []) if "engine" in r]
        engines[name] = {**engine, **opened[-1]} if opened else dict(engine)
    return engines


def cmd_build_engines(args: argparse.Namespace, console: Console) -> int:
    from tqdm import tqdm

    from evpipe.runtime.node import Node

    graph = _load(args.config, args.set, console, check_inputs=False)  # models only: no input is read
    if graph is None:
        return 2
    if _check_machine(graph, args.host, console) is None:
        return 2
    todo = [n for n in graph.nodes.values() if n.cls.prepare.__func__ is not Node.prepare.__func__
            and (not graph.hosts or n.host == args.host)]
    if not todo:
        console.print(f"nothing to build: no node of {graph.path} has ahead-of-time work")
        return 0
    for node in tqdm(todo, desc="building", unit="node"):
        try:
            artefacts = node.cls.prepare(node.params)
        except Exception as exc:  # a backend or checkpoint problem: name the node, not a traceback
            console.print(f"[bold red]error:[/] node {node.name!r} ({node.type}): {exc}", soft_wrap=True)
            return 1
        for path, state in artefacts:
            console.print(f"{node.name}: {state} {path}", highlight=False, soft_wrap=True)
    return 0


def cmd_keys(args: argparse.Namespace, console: Console) -> int:
    from evpipe.runtime.security import create_keys

    for path in create_keys(args.folder, args.hosts):
        console.print(f"wrote {path} and {path.with_suffix('.key')}")
    console.print("give each host its own .key_secret and every host's public .key")
    return 0


def cmd_graph(args: argparse.Namespace, console: Console) -> int:
    graph = _load(args.config, args.set, console)
    if graph is None:
        return 2
    lines = ["flowchart LR"]
    for name, node in graph.nodes.items():
        lines.append(f'    {name}["{name}<br/><i>{node.type}</i>"]')
    for e in graph.edges:
        arrow = "-.->" if e.policy == "latest" else "-->"
        lines.append(f"    {e.src} {arrow}|{e.src_port} → {e.dst_port} ({e.kind}, {e.policy})| {e.dst}")
    mermaid = "\n".join(lines)
    if args.png:
        from evpipe.runtime.drawing import draw_graph_png

        draw_graph_png(graph, args.png)
        console.print(f"wrote {args.png}")
    if args.mermaid or not args.png:
        print(mermaid)
    console.print(f"[green]valid:[/] {graph.path} ({len(graph.nodes)} nodes, {len(graph.edges)} edges)")
    return 0


def cmd_nodes(args: argparse.Namespace, console: Console) -> int:
    from rich.markup import escape
    from rich.table import Table

    from evpipe.nodes import BUILTIN_NODES
    from evpipe.runtime.graph import resolve_node_type

    names = [args.type] if args.type else sorted(BUILTIN_NODES)
    for name in names:
        try:
            cls = resolve_node_type(name)
        except LookupError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            return 2
        spec = cls.spec()
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        table = Table(title=f"{name}  —  {doc}", title_justify="left", show_lines=False)
        for col in ("", "name", "kind / type", "default", "description"):
            table.add_column(col)
        for port in spec.inputs.values():
            table.add_row("in", port.name, port.kind, "", escape(port.doc))
        for port in spec.outputs.values():
            table.add_row("out", port.name, port.kind, "", escape(port.doc))
        for p in spec.params.values():  # escape: docs such as "[width, height]" are not rich markup
            extra = f" (one of {', '.join(map(str, p.choices))})" if p.choices else ""
            table.add_row("param", p.name, p.type.__name__, escape(repr(p.default)), escape(p.doc + extra))
        _stdout_console().print(table)
    return 0


def cmd_devices(args: argparse.Namespace, console: Console) -> int:
    import yaml
    from rich.table import Table

    from evpipe.nodes.dv_io import DvIoError
    from evpipe.nodes.sources.camera import list_devices, open_camera, read_biases

    if args.save_preset:
        try:
            camera = open_camera(args.serial)
            preset = read_biases(camera)
        except DvIoError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            return 2
        Path(args.save_preset).write_text(yaml.safe_dump(preset, sort_keys=False))
        console.print(f"wrote the {preset['family']} biases of {camera.getCameraName()} to {args.save_preset}")
        return 0
    devices = list_devices()
    if not devices:
        console.print("no camera found: dv-processing discovered no iniVation camera on USB (check the cable and "
                      "that this user may access USB devices)", soft_wrap=True)
        return 0
    table = Table(title="Cameras")
    for col in ("model", "serial", "usb", "firmware", "events", "frames", "imu", "status"):
        table.add_column(col)
    for d in devices:
        size = [f"{r[0]}x{r[1]}" if r else "-" for r in (d["event_resolution"], d["frame_resolution"])]
        table.add_row(d["model"], d["serial"], d["usb"], str(d["firmware"]), *size,
                      "-" if d["imu"] is None else str(d["imu"]).lower(), d["error"] or "ok")
    _stdout_console().print(table)
    return 0


def cmd_info(args: argparse.Namespace, console: Console) -> int:
    from evpipe.nodes.sources.readers import RecordingError, describe, format_description

    kwargs: dict = {"sensor_size": tuple(args.sensor_size)} if args.sensor_size else {}
    if args.topic:
        pairs = [item.split("=", 1) for item in args.topic]
        if any(len(pair) != 2 for pair in pairs):
            console.print("[bold red]error:[/] --topic takes STREAM=TOPIC, e.g. --topic events=/dvs/events",
                          highlight=False)
            return 2
        kwargs["topics"] = dict(pairs)
    try:
        info = describe(args.file, **kwargs)
    except (RecordingError, OSError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    _stdout_console().print(format_description(info))
    return 0


def cmd_upsample(args: argparse.Namespace, console: Console) -> int:
    from rich.markup import escape

    from evpipe.nodes.upsample.cli import UpsampleInputError, run

    try:
        return run(args)
    except (UpsampleInputError, ValueError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 2


def cmd_restore(args: argparse.Namespace, console: Console) -> int:
    from evpipe.nodes.restore.cli import run

    return run(args, console)


def cmd_batch(args: argparse.Namespace, console: Console) -> int:
    from evpipe.tools.batch import main

    return main([args.target, *args.rest], console)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evpipe", description="Streaming real-time pipeline for event cameras.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="validate and run a graph (default: the built-in default graph)")
    p.add_argument("config", nargs="?", help="graph YAML (a path, or the name of a shipped config)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE", help="override a parameter")
    p.add_argument("--report", metavar="FILE.json", help="also write the report as JSON and a PNG plot")
    p.add_argument("--host", help="run only this host's nodes of a multi-host graph")
    p.add_argument("--view", action="store_true", help="add the live viewer (a local web page) and print its URL")
    p.add_argument("--view-port", type=int, default=8765, metavar="PORT", help="the viewer's port (default 8765)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("build-engines", help="export models and build inference engines a graph needs, ahead of time")
    p.add_argument("config", nargs="?")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE")
    p.add_argument("--host", help="build only this host's nodes of a multi-host graph")
    p.set_defaults(func=cmd_build_engines)

    p = sub.add_parser("keys", help="make CURVE key pairs for the hosts of a multi-host graph")
    p.add_argument("folder", help="where to write NAME.key (public) and NAME.key_secret")
    p.add_argument("hosts", nargs="+", metavar="HOST")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("graph", help="validate a graph and print it as Mermaid (or draw a PNG)")
    p.add_argument("config", nargs="?")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE")
    p.add_argument("--png", metavar="FILE.png", help="draw the graph to a PNG")
    p.add_argument("--mermaid", action="store_true", help="print Mermaid even when --png is given")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("nodes", help="list node types with their ports and parameters")
    p.add_argument("type", nargs="?", help="show one node type")
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser("info", help="describe a recording: format, sensor, duration, rates, anomalies")
    p.add_argument("file")
    p.add_argument("--sensor-size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"),
                   help="for formats whose header has no geometry")
    p.add_argument("--topic", action="append", default=[], metavar="STREAM=TOPIC",
                   help="ROS bags: the topic to read as events, frames, imu or triggers (repeatable)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("devices", help="list connected cameras: model, serial, resolution")
    p.add_argument("--save-preset", metavar="FILE.yaml", help="write a camera's current biases as a bias preset")
    p.add_argument("--serial", default="", help="with --save-preset: the camera (default: the first found)")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("upsample", help="raise a video's frame rate offline with HiFI (x2, x4, x8)")
    from evpipe.nodes.upsample.cli import add_arguments  # no torch import: the command loads it when run

    add_arguments(p)
    p.set_defaults(func=cmd_upsample)

    p = sub.add_parser("restore", help="restore a temporally degraded clip offline with DDS (runs restore_clip.yaml)")
    from evpipe.nodes.restore.cli import add_arguments as add_restore_arguments  # no torch import here

    add_restore_arguments(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("batch", help="run a graph, restore or upsample over many inputs on Ray (evpipe[batch])",
                       description="evpipe batch CONFIG|restore|upsample --inputs GLOB --out DIR [options]; "
                       "`evpipe batch TARGET --help` lists a target's options")
    p.add_argument("target", help="a graph YAML (a path or a shipped config), restore or upsample")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the target's options")
    p.set_defaults(func=cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    return args.func(args, Console(stderr=True))


if __name__ == "__main__":
    sys.exit(main())
