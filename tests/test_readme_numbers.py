"""README.md and benchmarks/RESULTS.md against the benchmark files they cite.

Two rules, both checked on the text as committed:

* every cited benchmark file exists: a backticked path under ``benchmarks/`` (or a bare ``name.json``,
  ``.md``, ``.png`` or ``.csv``, read relative to ``benchmarks/``), ``{a,b}`` alternatives expanded;
* every tagged figure equals the value it cites. A figure is tagged by writing it as a Markdown link
  to its JSON with the value's key path as the link title::

      p50 [27.5 ms](benchmarks/latency.json "graph[backend=onnxruntime,speed=1.0].p50_ms")

  The first number in the link text must equal the JSON value to the decimals written (``/ 1e6``,
  ``* 100`` after the path scale the value first). Key paths: ``a.b.0.c`` for keys and list indices,
  ``a[k=v,k2=v2]`` for the list item whose fields match.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "benchmarks/RESULTS.md")
CITED_FILE = re.compile(r"`((?:benchmarks/)?[\w./{},-]+\.(?:json|md|png|csv))`")
TAGGED_FIGURE = re.compile(r"\[([^\]]+)\]\((benchmarks/[\w./-]+\.json) \"([^\"]+)\"\)")
NUMBER = re.compile(r"[-−]?\d[\d,]*(?:\.\d+)?")
SCALE = re.compile(r"^(.*?)\s*(?:([*/])\s*([\d.e+-]+))?$")


def expand_braces(text: str) -> list[str]:
    """'a{,_b}.json' -> ['a.json', 'a_b.json'] (any number of brace groups)."""
    parts = re.split(r"\{([^}]*)\}", text)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def cited_files(text: str, bare_names: bool = True) -> list[str]:
    """Backticked benchmark files in ``text``; with ``bare_names`` False only paths under ``benchmarks/`` count
    (the README also names files a user's run writes, such as ``report.json``)."""
    found = {path for m in CITED_FILE.finditer(text) for path in expand_braces(m.group(1))}
    return sorted(path for path in found if bare_names or path.startswith("benchmarks/"))


def resolve_citation(path: str) -> Path:
    return ROOT / path if path.startswith("benchmarks/") else ROOT / "benchmarks" / path


def lookup(document: object, key_path: str) -> object:
    """The value at ``key_path`` (see the module docstring) in parsed JSON; KeyError naming the step."""
    value = document
    for step in re.findall(r"[^.\[\]]+(?:\[[^\]]*\])?", key_path):
        name, _, selector = step.partition("[")
        if isinstance(value, list) and name.isdigit():
            value = value[int(name)]
        elif isinstance(value, dict) and name in value:
            value = value[name]
        else:
            raise KeyError(f"{key_path!r}: no {name!r}")
        if selector:
            wanted = dict(item.split("=", 1) for item in selector.rstrip("]").split(","))
            matches = [item for item in value if all(_same(item.get(k), v) for k, v in wanted.items())]
            if len(matches) != 1:
                raise KeyError(f"{key_path!r}: {len(matches)} items match [{selector}")
            value = matches[0]
    return value


def _same(field: object, written: str) -> bool:
    if isinstance(field, (int, float)) and not isinstance(field, bool):
        try:
            return float(field) == float(written)
        except ValueError:
            return False
    return str(field) == written


def figure_errors(text: str, root: Path = ROOT) -> list[str]:
    """One line per tagged figure in ``text`` that its JSON does not hold (empty when all agree)."""
    errors = []
    loaded: dict[Path, object] = {}
    for m in TAGGED_FIGURE.finditer(text):
        label, path, tag = m.groups()
        file = root / path
        if not file.exists():
            errors.append(f"{label!r}: {path} does not exist")
            continue
        key_path, op, factor = SCALE.match(tag).groups()
        try:
            value = lookup(loaded.setdefault(file, json.loads(file.read_text())), key_path)
        except (KeyError, IndexError, TypeError) as error:
            errors.append(f"{label!r}: {path}: {error}")
            continue
        if not isinstance(value, (int, float)):
            errors.append(f"{label!r}: {path} {key_path!r} is {value!r}, not a number")
            continue
        if op:
            value = value * float(factor) if op == "*" else value / float(factor)
        number = NUMBER.search(label)
        if number is None:
            errors.append(f"{label!r}: no number in the link text")
            continue
        digits = number.group().replace("−", "-").replace(",", "")
        decimals = len(digits.partition(".")[2])
        if abs(float(digits) - value) > 0.5 * 10**-decimals + 1e-9:
            errors.append(f"{label!r}: {path} {tag!r} is {value:.{decimals + 2}f}")
    return errors


@pytest.mark.parametrize("document", DOCUMENTS)
def test_cited_benchmark_files_exist(document: str) -> None:
    text = (ROOT / document).read_text()
    in_benchmarks = document.startswith("benchmarks/")  # a bare name there is a sibling benchmark file
    missing = [path for path in cited_files(text, in_benchmarks) if not resolve_citation(path).exists()]
    assert not missing, f"{document} cites files that do not exist: {missing}"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_tagged_figures_match_their_json(document: str) -> None:
    text = (ROOT / document).read_text()
    assert TAGGED_FIGURE.search(text), f"{document} tags no figure with its JSON"
    assert figure_errors(text) == []


def test_measured_results_figures_are_tagged() -> None:
    """Each bullet of README's Measured results that states a speed, latency or memory figure tags it."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Measured results", 1)[1].split("\n## ", 1)[0]
    for topic in ("Transport", "Kernels", "Predictor graph latency", "Deblur node in a real graph", "Working memory"):
        bullet = next((b for b in section.split("\n- ") if topic in " ".join(b.split())), None)
        assert bullet is not None, f"README Measured results has no bullet on {topic}"
        assert TAGGED_FIGURE.search(bullet), f"README Measured results: the {topic} figures cite no JSON value"


def test_checker_catches_a_wrong_figure(tmp_path: Path) -> None:
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "x.json").write_text(json.dumps(
        {"rows": [{"size": 1000, "rate": 123456789.0}, {"size": 10, "rate": 5.0}], "ratio": 0.674}))
    good = ('[123.5 M/s](benchmarks/x.json "rows[size=1000].rate / 1e6") and '
            '[0.67](benchmarks/x.json "ratio") and [67%](benchmarks/x.json "ratio * 100")')
    assert figure_errors(good, tmp_path) == []
    wrong = ('[124.0 M/s](benchmarks/x.json "rows[size=1000].rate / 1e6") [0.68](benchmarks/x.json "ratio") '
             '[1](benchmarks/x.json "rows[size=7].rate") [2](benchmarks/gone.json "ratio") '
             '[3](benchmarks/x.json "missing.key")')
    errors = figure_errors(wrong, tmp_path)
    assert len(errors) == 5, errors
    assert "124.0 M/s" in errors[0] and "123.457" in errors[0]
    assert "0 items match" in errors[2] and "does not exist" in errors[3] and "missing" in errors[4]


def test_brace_citations_expand() -> None:
    assert expand_braces("deblur_eval/t{,_e1.5}.json") == ["deblur_eval/t.json", "deblur_eval/t_e1.5.json"]
    assert cited_files("see `benchmarks/a.json` / `b.md` and `pyproject.toml`") == ["b.md", "benchmarks/a.json"]
