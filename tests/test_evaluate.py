"""Evaluation harness: baselines against analytic cases, model registry/plugins, real recordings, CLI outputs."""

from __future__ import annotations

import csv
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evpipe.kernels import simulate_events
from evpipe.kernels.quality import psnr
from evpipe.nodes.predict.integration import fit_event_integration, polarity_sum
from evpipe.nodes.restore.psf import degrade_clip, temporal_psf
from evpipe.runtime.events import Events
from evpipe.tools import evaluate as ev
from evpipe.tools import make_dataset as md
from evpipe.tools.dataset import EventDataset
from evpipe.tools.evaluate.cases import deblur_args

SMALL = md.BuildConfig(size=64, aps_per_sequence=7, sequences_per_image=2)
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass")


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "eval-small"
    sources = [md.ImageSource(f"skimage/{n}", f"skimage.data.{n}") for n in PHOTOS]
    md.build_dataset(out, SMALL, sources, "eval-small", progress=False)
    return out


def _mean_model(context: ev.ModelContext) -> ev.ModelFn:
    """A model given as module:factory in the tests: the mean of the two input frames, darkened."""
    return lambda frame0, frame1, before, after: 0.9 * (frame0 + frame1) / 2


def test_temporal_psf_and_degradation():
    assert temporal_psf("uniform7").sum() == pytest.approx(1.0) and len(temporal_psf("uniform13")) == 13
    gaussian = temporal_psf("gaussian1")
    assert gaussian.sum() == pytest.approx(1.0) and gaussian.argmax() == 3
    with pytest.raises(ValueError, match="uniform7, uniform13 or gaussian1"):
        temporal_psf("box3")
    clip = np.zeros((16, 4, 4), np.float32)
    clip[8] = 1.0
    degraded = degrade_clip(clip, temporal_psf("uniform7"))
    np.testing.assert_allclose(degraded[5:12, 0, 0], 1 / 7, rtol=1e-6)  # an impulse spreads over 7 frames
    assert degraded[4, 0, 0] == 0 and degraded[12, 0, 0] == 0
    ramp = np.arange(16, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    # circular (the default): the first output averages frames (13, 14, 15, 0, 1, 2, 3)
    assert degrade_clip(ramp, temporal_psf("uniform7"))[0, 0, 0] == pytest.approx(48 / 7)
    # replicated edges: frames (0, 0, 0, 0, 1, 2, 3)
    assert degrade_clip(ramp, temporal_psf("uniform7"), "replicate")[0, 0, 0] == pytest.approx(6 / 7)


def test_blend_and_cubic_baselines():
    context = ev.ModelContext("upsample", 8, 8, 1, list)
    blend, cubic = (ev.resolve_model("upsample", name).factory(context) for name in ("blend", "cubic"))
    # a cubic polynomial in time, sampled at t = -2, 0, 2, 4: cubic convolution is exact at t = 1
    poly = lambda t: 0.3 + 0.05 * t + 0.01 * t**2 - 0.002 * t**3  # noqa: E731
    frames = {t: np.full((8, 8), poly(t), np.float32) for t in (-2, 0, 1, 2, 4)}
    middle = cubic(frames[0], frames[2], frames[-2], frames[4])
    np.testing.assert_allclose(middle, frames[1], atol=1e-6)
    np.testing.assert_allclose(blend(frames[0], frames[2], frames[-2], frames[4]), (poly(0) + poly(2)) / 2, atol=1e-6)
    assert not np.allclose(blend(frames[0], frames[2], frames[-2], frames[4]), frames[1], atol=1e-4)


def test_event_integration_recovers_the_simulator_threshold():
    """Brightness ramps simulated with a known threshold: the fit finds it and the prediction lands."""
    rng = np.random.default_rng(0)
    threshold, log_eps, cases = 0.3, 1e-3, []
    for i in range(6):
        start = rng.uniform(0.05, 0.3, (24, 24))
        # log(I + log_eps) moves by k thresholds (and a hair more, so the k-th crossing happens)
        steps = rng.integers(-3, 4, (24, 24))
        change = steps * threshold + 0.005 * np.sign(steps)
        end = np.exp(np.log(start + log_eps) + change) - log_eps
        start, end = start.astype(np.float32), end.astype(np.float32)
        events = simulate_events(np.stack([start, end]), np.array([0, 10_000]), threshold, threshold, 0.0, seed=i)
        cases.append({"anchor": start, "target": end, "events": events, "t_anchor": 0, "t_target": 10_000})
    c, eps, fit_mse = fit_event_integration(cases, 24, 24)
    assert c == pytest.approx(threshold, abs=0.01) and eps == log_eps
    copy_mse = np.mean([(case["anchor"] - case["target"]) ** 2 for case in cases])
    assert fit_mse < 0.05 * copy_mse
    predict = ev.resolve_model("predict", "event-integration").factory(ev.ModelContext("predict", 24, 24, 1,
                                                                                       lambda: cases))
    out = predict(cases[0]["anchor"], cases[0]["events"], 0, 10_000)
    assert out.dtype == np.float32 and np.abs(out - cases[0]["target"]).mean() < 0.02
    colour = predict(np.repeat(cases[0]["anchor"][..., None], 3, -1), cases[0]["events"], 0, 10_000)
    np.testing.assert_allclose(colour[..., 1], out, atol=1e-6)


def test_polarity_sum():
    events = Events.from_arrays(np.array([1, 2, 3, 4]), np.array([0, 0, 2, 2]), np.array([1, 1, 0, 0]),
                                np.array([1, 1, 0, 1]))
    expected = np.zeros((2, 3), np.float32)
    expected[1, 0], expected[0, 2] = 2, 0
    np.testing.assert_array_equal(polarity_sum(events, 2, 3), expected)


def test_edi_baseline_sharpens_long_exposures(dataset_path):
    dataset = EventDataset(dataset_path, "train")
    cases = list(ev.dataset_cases("deblur", dataset, exposure_intervals=1.8))
    blurred = sorted(cases, key=lambda case: -np.abs(case["blurry"] - case["target"]).mean())[:8]
    c, _ = ev.fit_edi(blurred)
    assert 0.05 <= c <= 1.0
    gain = [psnr(case["target"], ev.edi_deblur(*deblur_args(case), c)) - psnr(case["target"], case["blurry"])
            for case in blurred]
    assert np.mean(gain) > 1.0  # dB, on the most blurred samples


def test_registry_plugins_and_module_factories(monkeypatch):
    assert set(ev.BASELINES["predict"]) <= set(ev.available_models("predict"))
    with pytest.raises(ValueError, match=r"unknown for task 'deblur'.*available"):
        ev.resolve_model("deblur", "no-such-model")
    with pytest.raises(ValueError, match="cannot load"):
        ev.resolve_model("deblur", "evpipe.tools.evaluate:no_such_factory")
    spec = ev.resolve_model("upsample", "tests.test_evaluate:_mean_model")
    assert spec.factory is _mean_model
    with pytest.raises(ValueError, match="unknown task"):
        ev.register_model("denoise", "x", _mean_model)
    # a node family publishes models in evpipe.nodes.<task>.evaluation.MODELS
    plugin = types.ModuleType("evpipe.nodes.restore.evaluation")
    plugin.__spec__ = importlib.machinery.ModuleSpec("evpipe.nodes.restore.evaluation", None)
    plugin.MODELS = {"plugin-model": ev.resolve_model("restore", "degraded").factory}
    monkeypatch.setitem(sys.modules, "evpipe.nodes.restore.evaluation", plugin)
    assert ev.resolve_model("restore", "plugin-model").factory is plugin.MODELS["plugin-model"]
    plugin.MODELS = ["not", "a", "dict"]
    with pytest.raises(TypeError, match="MODELS"):
        ev.available_models("restore")


def test_predict_cli_writes_table_json_csv_png(dataset_path, tmp_path, capsys):
    out = tmp_path / "out"
    code = ev.main(["--task", "predict", "--model", "event-integration", "--dataset", str(dataset_path),
                    "--split", "test", "--k", "1", "2", "--fit-samples", "24", "--out", str(out), "--no-real",
                    "--examples", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| eval-small/test | 1 | copy-last |" in printed and "| eval-small/test | 2 | event-integration |" in printed
    report = json.loads((out / "predict_event-integration_test.json").read_text())
    test_sequences = EventDataset(dataset_path, "test").sequences
    n_k1 = sum(seq.n_aps - 1 for seq in test_sequences)
    k1 = report["results"][0]
    assert k1["k"] == 1 and k1["summary"]["copy-last"]["n"] == n_k1
    fitted = k1["summary"]["event-integration"]["fitted"]
    assert 0.02 <= fitted["c"] <= 1.2
    # consecutive k = 1 predictions form chains: a flicker error per method
    assert k1["summary"]["copy-last"]["flicker_x100_mean"] > 0
    assert report["results"][1]["summary"]["copy-last"]["flicker_x100_mean"] is None
    with (out / "predict_event-integration_test_per_sequence.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {row["sequence"] for row in rows} == {seq.name for seq in test_sequences}
    assert len(rows) == 2 * 2 * len(test_sequences)  # methods x k x sequences
    with Image.open(out / "predict_event-integration_test.png") as png:
        assert png.width > 500 and png.height > 300
    markdown = (out / "predict_event-integration_test.md").read_text()
    assert "| data | k | method |" in markdown
    command = f"python -m evpipe.tools.evaluate --task predict --model event-integration --dataset {dataset_path}"
    assert f"Written by `{command} " in markdown


@pytest.mark.parametrize(("task", "model"), [("deblur", "blurry"), ("upsample", "tests.test_evaluate:_mean_model"),
                                             ("restore", "degraded")])
def test_other_tasks_run(dataset_path, tmp_path, task, model, capsys):
    code = ev.main(["--task", task, "--model", model, "--dataset", str(dataset_path), "--max-samples", "3",
                    "--fit-samples", "4", "--out", str(tmp_path), "--examples", "1", "--name", task,
                    "--clip-length", "6"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / f"{task}.json").read_text())
    methods = list(report["results"][0]["summary"])
    assert methods[: len(ev.BASELINES[task])] == list(ev.BASELINES[task])
    if task == "upsample":
        assert methods[-1] == model
        assert f"**{model}** (model)" in capsys.readouterr().out


def test_cli_errors_are_clear(dataset_path, tmp_path, capsys):
    assert ev.main(["--task", "predict", "--model", "nope", "--dataset", str(dataset_path), "--no-real"]) == 1
    assert "unknown for task 'predict'" in capsys.readouterr().err
    assert ev.main(["--task", "predict", "--model", "copy-last", "--dataset", str(tmp_path / "missing")]) == 1
    assert "no dataset here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ev.main(["--task", "predict", "--model", "copy-last", "--k", "0"])


def test_real_recordings(shared_data):
    recordings = {r.name: r for r in ev.load_real_recordings(shared_data)}
    assert set(recordings) == {"davis346_street", "ecd_slider_depth"}
    assert recordings["davis346_street"].frames.shape == (45, 256, 336)
    assert recordings["ecd_slider_depth"].frames.shape == (87, 176, 240)
    for recording in recordings.values():
        height, width = recording.frames.shape[1:]
        events = recording.events
        assert events.x.max() < width and events.y.max() < height and np.all(np.diff(events.t) >= 0)
        assert recording.frames.min() >= 0 and recording.frames.max() <= 1
        cases = recording.cases()
        assert len(cases) == len(recording.frames) - 1
        for case in cases[::20]:
            assert np.all((case["events"].t > case["t_anchor"]) & (case["events"].t <= case["t_target"]))
        assert sum(len(case["events"]) for case in cases) > 10_000
    # 25 fps APS frames, timestamps kept in µs as recorded
    assert np.all(np.abs(np.diff(recordings["davis346_street"].frames_t) - 40_000) <= 1)
