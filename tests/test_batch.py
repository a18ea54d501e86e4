"""``evpipe batch`` on a real two-node Ray cluster (a head and a second node on this machine): every
output equals the serial command's, a worker killed mid-run costs one retry and nothing else, and an
interrupted batch resumes where it stopped. Plus the checks that need no cluster."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evpipe.nodes.restore.windows import window_spans
from evpipe.tools.batch_manifest import MANIFEST
from evpipe.tools.small_clips import small_clip
from tests.conftest import SHARED_DATA, _env, evpipe

RECORDINGS = ("dvxplorer/dvxplorer_sample.aedat4", "davis346_street/davis346_street_first1.8s_zstd.aedat4",
              "davis346_street/davis346_street_first1.8s.h5", "atis_es/dvs.es")
VIDEOS = ("01_dog", "02_cups", "04_coffee", "06_pingpong")
RESTORE_OPTIONS = ("--degradation", "uniform7", "--nfe", "2", "--cg-steps", "1", "--window", "8", "--overlap", "2")
GRAPH = "replay_to_voxels.yaml"
OUTPUTS = ("voxels.npz", "events.aedat4")
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real recordings not available: {SHARED_DATA} "
                                "is absent (a fresh clone has no ../shared)")


# -- without a cluster ------------------------------------------------------------------------------------
def test_without_ray_the_command_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['ray'] = None  # what an environment without the extra sees\n"
            "from evpipe.runtime.cli import main\n"
            f"sys.exit(main(['batch', 'replay_to_voxels.yaml', '--inputs', 'x', '--out', '{tmp_path}']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2
    assert "pip install 'evpipe[batch]'" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--inputs", "no/such/*.aedat4"), "matches no file"),
    (("--inputs", "*.toml", "--param", "replay.speedy"), "has no parameter 'speedy'"),
    (("--inputs", "*.toml", "--param", "nosuch.path"), "NODE one of replay, voxelizer"),
])
def test_bad_inputs_and_parameters_are_refused_before_ray_starts(tmp_path, args, message):
    pytest.importorskip("ray", reason="Ray is the optional extra evpipe[batch]")
    proc = evpipe("batch", GRAPH, *args, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_window_spans_cover_the_clip_as_the_node_restores_it():
    assert window_spans(0, 8, 2) == []
    assert window_spans(5, 8, 2) == [(0, 5)]
    assert window_spans(8, 8, 2) == [(0, 8)]
    assert window_spans(20, 8, 2) == [(0, 8), (6, 14), (12, 20)]
    assert window_spans(21, 8, 2) == [(0, 8), (6, 14), (12, 20), (18, 21)]
    for n in range(1, 40):
        spans = window_spans(n, 16, 4)
        assert spans[0][0] == 0 and spans[-1][1] == n
        for (_, stop), (start, _) in itertools.pairwise(spans):
            assert stop - start == 4  # consecutive windows share exactly the overlap


# -- on a two-node cluster ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("ray", reason="Ray is the optional extra evpipe[batch]")
    from tests.ray_cluster import RayCluster

    running = RayCluster(tmp_path_factory.mktemp("ray") / "r")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """The four recordings and each one's serial `evpipe run` outputs."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not available: {SHARED_DATA} is absent")
    serial = tmp_path_factory.mktemp("serial")
    inputs = [SHARED_DATA / name for name in RECORDINGS]
    for path in inputs:
        sets = [f"replay.path={path}", *(f"{node}.path={serial / path.stem / name}"
                                         for node, name in zip(("voxels", "recorder"), OUTPUTS, strict=True))]
        proc = evpipe("run", GRAPH, *[x for s in sets for x in ("--set", s)], timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return inputs, serial


def batch(cluster, out: Path, inputs: list[Path], *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    args = ["batch", GRAPH, *[x for p in inputs for x in ("--inputs", str(p))], "--out", str(out),
            "--address", cluster.address, *extra]
    return evpipe(*args, timeout=timeout, env=cluster.env)


def start_batch(cluster, out: Path, inputs: list[Path]) -> subprocess.Popen:
    args = [sys.executable, "-m", "evpipe.runtime.cli", "batch", GRAPH,
            *[x for p in inputs for x in ("--inputs", str(p))], "--out", str(out), "--address", cluster.address]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(cluster.env))


def attempts(out: Path) -> list[dict]:
    log = out / ".batch" / "attempts.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def manifest(out: Path) -> dict:
    path = out / MANIFEST
    return json.loads(path.read_text())["inputs"] if path.exists() else {}


def assert_same_as_serial(out: Path, serial: Path, inputs: list[Path]) -> None:
    for path in inputs:
        for name in OUTPUTS:
            produced, reference = out / path.stem / name, serial / path.stem / name
            assert produced.read_bytes() == reference.read_bytes(), f"{produced} differs from the serial {reference}"


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
@needs_data
def test_graph_batch_on_two_nodes_equals_the_serial_runs(cluster, recordings, tmp_path):
    inputs, serial = recordings
    proc = batch(cluster, tmp_path / "out", inputs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_as_serial(tmp_path / "out", serial, inputs)
    report = json.loads((tmp_path / "out" / "batch_report.json").read_text())
    assert report["totals"]["done"] == 4 and report["totals"]["workers"] == 2
    for row in report["inputs"]:  # the graph report's figures reach the summary
        assert row["attempts"] == 1 and row["dropped"] == 0 and row["lost"] == 0 and row["latency_p50_ms"] > 0
    assert "| dvs | done | 1 |" in (tmp_path / "out" / "batch_report.md").read_text()

    again = batch(cluster, tmp_path / "out", inputs)  # everything finished: nothing runs again
    assert again.returncode == 0, again.stderr[-3000:]
    assert {row["status"] for row in json.loads((tmp_path / "out" / "batch_report.json").read_text())["inputs"]} \
        == {"skipped"}
    assert len(attempts(tmp_path / "out")) == 4


@pytest.mark.slow
@needs_data
def test_a_worker_killed_mid_run_is_retried_and_nothing_runs_twice(cluster, recordings, tmp_path):
    inputs, serial = recordings
    out = tmp_path / "out"
    proc = start_batch(cluster, out, inputs)
    try:
        wait_for(lambda: attempts(out), 120, "the first graph run to start")
        victim = attempts(out)[0]
        os.kill(victim["pid"], signal.SIGKILL)  # the Ray worker running that input's graph
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    entries = manifest(out)
    assert {e["status"] for e in entries.values()} == {"done"}
    runs = [a["stem"] for a in attempts(out)]
    assert runs.count(victim["stem"]) == 2 and entries[victim["stem"]]["attempts"] == 2
    for path in inputs:
        if path.stem != victim["stem"]:
            assert runs.count(path.stem) == 1 and entries[path.stem]["attempts"] == 1
    assert_same_as_serial(out, serial, inputs)
    assert not (out / ".batch" / "staging" / victim["stem"]).exists()  # the killed attempt left nothing behind


@pytest.mark.slow
@needs_data
def test_an_interrupted_batch_resumes_without_redoing_finished_inputs(cluster, recordings, tmp_path):
    inputs, serial = recordings
    out = tmp_path / "out"
    proc = start_batch(cluster, out, inputs)
    try:
        wait_for(lambda: any(e["status"] == "done" for e in manifest(out).values()), 180, "a finished input")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-3000:]
    finished = {stem for stem, e in manifest(out).items() if e["status"] == "done"}
    assert 1 <= len(finished) < 4
    report = json.loads((out / "batch_report.json").read_text())
    assert report["interrupted"] is True
    started_before = [a["stem"] for a in attempts(out)]

    resumed = batch(cluster, out, inputs)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = {row["stem"]: row for row in json.loads((out / "batch_report.json").read_text())["inputs"]}
    assert {stem for stem, row in rows.items() if row["status"] == "skipped"} == finished
    assert {row["status"] for stem, row in rows.items() if stem not in finished} == {"done"}
    runs = [a["stem"] for a in attempts(out)][len(started_before):]
    assert not finished & set(runs), "a finished input ran again"
    assert_same_as_serial(out, serial, inputs)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Four short 64x48 copies of real videos (20 frames) and each one restored by serial `evpipe restore`."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real videos not available: {SHARED_DATA} is absent")
    folder = tmp_path_factory.mktemp("clips")
    serial = tmp_path_factory.mktemp("restored")
    paths = [small_clip(SHARED_DATA / "video_gallery" / f"{name}.mp4", folder / f"{name}.mp4", 64, 48, 20)
             for name in VIDEOS]
    for path in paths:
        proc = evpipe("restore", str(path), str(serial / f"{path.stem}.mp4"), *RESTORE_OPTIONS, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return paths, serial


def assert_restore_batch_equals_serial(clips, out: Path, *extra: str, env: dict | None = None) -> None:
    paths, serial = clips
    proc = evpipe("batch", "restore", "--inputs", str(paths[0].parent / "*.mp4"), "--out", str(out),
                  *RESTORE_OPTIONS, *extra, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "batch_report.json").read_text())["inputs"]
    assert [row["units"] for row in rows] == [3, 3, 3, 3]  # 20 frames: windows [0, 8), [6, 14), [12, 20)
    for path in paths:
        produced = (out / path.stem / f"{path.stem}.mp4").read_bytes()
        assert produced == (serial / f"{path.stem}.mp4").read_bytes(), f"{path.stem}: batch differs from serial"


@pytest.mark.slow
def test_restore_batch_on_local_ray_splits_videos_into_windows_and_equals_the_serial_command(clips, tmp_path):
    assert_restore_batch_equals_serial(clips, tmp_path / "out", "--num-cpus", "2")


@pytest.mark.slow
def test_restore_batch_across_two_nodes_equals_the_serial_command(cluster, clips, tmp_path):
    assert_restore_batch_equals_serial(clips, tmp_path / "out", "--address", cluster.address, env=cluster.env)


@pytest.mark.slow
def test_upsample_batch_splits_videos_into_frame_pairs_and_equals_the_serial_command(cluster, clips, tmp_path):
    paths, _ = clips
    options = ("--factor", "2", "--levels", "1", "--steps", "2", "--samples", "1", "--max-frames", "5")
    (tmp_path / "serial").mkdir()
    for path in paths[:2]:
        proc = evpipe("upsample", str(path), str(tmp_path / "serial" / f"{path.stem}.mp4"), *options, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    proc = evpipe("batch", "upsample", *[x for p in paths[:2] for x in ("--inputs", str(p))], "--out", str(out),
                  *options, "--address", cluster.address, timeout=300, env=cluster.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [row["units"] for row in json.loads((out / "batch_report.json").read_text())["inputs"]] == [4, 4]
    for path in paths[:2]:
        produced = (out / path.stem / f"{path.stem}_x2.mp4").read_bytes()
        assert produced == (tmp_path / "serial" / f"{path.stem}.mp4").read_bytes(), f"{path.stem}: differs"


@pytest.mark.slow
@needs_data
def test_a_failing_input_is_retried_then_reported_while_the_others_finish(cluster, recordings, tmp_path):
    inputs, serial = recordings
    broken = tmp_path / "broken.aedat4"
    broken.write_bytes(b"#!AER-DAT4.0\r\n" + b"\0" * 64)  # a header and nothing readable after it
    out = tmp_path / "out"
    proc = batch(cluster, out, [inputs[0], broken], "--max-attempts", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "failed:" in proc.stderr and "broken.aedat4" in proc.stderr
    entries = manifest(out)
    assert entries["broken"]["status"] == "failed" and entries["broken"]["attempts"] == 2
    assert entries["broken"]["error"]
    assert entries[inputs[0].stem]["status"] == "done"
    assert [a["stem"] for a in attempts(out)].count("broken") == 2
    assert_same_as_serial(out, serial, inputs[:1])
    assert "| broken | failed | 2 |" in (out / "batch_report.md").read_text()
