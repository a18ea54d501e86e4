"""``python -m evpipe.tools.evaluate --videos DIR``: real-clip evaluation of upsample and restore in colour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evpipe.tools.evaluate.cli import main
from evpipe.tools.evaluate.videos import find_clips, read_clip, upsample_cases

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clip(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """A smooth colour scene panning 1 px a frame: uint8 (frames, height, width, 3)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = np.random.default_rng(seed).random(3) * 6
    clip = np.stack([np.stack([0.5 + 0.3 * np.sin((xx + t) / (3 + c) + phase[c]) * np.cos(yy / 5) for c in range(3)],
                              axis=-1) for t in range(frames)])
    return np.round(clip * 255).astype(np.uint8)


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    """A folder with a video file and a folder of PNG frames (``name/frames/*.png``), 64 px wide."""
    from PIL import Image

    from tests.data_fixtures.recordings import write_video

    folder = tmp_path / "videos"
    frames = folder / "pngclip" / "frames"
    frames.mkdir(parents=True)
    write_video(folder / "movie.mp4", _clip(9, 32, 64, 0), rate=25)
    for i, image in enumerate(_clip(9, 32, 64, 1)):
        Image.fromarray(image).save(frames / f"{i:05d}.png")
    return folder


def test_clips_are_found_read_and_scaled(videos: Path) -> None:
    clips = find_clips(videos)
    assert [p.name for p in clips] == ["movie.mp4", "frames"]
    frames = read_clip(clips[1], 32, 5)
    assert len(frames) == 5 and frames[0].shape == (16, 32, 3) and frames[0].dtype == np.float32
    cases = upsample_cases(read_clip(clips[1], None, None), "pngclip")
    assert [c["index"] for c in cases] == [1, 3, 5, 7]  # the dropped frames, scored from their kept neighbours
    with pytest.raises(FileNotFoundError, match="no video files"):
        find_clips(videos / "pngclip" / "frames")


def test_videos_mode_scores_upsample_and_restore_in_colour(videos: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "reports"
    assert main(["--task", "upsample", "--model", "hifi-base", "--videos", str(videos), "--width", "32",
                 "--out", str(out), "--name", "up", "--examples", "1"]) == 0
    report = json.loads((out / "up.json").read_text())
    assert [r["data"] for r in report["results"]] == ["movie", "pngclip"]
    summary = report["results"][1]["summary"]
    assert set(summary) == {"blend", "cubic", "aligned-blend", "hifi-base"}
    assert summary["blend"]["n"] == 4 and summary["blend"]["luma_psnr_mean"] != summary["blend"]["psnr_mean"]
    assert "luma PSNR (dB)" in (out / "up.md").read_text() and (out / "up.png").is_file()

    monkeypatch.setenv("EVPIPE_DDS_NFE", "2")
    assert main(["--task", "restore", "--model", "dds", "cg", "admm-tv", "--videos", str(videos), "--width", "32",
                 "--clip-length", "8", "--degradation", "uniform7", "gaussian1", "--out", str(out), "--name", "re",
                 "--examples", "1"]) == 0
    report = json.loads((out / "re.json").read_text())
    assert report["settings"]["bits"] == 8  # a video's levels unless --bits says otherwise
    assert [r["data"] for r in report["results"]] == ["movie uniform7", "movie gaussian1", "pngclip uniform7",
                                                      "pngclip gaussian1"]
    summary = report["results"][0]["summary"]
    assert set(summary) == {"degraded", "dds", "cg", "admm-tv"} and summary["dds"]["n"] == 1
    # CG-only undoes a box PSF the measurement keeps: the scores see the restoration.
    assert summary["cg"]["psnr_mean"] > summary["degraded"]["psnr_mean"]


def test_videos_mode_errors_name_the_problem(videos: Path, tmp_path: Path, capsys) -> None:
    assert main(["--task", "predict", "--model", "copy-last", "--videos", str(videos), "--out", str(tmp_path)]) == 1
    assert "task 'predict' takes no videos" in capsys.readouterr().err
    assert main(["--task", "upsample", "--model", "blend", "--videos", str(tmp_path / "none"),
                 "--out", str(tmp_path)]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert main(["--task", "restore", "--model", "cg", "--videos", str(videos), "--width", "32", "--clip-length",
                 "16", "--out", str(tmp_path)]) == 1
    assert "too few for restore" in capsys.readouterr().err
