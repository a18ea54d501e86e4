"""Packaging: every package folder is listed in pyproject (or its modules would be missing from a wheel)."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO, evpipe

FOLDERS = {"runtime": "evpipe.runtime", "nodes": "evpipe.nodes", "kernels": "evpipe.kernels", "tools": "evpipe.tools",
           "configs": "evpipe.configs"}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, package in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            if "checkpoints" in rel.parts:
                continue
            found.add(".".join([package, *rel.parts]) if rel.parts else package)
    assert found - listed == set(), f"add these to [tool.setuptools] packages in pyproject.toml: {found - listed}"


def test_custom_node_example_graph_runs(tmp_path):
    proc = evpipe("run", str(REPO / "configs" / "custom_node_example.yaml"), "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    assert "hot -> metrics" in proc.stdout or "source -> hot -> metrics" in proc.stdout


def test_graph_png_is_drawn(tmp_path):
    out = tmp_path / "g.png"
    proc = evpipe("graph", str(REPO / "configs" / "custom_node_example.yaml"), "--png", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
