"""Layer order (DESIGN.md): runtime <- kernels <- nodes <- tools. A module imports only its own layer and the
layers below it; configs (graph YAML and an example node) sit with nodes. Every import statement of every
module is read with ``ast`` (module-level and function-local, absolute and relative), so a lazy import inside a
function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import PurePosixPath

import pytest

from tests.conftest import REPO

RANK = {"runtime": 0, "kernels": 1, "nodes": 2, "configs": 2, "tools": 3}

# The composition root: `evpipe` (runtime/cli.py) is the command that wires every layer together (it lists
# nodes, opens cameras, runs the offline restore/upsample commands and `evpipe batch`, whose Ray jobs live in
# tools/ beside the other dataset tools), and the graph loader turns a YAML type
# name into a class through the built-in name table that lives with the nodes. Named module by module, so any
# other upward import fails this test.
ALLOWED_UPWARD = {
    ("runtime/cli.py", "nodes"),
    ("runtime/cli.py", "tools"),
    ("runtime/graph.py", "nodes"),
}


def _layer_of_import(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "evpipe" and len(parts) > 1 and parts[1] in RANK:
        return parts[1]
    return None


def _imported_layers(rel: PurePosixPath, source: str) -> list[tuple[int, str]]:
    """(line, layer) of every import of an evpipe layer in the module at ``rel`` (relative to the repository)
    holding ``source``; relative imports are resolved against the module's package."""
    package = ["evpipe", *rel.parent.parts]
    found = []
    for node in ast.walk(ast.parse(source, str(rel))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [".".join([*base, node.module] if node.module else base)]
            else:
                names = [node.module or ""]
        else:
            continue
        found += [(node.lineno, layer) for name in names if (layer := _layer_of_import(name))]
    return found


def _modules() -> list[tuple[PurePosixPath, str]]:
    paths = sorted(p for layer in RANK for p in (REPO / layer).rglob("*.py") if "checkpoints" not in p.parts)
    return [(PurePosixPath(p.relative_to(REPO).as_posix()), p.read_text()) for p in paths]


def test_no_module_imports_a_higher_layer():
    violations = []
    for rel, source in _modules():
        own = rel.parts[0]
        for line, layer in _imported_layers(rel, source):
            if RANK[layer] > RANK[own] and (str(rel), layer) not in ALLOWED_UPWARD:
                violations.append(f"{rel}:{line} ({own}) imports evpipe.{layer}")
    assert not violations, "imports against the layer order runtime <- kernels <- nodes <- tools:\n" + "\n".join(
        violations)


def test_the_allowed_exceptions_are_still_needed():
    """An exception that no longer matches any import is removed, so the list cannot silently widen the rule."""
    used = {(str(rel), layer) for rel, source in _modules() for _, layer in _imported_layers(rel, source)}
    assert used >= ALLOWED_UPWARD, f"stale ALLOWED_UPWARD entries: {ALLOWED_UPWARD - used}"


@pytest.mark.parametrize("source, expected", [
    ("from evpipe.tools.evaluate import x\n", ["tools"]),
    ("def f():\n    import evpipe.tools.dataset\n", ["tools"]),
    ("from ...tools import evaluate\n", ["tools"]),
    ("from . import psf\n", ["nodes"]),
    ("import numpy\nfrom evpipe_extra import y\n", []),
])
def test_the_checker_sees_every_import_form(source, expected):
    assert [layer for _, layer in _imported_layers(PurePosixPath("nodes/restore/node.py"), source)] == expected
