"""The camera source and `evpipe devices`.

No camera is attached to the development and CI machines: the tests that need one skip with the reason;
the rest check what happens without one (clear messages, no hang) and the bias-preset handling.
"""

from __future__ import annotations

import time

import dv_processing as dv
import numpy as np
import pytest
import yaml

from evpipe.nodes.sources.camera import Camera, check_biases, list_devices, load_preset
from evpipe.runtime.node import NodeError
from tests.conftest import evpipe

CAMERAS = dv.io.camera.discover()
needs_camera = pytest.mark.skipif(not CAMERAS, reason="no iniVation camera attached: dv.io.camera.discover() "
                                  "found none (these tests run on a machine with a DAVIS or DVXplorer on USB)")
needs_no_camera = pytest.mark.skipif(bool(CAMERAS), reason="a camera is attached")


def _run_camera(params: dict, seconds: float) -> tuple[list, dict]:
    node = Camera("cam", {"give_up_after_s": 0.5, **params})
    reports: list[dict] = []
    node.attach_reporter(reports.append)
    node.start()
    out = []
    t0 = time.monotonic()
    stream = node.produce()
    for item in stream:
        out.append(item)
        if time.monotonic() - t0 > seconds:
            stream.close()
            break
    node.stop()
    return out, next(r["live"] for r in reversed(reports) if "live" in r)


@needs_no_camera
def test_devices_without_a_camera_says_so():
    proc = evpipe("devices")
    assert proc.returncode == 0
    assert "no camera found" in proc.stderr
    proc = evpipe("devices", "--save-preset", "x.yaml")
    assert proc.returncode == 2 and "no camera found" in proc.stderr


@needs_no_camera
def test_camera_node_without_a_camera_ends_with_the_reason():
    t0 = time.monotonic()
    out, live = _run_camera({}, seconds=5)
    assert out == [] and time.monotonic() - t0 < 10
    assert live["link"]["gave_up"] and "no camera found" in live["link"]["last_error"]


def test_bias_presets_are_validated_before_any_camera_is_touched(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"family": "DAVIS346", "biases": {"On": [4, 180], "ApsOverflowLevel": 27}}))
    assert load_preset(str(good))["biases"]["On"] == [4, 180]
    bad = {"missing.yaml": None, "notyaml.yaml": "family: [", "shape.yaml": "- 1\n- 2\n",
           "value.yaml": yaml.safe_dump({"family": "DAVIS346", "biases": {"On": [4, 180, 2]}})}
    messages = {"missing.yaml": "no such file", "notyaml.yaml": "not valid YAML",
                "shape.yaml": "expected a mapping with 'family'", "value.yaml": "bias 'On' = \\[4, 180, 2\\]"}
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=messages[name]):
            load_preset(str(tmp_path / name))
    with pytest.raises(ValueError, match="expected an integer or"):
        check_biases({"On": "high"}, "parameter 'biases'")
    with pytest.raises(NodeError, match=r"cam: bias preset .*no such file"):
        Camera("cam", {"bias_preset": str(tmp_path / "missing.yaml")}).start()
    with pytest.raises(NodeError, match="parameter 'crop' must be"):
        Camera("cam", {"crop": [0, 0, 0, 10]}).start()


@needs_camera
def test_devices_lists_model_serial_and_resolution():
    devices = list_devices()
    assert devices and all(d["serial"] and d["model"] for d in devices)
    proc = evpipe("devices")
    assert proc.returncode == 0 and devices[0]["serial"] in proc.stdout
    if devices[0]["event_resolution"]:
        width, height = devices[0]["event_resolution"]
        assert f"{width}x{height}" in proc.stdout


@needs_camera
def test_camera_streams_time_ordered_events_inside_the_sensor():
    out, live = _run_camera({"noise_filter_us": 2000, "packet_interval_us": 1000, "frames": True}, seconds=3)
    events = [m.events() for port, m in out if port == "events"]
    assert events, "no events in 3 s (is the camera looking at a scene?)"
    t = np.concatenate([e.t for e in events])
    width, height = live["sensor_size"]
    assert np.all(np.diff(t) >= 0)
    assert all(int(e.x.max()) < width and int(e.y.max()) < height for e in events)
    assert live["received"]["events"] == (live["emitted"]["events"] + live["dropped"]["noise_filter"]
                                          + live["dropped"]["non_monotonic"] + live["dropped"]["out_of_sensor"]
                                          + live["dropped"]["overflow_events"])


@needs_camera
def test_bias_preset_saved_from_the_camera_applies_to_it(tmp_path):
    preset = tmp_path / "preset.yaml"
    proc = evpipe("devices", "--save-preset", str(preset), "--serial", CAMERAS[0].serialNumber)
    assert proc.returncode == 0, proc.stderr
    saved = load_preset(str(preset))
    _, live = _run_camera({"serial": CAMERAS[0].serialNumber, "bias_preset": str(preset)}, seconds=1)
    assert live["link"]["connects"] == 1 and not live["link"]["gave_up"], live["link"]
    assert saved["family"] in ("DAVIS346", "DAVIS240", "CDAVIS", "DVXPLORER", "DVS128")
