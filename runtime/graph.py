"""Graph configuration: YAML -> a validated :class:`Graph`, before any process starts.

Every mistake (unknown node type, unknown port, kind mismatch, cycle, missing or ill-typed
parameter, malformed edge) raises :class:`ConfigError` naming the file, the line and the fix.

Format::

    name: replay-to-video
    settings:                 # optional
      transport: ipc          # ipc (default) or tcp
      bind: 127.0.0.1         # tcp bind address; loopback unless a config says otherwise
      max_restarts: 3
      limits: {max_message_bytes: 268435456}
    nodes:
      sim: {type: simulator, params: {duration_s: 2.0}}
      vox: {type: voxelizer, params: {bins: 5}}
      out: {type: metrics}
    edges:
      - sim.events -> vox.events                                # lossless (default)
      - {edge: vox.voxels -> out.in, policy: latest}            # keep only the newest
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evpipe.runtime.node import ANY_KIND, Node, ParamError
from evpipe.runtime.wire import Limits

POLICIES = ("lossless", "latest")
TRANSPORTS = ("ipc", "tcp")
_EDGE_RE = re.compile(r"^\s*([A-Za-z_][\w-]*)\.(\w+)\s*->\s*([A-Za-z_][\w-]*)\.(\w+)\s*$")
_NAME_RE = re.compile(r"^[A-Za-z_][\w-]*$")


class ConfigError(Exception):
    """An invalid graph configuration, located in its file."""

    def __init__(self, path: str | Path, line: int | None, message: str, fix: str | None = None) -> None:
        self.path, self.line, self.message, self.fix = str(path), line, message, fix
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}" + (f" — {fix}" if fix else ""))


@dataclass
class NodeConfig:
    name: str
    type: str
    cls: type[Node]
    params: dict[str, Any]
    host: str | None = None
    line: int | None = None


@dataclass
class EdgeConfig:
    src: str
    src_port: str
    dst: str
    dst_port: str
    kind: str
    policy: str = "lossless"
    capacity: int = 16
    line: int | None = None

    @property
    def id(self) -> str:
        return f"{self.src}.{self.src_port}->{self.dst}.{self.dst_port}"


@dataclass
class Settings:
    transport: str = "ipc"
    bind: str = "127.0.0.1"
    max_restarts: int = 3
    restart_backoff_s: float = 0.5
    limits: Limits = field(default_factory=Limits)
    port_base: int = 5600  # cross-host edge k listens on port_base + k; the clock service on port_base - 1
    curve_keys: str | None = None  # folder of `evpipe keys` certificates (relative to the graph file)


@dataclass(frozen=True)
class Host:
    name: str
    address: str


@dataclass
class Graph:
    path: str
    name: str
    nodes: dict[str, NodeConfig]
    edges: list[EdgeConfig]
    settings: Settings
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def edges_by_id(self) -> dict[str, EdgeConfig]:
        return {e.id: e for e in self.edges}

    def host_of(self, node: str) -> str | None:
        return self.nodes[node].host

    def is_cross_host(self, edge: EdgeConfig) -> bool:
        return self.host_of(edge.src) != self.host_of(edge.dst)

    def cross_host_edges(self) -> list[EdgeConfig]:
        return [e for e in self.edges if self.is_cross_host(e)]

    def edges_into(self, node: str) -> list[EdgeConfig]:
        return [e for e in self.edges if e.dst == node]

    def edges_out_of(self, node: str) -> list[EdgeConfig]:
        return [e for e in self.edges if e.src == node]

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/msgpack-able form (used to hand a node its part of the graph)."""
        return {
            "path": self.path,
            "name": self.name,
            "settings": {**dataclasses.asdict(self.settings)},
            "nodes": {n.name: {"type": n.type, "params": n.params, "host": n.host} for n in self.nodes.values()},
            "edges": [dataclasses.asdict(e) for e in self.edges],
        }


# -- YAML with line numbers -------------------------------------------------------------------------
class _LineDict(dict):
    lines: dict[Any, int]
    line: int


class _LineList(list):
    lines: list[int]
    line: int


class _LineLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> _LineDict:
        mapping = _LineDict(super().construct_mapping(node, deep=True))
        mapping.lines = {self.construct_object(k, deep=True): k.start_mark.line + 1 for k, _ in node.value}
        mapping.line = node.start_mark.line + 1
        return mapping

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> _LineList:
        seq = _LineList(super().construct_sequence(node, deep=True))
        seq.lines = [item.start_mark.line + 1 for item in node.value]
        seq.line = node.start_mark.line + 1
        return seq


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _LineLoader.construct_sequence)


def _line_of(container: Any, key: Any = None) -> int | None:
    if key is not None and isinstance(container, _LineDict):
        return container.lines.get(key, container.line)
    if isinstance(key, int) and isinstance(container, _LineList):
        return container.lines[key]
    return getattr(container, "line", None)


# -- node types -------------------------------------------------------------------------------------
def resolve_node_type(type_name: str) -> type[Node]:
    """Built-in name (see ``evpipe nodes``) or ``package.module:Class`` / ``package.module.Class``."""
    from evpipe.nodes import BUILTIN_NODES

    target = BUILTIN_NODES.get(type_name, type_name)
    if ":" in target:
        module_name, _, attr = target.partition(":")
    elif "." in target:
        module_name, _, attr = target.rpartition(".")
    else:
        close = difflib.get_close_matches(type_name, BUILTIN_NODES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise LookupError(f"unknown node type {type_name!r}; {hint}`evpipe nodes` lists the built-in types, "
                          "or give a dotted path 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"node type {type_name!r}: cannot import module {module_name!r} ({exc})") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise LookupError(f"node type {type_name!r}: {module_name}.{attr} is not an evpipe Node class")
    return cls


# -- loading ----------------------------------------------------------------------------------------
def load_graph(path: str | Path, overrides: Iterable[str] = (), check_inputs: bool = True) -> Graph:
    """Parse and validate a graph file; ``overrides`` are ``node.param=value`` strings (value as YAML).
    ``check_inputs`` False leaves input files unchecked (a batch template, whose input is bound per job)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read graph file: {exc.strerror}") from None
    try:
        doc = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(path, mark.line + 1 if mark else None, f"invalid YAML: {getattr(exc, 'problem', exc)}",
                          "fix the syntax at that line") from None
    return build_graph(doc, path, overrides, check_inputs)


def build_graph(doc: Any, path: str | Path, overrides: Iterable[str] = (), check_inputs: bool = True) -> Graph:
    def fail(container: Any, key: Any, message: str, fix: str | None = None) -> ConfigError:
        return ConfigError(path, _line_of(container, key), message, fix)

    if not isinstance(doc, dict):
        raise fail(doc, None, "a graph file must be a mapping with 'nodes' and 'edges'")
    known_top = {"name", "description", "settings", "hosts", "nodes", "edges"}
    for key in doc:
        if key not in known_top:
            raise fail(doc, key, f"unknown top-level key {key!r}", f"use one of {', '.join(sorted(known_top))}")
    settings = _build_settings(doc.get("settings") or {}, fail)
    hosts = _build_hosts(doc.get("hosts") or {}, fail)

    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        raise fail(doc, "nodes", "'nodes' must be a non-empty mapping of name -> {type, params}")
    params_by_node: dict[str, dict[str, Any]] = {}
    for name, body in raw_nodes.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise fail(raw_nodes, name, f"bad node name {name!r}", "use letters, digits, '_' or '-'")
        if not isinstance(body, dict) or "type" not in body:
            raise fail(raw_nodes, name, f"node {name!r} needs a 'type'", "e.g. `vox: {type: voxelizer}`")
        for key in body:
            if key not in ("type", "params", "host"):
                raise fail(body, key, f"node {name!r}: unknown key {key!r}", "use type, params or host")
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise fail(body, "params", f"node {name!r}: 'params' must be a mapping")
        params_by_node[name] = dict(params)

    overridden: set[tuple[str, str]] = set()
    for item in overrides:
        node_name, dot, rest = item.partition(".")
        param, eq, value = rest.partition("=")
        if not dot or not eq or node_name not in params_by_node:
            raise ConfigError(path, None, f"bad override {item!r}",
                              f"use --set NODE.PARAM=VALUE with NODE one of {', '.join(params_by_node)}")
        params_by_node[node_name][param] = yaml.safe_load(value)
        overridden.add((node_name, param))

    nodes: dict[str, NodeConfig] = {}
    for name, body in raw_nodes.items():
        type_name = body["type"]
        try:
            cls = resolve_node_type(str(type_name))
        except LookupError as exc:
            raise fail(body, "type", f"node {name!r}: {exc}") from None
        try:
            params = cls.spec().resolve_params(params_by_node[name])
        except ParamError as exc:
            raise fail(body, "params" if "params" in body else "type", f"node {name!r} ({type_name}): {exc}",
                       f"`evpipe nodes {type_name}` lists its parameters") from None
        host = body.get("host")
        if hosts and host not in hosts:
            raise fail(body, "host" if "host" in body else "type",
                       f"node {name!r}: host {host!r} is not one of the graph's hosts",
                       f"give every node a host from: {', '.join(hosts)}")
        if not hosts and host is not None:
            raise fail(body, "host", f"node {name!r} names host {host!r} but the graph has no 'hosts' section",
                       "add `hosts: {NAME: {address: IP}}`")
        if host is None and check_inputs:  # on another host the file is that machine's to check
            _check_input_paths(name, cls, params, body, overridden, fail)
        nodes[name] = NodeConfig(name, str(type_name), cls, params, host, _line_of(raw_nodes, name))

    raw_edges = doc.get("edges") or _LineList()
    if not isinstance(raw_edges, list):
        raise fail(doc, "edges", "'edges' must be a list")
    edges = [_build_edge(raw_edges, i, nodes, fail) for i in range(len(raw_edges))]
    _check_connections(nodes, edges, path, raw_nodes)
    _check_acyclic(nodes, edges, path)
    graph = Graph(str(path), str(doc.get("name") or Path(path).stem), nodes, edges, settings, hosts)
    if graph.cross_host_edges():
        first = graph.cross_host_edges()[0]
        if settings.curve_keys is None:
            raise ConfigError(path, first.line, f"edge {first.id} crosses hosts, and cross-host edges are "
                              "encrypted and authenticated with CURVE", "set settings.curve_keys to a folder made "
                              "by `evpipe keys FOLDER " + " ".join(hosts) + "`")
        settings.curve_keys = str((Path(path).parent / settings.curve_keys).resolve())
    return graph


def _check_input_paths(name: str, cls: type[Node], params: dict[str, Any], body: Any,
                       overridden: set[tuple[str, str]], fail: Any) -> None:
    """A missing input file is a configuration error, located at the parameter (or its ``--set``)."""
    for param in cls.spec().params.values():
        value = params.get(param.name)
        if not param.input_path or value is None or value in param.names or Path(value).expanduser().exists():
            continue
        given = " (given with --set)" if (name, param.name) in overridden else ""
        container = body.get("params") if isinstance(body.get("params"), dict) else body
        key = param.name if param.name in container else None
        raise fail(container, key, f"node {name!r}: parameter {param.name!r}{given}: no such file or folder "
                   f"{str(Path(value).expanduser().resolve())!r} ({param.doc})",
                   f"set it with --set {name}.{param.name}=PATH or edit the graph file")


def _build_hosts(raw: Any, fail: Any) -> dict[str, Host]:
    if not isinstance(raw, dict):
        raise fail(raw, None, "'hosts' must be a mapping of name -> {address: IP}")
    hosts = {}
    for name, body in raw.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise fail(raw, name, f"bad host name {name!r}", "use letters, digits, '_' or '-'")
        if not isinstance(body, dict) or not isinstance(body.get("address"), str) or set(body) != {"address"}:
            raise fail(raw, name, f"host {name!r} needs exactly an 'address'", "e.g. `a: {address: 10.0.0.1}`")
        hosts[name] = Host(name, body["address"])
    return hosts


def _build_settings(raw: Any, fail: Any) -> Settings:
    if not isinstance(raw, dict):
        raise fail(raw, None, "'settings' must be a mapping")
    settings = Settings()
    for key, value in raw.items():
        if key == "limits":
            if not isinstance(value, dict):
                raise fail(raw, key, "'settings.limits' must be a mapping")
            known = {f.name for f in dataclasses.fields(Limits)}
            for lk, lv in value.items():
                if lk not in known or not isinstance(lv, int) or lv <= 0:
                    raise fail(value, lk, f"bad limit {lk}={lv!r}",
                               f"known limits (positive integers): {sorted(known)}")
            settings.limits = Limits(**value)
        elif key == "transport":
            if value not in TRANSPORTS:
                raise fail(raw, key, f"unknown transport {value!r}", f"use one of {', '.join(TRANSPORTS)}")
            settings.transport = value
        elif key == "bind":
            if not isinstance(value, str):
                raise fail(raw, key, "'bind' must be an address string such as 127.0.0.1")
            settings.bind = value
        elif key == "curve_keys":
            if not isinstance(value, str):
                raise fail(raw, key, "'curve_keys' must be a folder path (made by `evpipe keys`)")
            settings.curve_keys = value
        elif key == "port_base":
            if not isinstance(value, int) or isinstance(value, bool) or not 1025 <= value <= 60000:
                raise fail(raw, key, f"'port_base' must be an integer port in 1025..60000, got {value!r}")
            settings.port_base = value
        elif key in ("max_restarts", "restart_backoff_s"):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise fail(raw, key, f"'{key}' must be a non-negative number, got {value!r}")
            setattr(settings, key, type(getattr(settings, key))(value))
        else:
            raise fail(raw, key, f"unknown setting {key!r}",
                       "use transport, bind, max_restarts, restart_backoff_s, limits, port_base or curve_keys")
    return settings


def _build_edge(raw_edges: _LineList, i: int, nodes: dict[str, NodeConfig], fail: Any) -> EdgeConfig:
    item = raw_edges[i]
    policy, capacity, container, key = "lossless", 16, raw_edges, i
    if isinstance(item, dict):
        for k in item:
            if k not in ("edge", "policy", "capacity"):
                raise fail(item, k, f"unknown edge key {k!r}", "use edge, policy or capacity")
        text, container, key = item.get("edge"), item, "edge"
        policy = item.get("policy", "lossless")
        if policy not in POLICIES:
            raise fail(item, "policy", f"unknown delivery policy {policy!r}", f"use one of {', '.join(POLICIES)}")
        capacity = item.get("capacity", 16)
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise fail(item, "capacity", f"edge capacity must be a positive integer, got {capacity!r}")
    else:
        text = item
    match = _EDGE_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise fail(container, key, f"malformed edge {text!r}", "write 'source.port -> destination.port'")
    src, src_port, dst, dst_port = match.groups()
    for node, port, direction in ((src, src_port, "outputs"), (dst, dst_port, "inputs")):
        if node not in nodes:
            close = difflib.get_close_matches(node, nodes, n=1)
            raise fail(container, key, f"edge {text!r}: unknown node {node!r}",
                       f"did you mean {close[0]!r}?" if close else f"nodes are {', '.join(nodes)}")
        ports = getattr(nodes[node].cls.spec(), direction)
        if port not in ports:
            listed = ", ".join(ports) or "none"
            raise fail(container, key, f"edge {text!r}: node {node!r} ({nodes[node].type}) has no "
                       f"{direction[:-1]} port {port!r}", f"its {direction} are: {listed}")
    out_kind = nodes[src].cls.spec().outputs[src_port].kind
    in_kind = nodes[dst].cls.spec().inputs[dst_port].kind
    if in_kind not in (ANY_KIND, out_kind):
        raise fail(container, key, f"edge {text!r}: kind mismatch, {src}.{src_port} sends {out_kind!r} but "
                   f"{dst}.{dst_port} takes {in_kind!r}", "connect ports of the same kind (`evpipe nodes`)")
    return EdgeConfig(src, src_port, dst, dst_port, out_kind, policy, capacity, _line_of(container, key))


def _check_connections(nodes: dict[str, NodeConfig], edges: list[EdgeConfig], path: str | Path,
                       raw_nodes: Any) -> None:
    seen: set[str] = set()
    for e in edges:
        if e.id in seen:
            raise ConfigError(path, e.line, f"edge {e.id} is declared twice", "remove the duplicate")
        seen.add(e.id)
    for name, node in nodes.items():
        inputs = node.cls.spec().inputs
        if inputs and not any(e.dst == name for e in edges):
            raise ConfigError(path, _line_of(raw_nodes, name), f"node {name!r} ({node.type}) has no input connected",
                              f"add an edge into {name}.{next(iter(inputs))}")


def _check_acyclic(nodes: dict[str, NodeConfig], edges: list[EdgeConfig], path: str | Path) -> None:
    children: dict[str, list[EdgeConfig]] = {n: [] for n in nodes}
    for e in edges:
        children[e.src].append(e)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        trail = [*trail, n]
        for e in children[n]:
            if state.get(e.dst) == 1:
                cycle = [*trail[trail.index(e.dst):], e.dst]
                raise ConfigError(path, e.line, f"cycle in graph: {' -> '.join(cycle)}",
                                  "graphs must be acyclic; remove one of these edges")
            if e.dst not in state:
                visit(e.dst, trail)
        state[n] = 2

    for n in nodes:
        if n not in state:
            visit(n, [])


def check_machine(graph: Graph, host: str | None = None) -> dict[str, dict[str, str]]:
    """Check the nodes that run here (those of ``host`` in a multi-host graph) against this machine's
    backends and devices (``Node.check_machine``); returns what each model node will run on. Raises
    ConfigError (exit 2) naming the node, the parameter and what is missing."""
    engines = {}
    for name, node in graph.nodes.items():
        if graph.hosts and node.host != host:
            continue
        try:
            described = node.cls.check_machine(name, node.params)
        except ParamError as exc:
            raise ConfigError(graph.path, node.line, f"node {name!r} ({node.type}): {exc}",
                              "choose a backend and device this machine has (`evpipe nodes "
                              f"{node.type}` lists the choices), or install what the message names") from None
        if described is not None:
            engines[name] = described
    return engines


def topological_order(graph: Graph) -> list[str]:
    order, seen = [], set()

    def visit(n: str) -> None:
        if n in seen:
            return
        seen.add(n)
        for e in graph.edges_into(n):
            visit(e.src)
        order.append(n)

    for n in graph.nodes:
        visit(n)
    return order
