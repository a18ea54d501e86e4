"""tools/reliability_report.py: recorded outcomes -> reliability.json -> RELIABILITY.md."""

from __future__ import annotations

import json

import pytest

from evpipe.tools.reliability_report import SECTIONS, main


def test_outcomes_are_collected_and_rendered_with_what_was_not_measured(tmp_path):
    lines = tmp_path / "outcomes.jsonl"
    lines.write_text("\n".join(json.dumps(entry) for entry in [
        {"test": "fuzz_npy", "bad_input": "npy", "examples": 40, "outcomes": {"ok": 1, "error": 38}},
        {"test": "fuzz_npy", "bad_input": "npy", "examples": 40, "outcomes": {"ok": 2, "error": 38}},  # a re-run
        {"test": "wire_limits", "bad_input": "x", "refused": {"max_events": "1000 events exceed max_events=999"}},
        {"test": "something_new", "value": 7},
    ]) + "\n")
    out_json, out_md = tmp_path / "reliability.json", tmp_path / "RELIABILITY.md"
    assert main([str(lines), "--json", str(out_json), "--markdown", str(out_md)]) == 0
    collected = json.loads(out_json.read_text())
    assert collected["results"]["fuzz_npy"]["outcomes"] == {"ok": 2, "error": 38}  # the last outcome is kept
    assert collected["cpus"] > 0 and len(collected["load_average_1_5_15"]) == 3
    markdown = out_md.read_text()
    assert "| reader fuzzing: npy | a clean read or a RecordingError; no crash, no broken promise | 40 mutated " \
           "files: error 38, ok 2 |" in markdown
    assert 'max_events: "1000 events exceed max_events=999"' in markdown
    assert '| something_new | {"value": 7} |' in markdown  # an outcome no section knows is still shown
    expected = sum(len(rows) for _, _, rows in SECTIONS)
    assert markdown.count("**not measured in this run**") == expected - 2
    out_md.unlink()
    assert main(["--render-only", "--json", str(out_json), "--markdown", str(out_md)]) == 0
    assert out_md.read_text() == markdown


def test_bad_input_is_explained(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"test": "x"}\nnot json\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: not an outcome recorded by tests.live_support.record"):
        main([str(bad), "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.jsonl")])
    assert "missing.jsonl does not exist" in capsys.readouterr().err
