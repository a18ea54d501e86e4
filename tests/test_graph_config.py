"""Graph validation: every mistake is reported with file, line and a fix, before any process starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from evpipe.runtime.graph import ConfigError, load_graph
from tests.conftest import evpipe

GOOD = """\
name: t
nodes:
  src: {type: event_generator, params: {packets: 3}}
  filt: {type: event_filter}
  sink: {type: metrics}
edges:
  - src.events -> filt.events
  - {edge: filt.events -> sink.in, policy: latest}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


def test_valid_graph_loads_with_defaults_and_policies(tmp_path):
    graph = load_graph(_write(tmp_path, GOOD))
    assert list(graph.nodes) == ["src", "filt", "sink"]
    assert graph.nodes["src"].params["packets"] == 3 and graph.nodes["src"].params["packet_events"] == 10_000
    assert [e.policy for e in graph.edges] == ["lossless", "latest"]
    assert graph.edges[0].kind == "events"


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("type: event_filter", "type: event_filtr", 4, "unknown node type 'event_filtr'; did you mean 'event_filter'"),
        ("- src.events -> filt.events", "- src.events -> filt.frames", 7, "has no input port 'frames'"),
        ("- src.events -> filt.events", "- src.evnts -> filt.events", 7, "has no output port 'evnts'"),
        ("- src.events -> filt.events", "- srcc.events -> filt.events", 7, "unknown node 'srcc'"),
        ("- src.events -> filt.events", "- src.events => filt.events", 7, "malformed edge"),
        ("params: {packets: 3}", "params: {packets: three}", 3, "parameter 'packets': expected int"),
        ("params: {packets: 3}", "params: {packets: 0}", 3, "below the minimum"),
        ("params: {packets: 3}", "params: {packetz: 3}", 3, "unknown parameter 'packetz'"),
        ("policy: latest", "policy: newest", 8, "unknown delivery policy 'newest'"),
        ("name: t", "name: t\nsettings: {transport: udp}", 2, "unknown transport 'udp'"),
        ("nodes:", "nodez: {}\nnodes:", 2, "unknown top-level key 'nodez'"),
        ("  - src.events -> filt.events\n", "", 4, "node 'filt' (event_filter) has no input connected"),
        ("filt: {type: event_filter}", "filt: {type: event_filter}\n  vid: {type: metrics}", None, None),
    ],
)
def test_each_mistake_names_file_line_and_fix(tmp_path, old, new, line, message):
    text = GOOD.replace(old, new)
    assert text != GOOD
    path = _write(tmp_path, text)
    if message is None:  # a sink with no input: reported too
        with pytest.raises(ConfigError, match=r"'vid' .* has no input connected"):
            load_graph(path)
        return
    with pytest.raises(ConfigError) as info:
        load_graph(path)
    assert info.value.line == line, str(info.value)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{path}:{line}: ")



def test_cycle_is_reported_with_its_path(tmp_path):
    text = """\
nodes:
  src: {type: event_generator}
  a: {type: event_filter}
  b: {type: event_filter}
edges:
  - src.events -> a.events
  - a.events -> b.events
  - b.events -> a.events
"""
    with pytest.raises(ConfigError, match=r":8: cycle in graph: a -> b -> a"):
        load_graph(_write(tmp_path, text))


def test_invalid_yaml_syntax_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"g.yaml:3: invalid YAML"):
        load_graph(_write(tmp_path, "nodes:\n  src: {type: event_generator\n  x: 1\n"))


def test_set_overrides_are_typed_and_validated(tmp_path):
    path = _write(tmp_path, GOOD)
    assert load_graph(path, ["src.packets=7"]).nodes["src"].params["packets"] == 7
    with pytest.raises(ConfigError, match="expected int"):
        load_graph(path, ["src.packets=abc"])
    with pytest.raises(ConfigError, match="bad override"):
        load_graph(path, ["nosuch.packets=1"])


def test_user_node_by_dotted_path(tmp_path):
    text = GOOD.replace("type: event_filter", "type: evpipe.nodes.transforms.filter:EventFilter")
    assert load_graph(_write(tmp_path, text)).nodes["filt"].cls.__name__ == "EventFilter"
    bad = GOOD.replace("type: event_filter", "type: json:dumps")
    with pytest.raises(ConfigError, match="is not an evpipe Node class"):
        load_graph(_write(tmp_path, bad))


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    path = _write(tmp_path, GOOD.replace("type: event_filter", "type: event_filtr"))
    for command in ("run", "graph"):
        proc = evpipe(command, str(path), timeout=60)
        assert proc.returncode == 2
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}:4: "), proc.stderr


def test_cli_graph_prints_mermaid_and_nodes_lists_types(tmp_path):
    proc = evpipe("graph", str(_write(tmp_path, GOOD)), timeout=60)
    assert proc.returncode == 0 and "flowchart LR" in proc.stdout and "filt -.->|events → in (events, latest)| sink" \
        in proc.stdout
    proc = evpipe("nodes", timeout=60)
    assert proc.returncode == 0 and "event_generator" in proc.stdout and "packet_events" in proc.stdout


def test_a_missing_input_file_is_a_configuration_error_before_any_process_starts(tmp_path):
    """The README's `evpipe run configs/replay_to_deblur.yaml` without a recording: exit 2 with the file and line
    of the parameter and how to set it, in well under the time a node process takes to start."""
    config = Path(__file__).resolve().parents[1] / "configs" / "replay_to_deblur.yaml"
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if "recording.aedat4" in text
                and text.strip().startswith("path:"))
    proc = evpipe("run", str(config), "--report", str(tmp_path / "r.json"), timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{config}:{line}: node 'replay': parameter 'path'" in proc.stderr
    assert str(tmp_path / "recording.aedat4") in proc.stderr and "--set replay.path=PATH" in proc.stderr
    assert "running graph" not in proc.stdout and not (tmp_path / "r.json").exists()

    proc = evpipe("run", str(config), "--set", "replay.path=elsewhere.aedat4", timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "parameter 'path' (given with --set)" in proc.stderr


def test_input_paths_are_checked_but_built_in_names_and_existing_files_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = ("nodes:\n  sim: {type: simulator, params: {scene: SCENE, duration_s: 0.1}}\n"
            "  sink: {type: metrics}\nedges:\n  - sim.events -> sink.in\n")
    for scene in ("coffee", "log_ramp"):
        assert load_graph(_write(tmp_path, text.replace("SCENE", scene))).nodes["sim"].params["scene"] == scene
    with pytest.raises(ConfigError, match=r"g.yaml:2: node 'sim': parameter 'scene': no such file .*clip.mp4"):
        load_graph(_write(tmp_path, text.replace("SCENE", "clip.mp4")))
    (tmp_path / "clip.mp4").touch()
    assert load_graph(_write(tmp_path, text.replace("SCENE", "clip.mp4"))).nodes["sim"].params["scene"] == "clip.mp4"
