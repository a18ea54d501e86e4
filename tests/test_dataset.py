"""Dataset builder and loader: events equal the simulator run directly, blurry frames are means of
their sub-frames, splits never share a source, views return batchable float32 dicts."""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from evpipe.kernels import simulate_events
from evpipe.tools import make_dataset as md
from evpipe.tools.dataset import (
    ClipView,
    DeblurView,
    EventDataset,
    InterpolationView,
    PredictionView,
    default_dataset_path,
    luminance,
)
from tests.conftest import SHARED_DATA

SMALL = md.BuildConfig(size=64, aps_per_sequence=7, sequences_per_image=2, sequences_per_clip=1)
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass")


def _sources(with_clip: bool) -> list[md.Source]:
    sources: list[md.Source] = [md.ImageSource(f"skimage/{n}", f"skimage.data.{n}") for n in PHOTOS]
    if with_clip and SHARED_DATA.is_dir():
        sources.append(md.ClipSource("clip/02_hummingbird", str(SHARED_DATA / "video_gallery" / "02_hummingbird.mp4")))
        sources.append(md.ClipSource("clip/bedroom", str(SHARED_DATA / "video_bedroom" / "frames")))
    return sources


@pytest.fixture(scope="module")
def gray_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "small"
    md.build_dataset(out, SMALL, _sources(with_clip=True), "small", progress=False)
    return out


@pytest.fixture(scope="module")
def colour_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "small-rgb"
    config = dataclasses.replace(SMALL, color=True, sequences_per_image=1)
    md.build_dataset(out, config, _sources(with_clip=False)[:3], "small-rgb", progress=False)
    return out


def _check_events_match_simulator(dataset: EventDataset) -> int:
    checked = 0
    for seq in dataset.sequences:
        with h5py.File(seq.path) as f:
            frames16 = f["frames"][()]
            frames_t = f["frames_t"][()]
            stored = {name: f[f"events/{name}"][()] for name in "txyp"}
            event_index = f["event_index"][()]
        assert frames16.dtype == np.float16
        sim = frames16.astype(np.float32)
        if sim.ndim == 4:
            sim = np.clip(luminance(sim), 0, 1)
        params = {k: seq.meta[k] for k in ("c_pos", "c_neg", "sigma_c", "refractory_us", "noise_rate_hz", "seed")}
        direct = simulate_events(sim, frames_t, **params)
        assert len(direct) == seq.meta["n_events"] > 0
        for name in "txyp":
            np.testing.assert_array_equal(stored[name], getattr(direct, name), err_msg=f"{seq.name} events.{name}")
        # event_index[i] counts the events at or before frame i: slices between frames hold exactly their events
        np.testing.assert_array_equal(event_index, np.searchsorted(direct.t, frames_t, side="right"))
        i, j = 1, seq.n_frames - 1
        between = seq.events_between(i, j)
        assert between.checksum() == direct[(direct.t > frames_t[i]) & (direct.t <= frames_t[j])].checksum()
        checked += 1
    return checked


def test_events_equal_the_simulator_run_directly(gray_dataset):
    assert _check_events_match_simulator(EventDataset(gray_dataset)) >= len(PHOTOS) * 2


def test_colour_frames_and_events_from_luminance(colour_dataset):
    dataset = EventDataset(colour_dataset)
    assert dataset.channels == 3
    with h5py.File(dataset.sequences[0].path) as f:
        assert f["frames"].shape[1:] == (64, 64, 3)
        assert f["blur/frames"].shape[1:] == (64, 64, 3)
    assert _check_events_match_simulator(dataset) == 3
    sample = PredictionView(dataset, split=None, k_max=2)[0]
    assert sample["anchor"].shape == (3, 64, 64) and sample["voxel"].shape == (5, 64, 64)
    # the photo really is in colour: channels differ
    assert np.abs(sample["anchor"][0] - sample["anchor"][2]).mean() > 0.01


def test_blurry_frames_are_the_mean_of_their_sub_frames(gray_dataset):
    for seq in EventDataset(gray_dataset).sequences:
        with h5py.File(seq.path) as f:
            frames16, frames_t, aps = f["frames"][()], f["frames_t"][()], f["aps_index"][()]
            blur = {name: f[f"blur/{name}"][()] for name in ("frames", "first", "last", "exposure_start",
                                                              "exposure_end")}
        count = blur["last"] - blur["first"] + 1
        assert np.all(count == seq.meta["exposure_frames"]) and np.all(count % 2 == 1) and count[0] >= 3
        np.testing.assert_array_equal((blur["first"] + blur["last"]) // 2, aps)  # centred on the APS frame
        for m in range(len(aps)):
            expected = frames16[blur["first"][m] : blur["last"][m] + 1].astype(np.float64).mean(axis=0)
            np.testing.assert_array_equal(blur["frames"][m], expected.astype(np.float16))
            # the window covers exactly the averaged frames' times
            inside = (frames_t >= blur["exposure_start"][m]) & (frames_t < blur["exposure_end"][m])
            np.testing.assert_array_equal(np.flatnonzero(inside), np.arange(blur["first"][m], blur["last"][m] + 1))
        # the blurry frame differs from the sharp one where the scene moved (known exactly for photos)
        if seq.meta["kind"] == "image":
            assert np.abs(blur["frames"].astype(np.float32) - frames16[aps].astype(np.float32)).max() > 0.005


def test_splits_never_share_a_source(gray_dataset):
    meta = json.loads((gray_dataset / "dataset.json").read_text())
    sources = meta["sources"]
    listed = [name for split in ("train", "val", "test") for name in meta["splits"][split]]
    assert sorted(listed) == sorted(sources)  # every source in exactly one split list
    split_of_source: dict[str, set[str]] = {}
    for seq in meta["sequences"]:
        split_of_source.setdefault(seq["source"], set()).add(seq["split"])
        assert seq["split"] == sources[seq["source"]]["split"]
        assert seq["file"].startswith(seq["split"] + "/") and (gray_dataset / seq["file"]).is_file()
    assert all(len(splits) == 1 for splits in split_of_source.values())
    assert {"train", "test"} <= {seq["split"] for seq in meta["sequences"]}
    for split in ("train", "val", "test"):
        in_split = {seq.meta["source"] for seq in EventDataset(gray_dataset, split).sequences}
        assert in_split == {n for n in meta["splits"][split] if n in split_of_source}


def test_split_assignment_of_the_real_sources():
    sources = md.find_sources(SHARED_DATA if SHARED_DATA.is_dir() else None)
    splits = md.assign_splits(sources, md.PRESETS["tiny"])
    assert splits == md.assign_splits(list(reversed(sources)), md.PRESETS["tiny"])  # order-independent
    for kind in ("image", "clip"):
        names = [s.name for s in sources if s.kind == kind]
        if len(names) >= 3:
            assert {splits[n] for n in names} == {"train", "val", "test"}
    # a different seed gives a different assignment
    assert splits != md.assign_splits(sources, dataclasses.replace(md.PRESETS["tiny"], seed=1))


def test_motion_per_step_is_at_most_one_pixel_for_photos(gray_dataset):
    for seq in EventDataset(gray_dataset).sequences:
        if seq.meta["kind"] == "image":
            assert seq.meta["max_step_motion_px"] <= 1.0 or seq.meta["substeps"] == SMALL.max_substeps
        assert seq.meta["substeps"] >= SMALL.min_substeps
        assert np.all(np.diff(seq.frames_t) > 0)
        np.testing.assert_array_equal(seq.aps_index, seq.meta["substeps"] * np.arange(1, SMALL.aps_per_sequence + 1))


def test_build_is_deterministic(tmp_path):
    source = md.ImageSource("skimage/camera", "skimage.data.camera")
    for split in ("train", "val", "test"):
        (tmp_path / "a" / split).mkdir(parents=True)
        (tmp_path / "b" / split).mkdir(parents=True)
    config = dataclasses.replace(SMALL, sequences_per_image=1)
    first = md.build_source(source, "train", config, tmp_path / "a")
    second = md.build_source(source, "train", config, tmp_path / "b")
    assert first == second
    with h5py.File(tmp_path / "a" / first[0]["file"]) as fa, h5py.File(tmp_path / "b" / first[0]["file"]) as fb:
        np.testing.assert_array_equal(fa["frames"][()], fb["frames"][()])
        np.testing.assert_array_equal(fa["events/t"][()], fb["events/t"][()])


def test_prediction_view_dlt_samples(gray_dataset):
    dataset = EventDataset(gray_dataset, "train")
    view = PredictionView(dataset, k_max=3, bins=4, with_events=True)
    assert len(view) == sum(seq.n_aps - k for seq in dataset.sequences for k in (1, 2, 3))
    ks = set()
    for index in np.linspace(0, len(view) - 1, 12).astype(int):
        sample = view[index]
        seq = dataset.sequences[int(sample["sequence"])]
        a, k = int(sample["aps"]), int(sample["k"])
        ks.add(k)
        assert sample["anchor"].dtype == np.float32 and sample["anchor"].shape == (1, 64, 64)
        assert sample["anchor"].min() >= 0.0 and sample["anchor"].max() <= 1.0
        np.testing.assert_array_equal(sample["target"], seq.aps_frames(a + k))
        assert sample["dt_us"] == sample["t_target"] - sample["t_anchor"] > 0
        events = sample["events"]
        assert np.all((events.t > sample["t_anchor"]) & (events.t <= sample["t_target"]))
        assert sample["voxel"].shape == (4, 64, 64) and sample["voxel"].dtype == np.float32
        # each event spreads its polarity over two adjacent bins: the grid sums to the polarity sum
        assert sample["voxel"].sum() == pytest.approx(float(events.p.sum()), abs=1e-2)
    assert ks == {1, 2, 3}


def test_views_batch_with_a_torch_dataloader(gray_dataset):
    torch = pytest.importorskip("torch")
    view = PredictionView(gray_dataset, split="train", k_max=2, bins=3)
    view[0]  # opens a file handle: the view must still pickle for DataLoader workers
    pickle.loads(pickle.dumps(view))[1]
    batch = next(iter(torch.utils.data.DataLoader(view, batch_size=4, shuffle=True)))
    assert batch["anchor"].shape == (4, 1, 64, 64) and batch["voxel"].shape == (4, 3, 64, 64)
    assert batch["k"].dtype == torch.int64


def test_deblur_interpolation_and_clip_views(gray_dataset):
    dataset = EventDataset(gray_dataset, "train")
    deblur = DeblurView(dataset, bins=3, with_events=True)
    assert len(deblur) == sum(seq.n_aps for seq in dataset.sequences)
    sample = deblur[len(deblur) // 2]
    seq = dataset.sequences[int(sample["sequence"])]
    np.testing.assert_array_equal(sample["blurry"], seq.blurry(int(sample["aps"])))
    np.testing.assert_array_equal(sample["sharp"], seq.aps_frames(int(sample["aps"])))
    assert sample["exposure_start"] < sample["t"] < sample["exposure_end"]
    events = sample["events"]
    assert len(events) > 0
    assert np.all((events.t >= sample["exposure_start"]) & (events.t < sample["exposure_end"]))
    assert sample["n_samples"] == seq.meta["exposure_frames"]

    longer = DeblurView(dataset, exposure_intervals=(0.5, 1.9), seed=3, with_events=True)
    for index in (0, len(longer) // 3, len(longer) - 1):
        sample, again = longer[index], longer[index]
        np.testing.assert_array_equal(sample["blurry"], again["blurry"])  # reproducible per index
        seq = dataset.sequences[int(sample["sequence"])]
        i, half = int(seq.aps_index[int(sample["aps"])]), int(sample["n_samples"]) // 2
        assert 1 <= half <= max(seq.meta["substeps"] - 1, 1)
        frames = seq.frames(slice(i - half, i + half + 1))
        np.testing.assert_allclose(sample["blurry"], frames.astype(np.float64).mean(axis=0), atol=1e-6)
        inside = (seq.frames_t >= sample["exposure_start"]) & (seq.frames_t < sample["exposure_end"])
        np.testing.assert_array_equal(np.flatnonzero(inside), np.arange(i - half, i + half + 1))
        assert np.all((sample["events"].t >= sample["exposure_start"]) & (sample["events"].t < sample["exposure_end"]))
    with pytest.raises(ValueError, match="exposure_intervals"):
        DeblurView(dataset, exposure_intervals=2.5)

    triplets = InterpolationView(dataset, spacing=1, context=True, bins=2)
    assert len(triplets) == sum(seq.n_aps - 6 for seq in dataset.sequences)
    sample = triplets[0]
    seq = dataset.sequences[int(sample["sequence"])]
    a = int(sample["aps"])
    assert a == 2
    for key, offset in (("frame0", 0), ("middle", 1), ("frame1", 2), ("before", -2), ("after", 4)):
        np.testing.assert_array_equal(sample[key], seq.aps_frames(a + offset))
    assert sample["t0"] < sample["t_middle"] < sample["t1"] and sample["voxel"].shape == (2, 64, 64)

    clips = ClipView(dataset, length=4, stride=1)
    assert len(clips) == sum(seq.n_aps - 3 for seq in dataset.sequences)
    clip = clips[1]
    assert clip["frames"].shape == (4, 1, 64, 64) and np.all(np.diff(clip["t"]) > 0)


def test_loader_errors_name_the_problem(tmp_path, gray_dataset):
    with pytest.raises(FileNotFoundError, match="make_dataset"):
        EventDataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match="split"):
        EventDataset(gray_dataset, "training")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset.json").write_text(json.dumps({"format": "other", "version": 7}))
    with pytest.raises(ValueError, match="format 'other' version 7"):
        EventDataset(bad)
    with pytest.raises(ValueError, match="k_min"):
        PredictionView(gray_dataset, k_min=3, k_max=2)


def test_default_location_and_env_override(monkeypatch, tmp_path):
    monkeypatch.delenv("EVPIPE_DATASETS", raising=False)
    assert default_dataset_path() == Path.home() / ".cache" / "evpipe" / "datasets" / "tiny"
    monkeypatch.setenv("EVPIPE_DATASETS", str(tmp_path))
    assert default_dataset_path("full") == tmp_path / "full"


def test_cli_help_and_bad_input(tmp_path, gray_dataset):
    run = [sys.executable, "-m", "evpipe.tools.make_dataset"]
    help_text = subprocess.run([*run, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--preset" in help_text and "tiny" in help_text
    bad = subprocess.run([*run, "--size", "100"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    exists = subprocess.run([*run, "--out", str(gray_dataset)], capture_output=True, text=True)
    assert exists.returncode == 1 and "--overwrite" in exists.stderr


def test_parallel_build_equals_serial(tmp_path):
    config = dataclasses.replace(SMALL, size=32, aps_per_sequence=3, sequences_per_image=1)
    sources = _sources(with_clip=False)[:2]
    serial = md.build_dataset(tmp_path / "serial", config, sources, "x", progress=False)
    parallel = md.build_dataset(tmp_path / "parallel", config, sources, "x", workers=2, progress=False)
    assert serial["sequences"] == parallel["sequences"] and serial["splits"] == parallel["splits"]
    for meta in serial["sequences"]:
        with h5py.File(tmp_path / "serial" / meta["file"]) as a, h5py.File(tmp_path / "parallel" / meta["file"]) as b:
            np.testing.assert_array_equal(a["events/t"][()], b["events/t"][()])
            np.testing.assert_array_equal(a["frames"][()], b["frames"][()])
