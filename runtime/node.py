"""The node contract.

A node class declares its ports and parameters in the class method ``setup(spec)`` — so a graph
can be validated without instantiating anything — and does its work in ``process(port, msg)``
(one input message at a time) or, for a source, in the generator ``produce()``. The runtime owns
sockets, threads, serialization, tracing and shutdown; a node only calls ``self.emit``.

Example::

    class Scale(Node):
        \"\"\"Multiplies every frame by a constant.\"\"\"

        @classmethod
        def setup(cls, spec: Spec) -> None:
            spec.input("frames", "frame")
            spec.output("frames", "frame")
            spec.param("gain", float, 2.0, "multiplier")

        def process(self, port: str, msg: Message) -> None:
            frame = msg.frame()
            self.emit("frames", Message.from_frame(replace(frame, image=frame.image * self.params.gain)))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

from evpipe.runtime.wire import KINDS, Message

ANY_KIND = "any"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class ParamError(ValueError):
    """A parameter value that does not match its declaration."""


class NodeError(Exception):
    """A fatal error the user must fix (a corrupt input file, a parameter that cannot work, a full disk).

    Raised from ``start``, ``process`` or ``produce``: the message is printed as one line (name the file
    or parameter and the fix), the node is not restarted — restarting cannot help — and the graph
    stops with a failure. Any other exception is a crash: logged with its traceback and restarted.
    """


def _is_float_text(text: str) -> bool:
    """PyYAML (YAML 1.1) reads 20.0e6 — no sign in the exponent — as text; accept it for float params."""
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    input_path: bool = False  # a file or folder the node reads: checked to exist when the graph is validated
    names: tuple[str, ...] = ()  # values of an input-path parameter that name a built-in item, not a file

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def coerce(self, value: Any) -> Any:
        """Return ``value`` as this parameter's type, or raise ParamError saying what was expected."""
        if value is None and self.default is None:
            return None
        typ = self.type
        ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if typ is float and isinstance(value, str) and _is_float_text(value):
            value, ok = float(value), True
        if typ is tuple and isinstance(value, list):
            value, ok = tuple(value), True
        if not ok:
            raise ParamError(f"expected {typ.__name__}, got {type(value).__name__} {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ParamError(f"{value!r} is not one of {', '.join(map(repr, self.choices))}")
        if self.minimum is not None and value < self.minimum:
            raise ParamError(f"{value!r} is below the minimum {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise ParamError(f"{value!r} is above the maximum {self.maximum}")
        return value


@dataclass(frozen=True)
class Port:
    name: str
    kind: str
    doc: str = ""


@dataclass
class Spec:
    """What a node type declares: its input and output ports and its parameters."""

    inputs: dict[str, Port] = field(default_factory=dict)
    outputs: dict[str, Port] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)

    def input(self, name: str, kind: str, doc: str = "") -> None:
        self._add_port(self.inputs, name, kind, doc)

    def output(self, name: str, kind: str, doc: str = "") -> None:
        if kind == ANY_KIND:
            raise ValueError(f"output port {name!r}: outputs need a concrete kind")
        self._add_port(self.outputs, name, kind, doc)

    def param(self, name: str, type: type, default: Any = REQUIRED, doc: str = "", *,
              choices: list[Any] | tuple[Any, ...] | None = None,
              minimum: float | None = None, maximum: float | None = None, input_path: bool = False,
              names: tuple[str, ...] = ()) -> None:
        """Declare a parameter. ``input_path``: its value is a file or folder the node reads (unless it is one of
        ``names``); a graph whose input is missing fails validation, before any process starts."""
        if name in self.params:
            raise ValueError(f"parameter {name!r} declared twice")
        self.params[name] = Param(name, type, default, doc, tuple(choices) if choices else None, minimum, maximum,
                                  input_path, tuple(names))

    def _add_port(self, ports: dict[str, Port], name: str, kind: str, doc: str) -> None:
        if kind not in (*KINDS, ANY_KIND):
            raise ValueError(f"port {name!r}: unknown kind {kind!r}")
        if name in ports:
            raise ValueError(f"port {name!r} declared twice")
        ports[name] = Port(name, kind, doc)

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Validated parameter values with defaults filled in; raises ParamError naming the parameter."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise ParamError(f"unknown parameter {unknown[0]!r} (known: {known})")
        values = {}
        for name, param in self.params.items():
            if name in given:
                try:
                    values[name] = param.coerce(given[name])
                except ParamError as exc:
                    raise ParamError(f"parameter {name!r}: {exc}") from None
            elif param.required:
                raise ParamError(f"missing required parameter {name!r} ({param.type.__name__}: {param.doc})")
            else:
                values[name] = param.default
        return values


class Node:
    """Base class of every node. Subclasses implement ``setup`` and ``process`` (or ``produce``)."""

    _spec_cache: ClassVar[dict[type, Spec]] = {}

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.name = name
        self.params = SimpleNamespace(**self.spec().resolve_params(params))
        self.log = logging.getLogger(f"evpipe.{name}")
        self._emit: Callable[[str, Message], None] | None = None
        self._report: Callable[[dict[str, Any]], None] | None = None
        # node -> (its host's monotonic clock - ours), for nodes on other hosts; set by the runtime
        self.clock_offsets_ns: dict[str, int] = {}

    @classmethod
    def setup(cls, spec: Spec) -> None:
        """Declare ports and parameters on ``spec``."""
        raise NotImplementedError(f"{cls.__name__} must implement setup(spec)")

    @classmethod
    def spec(cls) -> Spec:
        if cls not in Node._spec_cache:
            spec = Spec()
            cls.setup(spec)
            Node._spec_cache[cls] = spec
        return Node._spec_cache[cls]

    @classmethod
    def is_source(cls) -> bool:
        return not cls.spec().inputs

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        """Ahead-of-time work a run would otherwise do in ``start`` (ONNX exports, engine builds), for
        ``evpipe build-engines``. ``params`` are validated and checked against this machine. Returns
        (artefact path, ``built`` or ``cached``) for each artefact made or found."""
        return []

    @classmethod
    def check_machine(cls, name: str, params: dict[str, Any]) -> dict[str, str] | None:
        """Check, before any process starts, that this machine has what ``params`` (validated) ask for
        (a backend, a GPU) and say what node ``name`` will run on: model nodes return ``backend``,
        ``device``, ``precision`` and ``cache`` (the engine cache file) for the run header and report.
        Raises ParamError naming the parameter and what is missing; never falls back silently."""
        return None

    def start(self) -> None:
        """Acquire resources (open files, load models). Called once before any message."""

    def process(self, port: str, msg: Message) -> None:
        """Handle one message that arrived on input ``port``."""
        raise NotImplementedError(f"{type(self).__name__} has inputs and must implement process()")

    def produce(self) -> Iterator[tuple[str, Message]]:
        """Sources only: yield ``(port, message)`` until the stream ends. The runtime may stop early."""
        raise NotImplementedError(f"{type(self).__name__} has no inputs and must implement produce()")

    def stop(self) -> None:
        """Flush and release resources. Called once after the last message, also on shutdown."""

    def emit(self, port: str, msg: Message) -> None:
        """Send ``msg`` on output ``port`` to every connected edge."""
        if port not in self.spec().outputs:
            raise KeyError(f"{type(self).__name__} has no output port {port!r}")
        if self._emit is None:
            raise RuntimeError(f"node {self.name!r} is not attached to a runtime (see attach_emitter)")
        self._emit(port, msg)

    def attach_emitter(self, emit: Callable[[str, Message], None]) -> None:
        """Route ``emit`` calls to ``emit(port, msg)``: the runtime's sender, or a list in a test."""
        self._emit = emit

    def report(self, data: dict[str, Any]) -> None:
        """Send a summary (plain msgpack-able data) to the supervisor, e.g. a sink's final numbers."""
        if self._report is not None:
            self._report(data)

    def attach_reporter(self, report: Callable[[dict[str, Any]], None]) -> None:
        self._report = report
