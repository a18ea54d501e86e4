"""The replay and simulator source nodes: every format replayed, packets and timebase, filters, pacing, bad
input (one test per case), and the simulator against analytic expectations."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np
import pytest

from evpipe.kernels import EventSimulator
from evpipe.nodes.sources.readers import open_recording
from evpipe.nodes.sources.replay import Replay
from evpipe.nodes.sources.scenes import PhotoScene, load_photo
from evpipe.nodes.sources.simulator import Simulator
from evpipe.runtime.events import Events
from evpipe.runtime.node import Node, NodeError
from evpipe.runtime.wire import Message
from tests.conftest import run_graph
from tests.data_fixtures.recordings import (
    encode_evt3,
    event_arrays,
    random_events,
    write_aedat4,
    write_event_stream,
    write_evt2,
    write_evt3,
    write_h5_dsec,
    write_h5_plain,
    write_rpg_text,
    write_video,
)

# Real recordings in ../shared/data: (file, replay params beyond the path).
REAL = {
    "aedat4-davis346": ("davis346_street/davis346_street_first1.8s_zstd.aedat4", {}),
    "hdf5-davis346": ("davis346_street/davis346_street_first1.8s.h5", {}),
    "hdf5-ecd": ("ecd_slider_depth/events.h5", {"packet_us": 10_000}),
    "rpg-text-ecd": ("ecd_slider_depth/events_first50k.txt", {}),
    "aedat4-dvxplorer": ("dvxplorer/dvxplorer_sample.aedat4", {}),
    "evt3": ("prophesee_evt3/evt3_sample.raw", {"sensor_size": [1280, 720]}),
    "evt2": ("prophesee_evt2/sparklers_evt2.raw", {"sensor_size": [640, 480]}),
    "event-stream": ("atis_es/dvs.es", {}),
}


def run_source(cls: type[Node], params: dict) -> tuple[list[tuple[str, Message]], dict]:
    """Run a source node in-process: start, every produced (port, message), stop; returns them and its report."""
    node = cls("src", {"pace": "fast", **params})
    reports: list[dict] = []
    node.attach_reporter(reports.append)
    node.start()
    out = list(node.produce())
    node.stop()
    return out, reports[-1]


def of_port(out: list[tuple[str, Message]], port: str) -> list[Message]:
    return [msg for p, msg in out if p == port]


def all_events(out: list[tuple[str, Message]]) -> Events:
    return Events.concatenate([msg.events() for msg in of_port(out, "events")])


def direct(path: Path, **kwargs) -> tuple[Events, list, int, int]:
    """Events (times from the first record), frames, IMU sample count and origin read straight from the file."""
    with open_recording(path, **kwargs) as rec:
        origin = rec.time_range()[0]
        events = Events.concatenate(list(rec.events()))
        frames = list(rec.frames())
        imu = sum(len(batch.t) for batch in rec.imu())
    return Events(events.t - origin, events.x, events.y, events.p), frames, imu, origin


def check_stream(out: list[tuple[str, Message]], packet_us: int) -> None:
    """Time slices tile the played range, hold only their own events, and nothing is sent before its time."""
    slices = [msg.t_range for msg in of_port(out, "events")]
    assert slices[0][0] == 0
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(slices))
    assert all(hi - lo + 1 <= packet_us for lo, hi in slices)
    for msg in of_port(out, "events"):
        t = msg.arrays["t"]
        assert msg.meta["watermark_us"] == msg.t_range[1]
        assert not len(t) or (t[0] >= msg.t_range[0] and t[-1] <= msg.t_range[1])
    # Sensor-time order of completion: a frame (at its exposure end) or an IMU sample is sent only after the
    # events up to its time; the last ones may reach past the end of the events.
    complete, end = -1, slices[-1][1]
    for port, msg in out:
        if port == "events":
            complete = msg.t_range[1]
        else:
            assert msg.t_range[1] <= complete + (port == "frames") or complete == end


# --------------------------------------------------------------------------- every format


@pytest.mark.parametrize("name", sorted(REAL))
def test_replay_delivers_every_record_of_each_real_format(shared_data, name):
    relative, params = REAL[name]
    path = shared_data / relative
    kwargs = {"sensor_size": tuple(params["sensor_size"])} if "sensor_size" in params else {}
    events, frames, imu, origin = direct(path, **kwargs)
    out, report = run_source(Replay, {"path": str(path), **params})
    produced = report["produced"]
    assert (produced["events"], produced["checksum"]) == (len(events), events.checksum())
    got = all_events(out)
    assert (len(got), got.checksum()) == (len(events), events.checksum())
    assert report["recording"]["t_origin_us"] == origin
    assert produced["frames"] == len(of_port(out, "frames")) == len(frames)
    assert produced["imu_samples"] == sum(len(m.arrays["t"]) for m in of_port(out, "imu")) == imu
    for msg, frame in zip(of_port(out, "frames"), frames, strict=True):
        assert msg.meta["t"] == frame.t - origin and msg.arrays["image"].dtype == np.uint8
    check_stream(out, params.get("packet_us", 1000))


@pytest.mark.parametrize("fmt", ["evt2", "evt3", "event-stream", "rpg-text", "hdf5-dsec", "hdf5-plain", "npz",
                                 "aedat4"])
def test_replay_of_files_written_here_in_every_format(tmp_path, fmt):
    events = random_events(4000, 64, 48, t0=5_000, rate_per_us=0.05, seed=3)
    frames = []
    if fmt == "evt2":
        path = write_evt2(tmp_path / "a.raw", events, geometry=(64, 48))
    elif fmt == "evt3":
        path = write_evt3(tmp_path / "a.raw", events, geometry=(64, 48))
    elif fmt == "event-stream":
        path = write_event_stream(tmp_path / "a.es", events, 64, 48)
    elif fmt == "rpg-text":
        frames = [(int(t), np.full((48, 64), 10 * i, np.uint8)) for i, t in enumerate(events.t[500::1000])]
        path = write_rpg_text(tmp_path / "seq", events, frames=frames).parent
    elif fmt == "hdf5-dsec":
        path = write_h5_dsec(tmp_path / "a.h5", events, t_offset=1_000)
    elif fmt == "hdf5-plain":
        path = write_h5_plain(tmp_path / "a.h5", event_arrays(events), width=64, height=48)
    elif fmt == "npz":
        np.savez(tmp_path / "a.npz", sensor_size=[64, 48], **event_arrays(events))
        path = tmp_path / "a.npz"
    else:
        frames = [(int(t), np.full((48, 64), 10 * i, np.uint8)) for i, t in enumerate(events.t[500::1000])]
        path = write_aedat4(tmp_path / "a.aedat4", events, 64, 48, frames=[(t, 0, img) for t, img in frames])
    out, report = run_source(Replay, {"path": str(path), "packet_us": 500})
    origin = report["recording"]["t_origin_us"]
    assert origin == events.t[0]  # t = 0 is the first record, whatever the format's clock
    shifted = Events(events.t - origin, events.x, events.y, events.p)
    got = all_events(out)
    assert (len(got), got.checksum()) == (len(events), shifted.checksum())
    assert [m.meta["t"] for m in of_port(out, "frames")] == [t - origin for t, _ in frames]
    assert [int(m.arrays["image"][0, 0]) for m in of_port(out, "frames")] == [int(img[0, 0]) for _, img in frames]
    check_stream(out, 500)


# ----------------------------------------------------------------------- packets and filters


def test_time_window_count_packets_roi_and_polarity_match_direct_filtering(tmp_path):
    events = random_events(20_000, 64, 48, t0=0, rate_per_us=0.2, seed=5)
    path = write_h5_plain(tmp_path / "a.h5", event_arrays(events), width=64, height=48)
    t_start, t_stop = 20_000, 70_000
    out, report = run_source(Replay, {"path": str(path), "t_start": t_start, "t_stop": t_stop,
                                      "roi": [8, 4, 40, 30], "polarity": "on", "packet": "count",
                                      "packet_events": 700})
    origin = int(events.t[0])  # times and t_start/t_stop count from the first record
    window = events.time_slice(origin + t_start, origin + t_stop)
    inside = (window.x >= 8) & (window.x < 40) & (window.y >= 4) & (window.y < 30)
    keep = inside & (window.p > 0)
    expected = Events(window.t[keep] - origin, window.x[keep] - 8, window.y[keep] - 4, window.p[keep])
    got = all_events(out)
    np.testing.assert_array_equal(got.t, expected.t)
    np.testing.assert_array_equal(got.x, expected.x)
    np.testing.assert_array_equal(got.y, expected.y)
    assert [len(m.arrays["t"]) for m in of_port(out, "events")][:-1] == [700] * (len(expected) // 700)
    assert all(m.meta["width"] == 32 and m.meta["height"] == 26 for m in of_port(out, "events"))
    assert report["removed"] == {"roi": int((~inside).sum()), "polarity": int((inside & (window.p < 0)).sum())}


def test_loops_shift_each_pass_by_the_played_span(tmp_path):
    events = random_events(3000, 64, 48, t0=100, rate_per_us=0.1, seed=6)
    path = write_h5_plain(tmp_path / "a.h5", event_arrays(events), width=64, height=48)
    out, report = run_source(Replay, {"path": str(path), "loops": 3, "packet_us": 2_000})
    span = report["recording"]["t_stop"]
    got = all_events(out)
    assert len(got) == 3 * len(events) and np.all(np.diff(got.t) >= 0)
    np.testing.assert_array_equal(got.t[len(events):2 * len(events)], got.t[:len(events)] + span)
    check_stream(out, 2_000)


def test_realtime_pacing_follows_the_wall_clock(shared_data):
    path = shared_data / REAL["aedat4-davis346"][0]
    t0 = time.monotonic()
    out, report = run_source(Replay, {"path": str(path), "t_stop": 400_000, "pace": "realtime", "speed": 2.0})
    elapsed = time.monotonic() - t0
    pacing = report["pacing"]
    assert pacing["items"] == len(out)
    assert 0.19 < elapsed < 1.5  # 400 ms of sensor time at twice real time, plus start-up
    assert pacing["lag_ms"]["p50"] < 5


# ----------------------------------------------------------------------- bad input, one test each


def replay_error(params: dict) -> str:
    node = Replay("replay", {"pace": "fast", **params})
    with pytest.raises(NodeError) as exit_info:
        node.start()
        for _ in node.produce():
            pass
    message = str(exit_info.value)
    assert "\n" not in message and message.startswith("replay: ")
    return message


def test_corrupt_file_fails_the_graph_with_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "broken.aedat4"
    bad.write_bytes(b"\x00\x17not an event file at all" * 50)
    proc, report = run_graph(tmp_path, f"""\
settings: {{max_restarts: 0}}
nodes:
  replay: {{type: replay, params: {{path: "{bad}", pace: fast}}}}
  sink: {{type: metrics}}
edges:
  - replay.events -> sink.in
""")
    assert proc.returncode != 0 and not report["completed"]
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output and output.count("[replay]") == 1  # one line (the console wraps it)
    assert f"[replay] replay: {bad}: unrecognised file format" in output.replace("\n", "")


def test_truncated_aedat4_names_the_file_and_the_fix(tmp_path):
    path = write_aedat4(tmp_path / "cut.aedat4", random_events(5000, 64, 48, seed=1), 64, 48)
    path.write_bytes(path.read_bytes()[:-200])
    message = replay_error({"path": str(path)})
    assert str(path) in message and "truncated" in message


def test_missing_file_names_the_path(tmp_path):
    message = replay_error({"path": str(tmp_path / "nowhere.raw")})
    assert str(tmp_path / "nowhere.raw") in message and "cannot open" in message


def test_corrupt_word_raises_at_its_byte_and_skip_counts_it(tmp_path):
    events = random_events(3000, 64, 48, seed=2)
    header = b"% evt 3.0\n% geometry 64x48\n"
    path = tmp_path / "corrupt.raw"
    path.write_bytes(header + np.insert(encode_evt3(events), 1500, np.uint16(0x1ABC)).tobytes())
    message = replay_error({"path": str(path)})
    assert str(path) in message and "byte" in message and "on_error='skip'" in message
    with pytest.warns(UserWarning, match="reserved"):
        out, report = run_source(Replay, {"path": str(path), "on_error": "skip"})
    assert report["issues"] == {"unknown_word": 1}
    shifted = Events(events.t - events.t[0], events.x, events.y, events.p)
    assert (report["produced"]["events"], all_events(out).checksum()) == (len(events), shifted.checksum())


def test_time_going_back_mid_stream_raises_and_skip_drops_and_counts(tmp_path):
    events = random_events(6000, 64, 48, rate_per_us=0.01, seed=7)
    t = events.t.copy()
    t[4000] = t[3999] - 10
    path = write_h5_plain(tmp_path / "back.h5", {**event_arrays(events), "t": t}, width=64, height=48)
    message = replay_error({"path": str(path)})
    assert f"{path} at index 4000" in message and "goes back in time" in message
    with pytest.warns(UserWarning, match="back in time"):
        _, report = run_source(Replay, {"path": str(path), "on_error": "skip"})
    assert report["issues"] == {"non_monotonic": 1} and report["produced"]["events"] == len(events) - 1


def test_events_outside_the_given_sensor_raise_or_are_counted(tmp_path):
    events = random_events(2000, 64, 48, seed=8)
    path = write_h5_plain(tmp_path / "a.h5", event_arrays(events), width=64, height=48)
    message = replay_error({"path": str(path), "sensor_size": [32, 48]})
    assert "outside the 32x48 sensor" in message and "sensor_size" in message
    with pytest.warns(UserWarning, match="outside"):
        out, report = run_source(Replay, {"path": str(path), "sensor_size": [32, 48], "on_error": "skip"})
    outside = int((events.x >= 32).sum())
    assert report["issues"] == {"out_of_sensor": outside} and len(all_events(out)) == len(events) - outside


def test_bad_parameters_are_named(tmp_path):
    path = write_h5_plain(tmp_path / "a.h5", event_arrays(random_events(500, 64, 48, seed=9)), width=64, height=48)
    assert "parameter 'roi'" in replay_error({"path": str(path), "roi": [0, 0, 65, 10]})
    assert "t_start=" in replay_error({"path": str(path), "t_start": 10**9})
    assert "parameter 'sensor_size'" in replay_error({"path": str(path), "sensor_size": [64]})


def test_raw_file_without_geometry_or_events_asks_for_the_sensor_size(tmp_path):
    path = tmp_path / "empty.raw"
    path.write_bytes(b"% evt 2.0\n% date 2024-01-01\n")
    message = replay_error({"path": str(path)})
    assert str(path) in message and "sensor_size" in message


# ---------------------------------------------------------------------------------- simulator


def test_simulator_on_a_linear_log_ramp_emits_exactly_k_events_per_pixel_at_the_crossing_times():
    duration, c = 0.5, 0.2
    out, report = run_source(Simulator, {"scene": "log_ramp", "resolution": [24, 16], "duration_s": duration,
                                         "c_pos": c, "c_neg": c, "sigma_c": 0.0, "noise_rate_hz": 0.0,
                                         "truth_fps": 400.0})
    rate = report["scene"]["log_rate_per_s"]
    k = math.floor(rate * duration / c)
    assert k >= 3 and rate * duration / c - k > 0.05  # far from a crossing exactly at the end
    events = all_events(out)
    assert np.all(events.p == 1)
    per_pixel = np.bincount(events.y.astype(np.int64) * 24 + events.x, minlength=24 * 16)
    np.testing.assert_array_equal(per_pixel, np.full(24 * 16, k))
    expected_t = np.repeat(np.arange(1, k + 1) * c / rate * 1e6, 24 * 16)
    np.testing.assert_allclose(np.sort(events.t), np.sort(expected_t), atol=1.0)
    assert report["produced"]["events"] == len(events) == k * 24 * 16


def test_simulator_photo_scene_frames_truth_and_determinism():
    params = {"scene": "camera", "resolution": [48, 32], "duration_s": 0.3, "truth_fps": 100.0, "aps_fps": 25.0,
              "motion_px_s": 300.0, "seed": 3}
    out, report = run_source(Simulator, params)
    substeps = report["scene"]["substeps"]
    assert substeps == math.ceil(300.0 / 100.0) and report["scene"]["max_step_px"] <= 1.0
    truth = of_port(out, "truth")
    assert [m.meta["t"] for m in truth] == [round(i * 1e4) for i in range(31)]
    assert [m.meta["t"] for m in of_port(out, "frames")] == [0, 40_000, 80_000, 120_000, 160_000, 200_000,
                                                             240_000, 280_000]
    assert truth[0].arrays["image"].dtype == np.float32 and of_port(out, "frames")[0].arrays["image"].dtype == np.uint8
    events = all_events(out)
    assert len(events) > 1000 and np.all(np.diff(events.t) >= 0)
    # Every frame comes after the events up to its time (the watermark of the packet before it).
    mark = -1
    for port, msg in out:
        if port == "events":
            mark = msg.meta["watermark_us"]
        else:
            assert msg.meta["t"] <= mark or (msg.meta["t"] == 0 and mark == -1)
    _, report_again = run_source(Simulator, params)
    assert report_again["produced"] == report["produced"]


def test_photo_motion_never_exceeds_its_bound_and_reaches_a_good_part_of_it():
    scene = PhotoScene(load_photo("coffee"), 64, 48, speed_px_s=120.0, seed=1)
    corners = np.array([[-31.5, -23.5], [31.5, -23.5], [-31.5, 23.5], [31.5, 23.5]])

    def where(t_s: float, canvas_points: np.ndarray) -> np.ndarray:
        rot, log_zoom, tx, ty = scene.motion.at(t_s)
        back = np.array([[math.cos(rot), math.sin(rot)], [-math.sin(rot), math.cos(rot)]])  # R(-θ)
        return (canvas_points - np.array([tx, ty])) @ back.T / math.exp(log_zoom)

    dt, fastest = 1e-4, 0.0
    for t_s in np.linspace(0, 20, 2001):
        rot, log_zoom, tx, ty = scene.motion.at(t_s)
        forward = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
        points = corners @ forward.T * math.exp(log_zoom) + np.array([tx, ty])  # scene points at the corners
        fastest = max(fastest, float(np.linalg.norm(where(t_s + dt, points) - corners, axis=1).max() / dt))
    assert 0.5 * 120.0 < fastest <= 120.0 * 1.001


def test_simulator_blurred_aps_frame_is_the_mean_of_the_steps_in_its_exposure():
    out, _ = run_source(Simulator, {"scene": "camera", "resolution": [32, 32], "duration_s": 0.1,
                                    "truth_fps": 200.0, "aps_exposure_us": 10_000, "motion_px_s": 150.0})
    truth = {m.meta["t"]: m.arrays["image"] for m in of_port(out, "truth")}
    frames = of_port(out, "frames")
    assert [m.meta["t"] for m in frames] == [40_000, 80_000] and frames[0].meta["exposure_us"] == 10_000
    inside = [truth[t] for t in (35_000, 40_000)]  # steps at 5 ms: [35 ms, 45 ms) holds two
    expected = np.round(np.clip(np.mean(inside, axis=0), 0, 1) * 255)
    np.testing.assert_allclose(frames[0].arrays["image"], expected, atol=1)


def test_simulator_from_a_video_file_simulates_every_frame(tmp_path):
    xs = np.arange(96)
    rows = [(127 + 100 * np.sin((xs + 2 * i) / 6.0)).astype(np.uint8) for i in range(20)]
    frames = np.stack([np.repeat(np.repeat(row[None, :, None], 64, axis=0), 3, axis=2) for row in rows])
    path = write_video(tmp_path / "moving.mp4", frames, rate=50)
    out, report = run_source(Simulator, {"scene": str(path), "resolution": [48, 32], "duration_s": 0.0})
    truth = of_port(out, "truth")
    assert len(truth) == 20 and truth[1].meta["t"] == 20_000 and report["scene"]["video_fps"] == 50.0
    assert report["produced"]["events"] > 500 and len(of_port(out, "frames")) == 10


def test_simulator_reproduces_the_kernel_on_a_real_clip(shared_data):
    clip = shared_data / "video_gallery" / "07_snowboarder.mp4"
    out, report = run_source(Simulator, {"scene": str(clip), "resolution": [64, 64], "duration_s": 0.2,
                                         "noise_rate_hz": 0.0, "seed": 4})
    truth = of_port(out, "truth")
    simulator = EventSimulator(64, 64, 0.2, 0.2, 0.03, 0, 0.0, 1e-3, 4)
    simulator.reset(truth[0].arrays["image"], truth[0].meta["t"])
    expected = Events.concatenate([simulator.step(m.arrays["image"], m.meta["t"]) for m in truth[1:]])
    assert (report["produced"]["events"], report["produced"]["checksum"]) == (len(expected), expected.checksum())
    assert len(expected) > 1000


def test_simulator_bad_parameters_are_one_line_errors(tmp_path):
    def error(params: dict) -> str:
        with pytest.raises(NodeError) as info:
            Simulator("sim", params).start()
        return str(info.value)

    assert "neither a built-in scene" in error({"scene": "no_such_thing"})
    assert "must be a multiple of 'aps_fps'" in error({"truth_fps": 90.0, "aps_fps": 25.0})
    assert "shorter than the APS period" in error({"aps_exposure_us": 40_000})
    assert "parameter 'resolution'" in error({"resolution": [0, 10]})
    not_video = tmp_path / "notes.txt"
    not_video.write_text("hello")
    assert "cannot be read as a video" in error({"scene": str(not_video)})
