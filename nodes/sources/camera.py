"""The camera source: a live iniVation camera (DAVIS, DVXplorer, DVS128) through dv-processing ``io.camera``.

`list_devices` finds connected cameras (``evpipe devices``); the `Camera` node opens one by serial
number, or the first found, applies the settings given as parameters and streams events, APS frames
and IMU samples (triggers are read and counted, see `evpipe.nodes.sources.live`).

Bias presets are YAML files::

    family: DAVIS346            # the bias set they belong to (DAVIS346, DAVIS240, CDAVIS, DVXPLORER, DVS128)
    biases:
      On: [4, 180]              # DAVIS current biases: [coarse, fine]
      ApsOverflowLevel: 27      # DAVIS voltage biases: one value (52.4 mV steps)
      # DVXplorer: ContrastThresholdOn / ContrastThresholdOff; DVS128: its bias names with one value

``evpipe devices --save-preset FILE`` writes the biases a connected camera has now, so a preset
tuned in DV (or by hand) can be saved and reused; the node's ``biases`` parameter overrides single
entries. dv-processing 2.0.4 exposes no named sensitivity presets and no driver drop counters, so
neither is offered here.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dv_processing as dv
import yaml

from evpipe.nodes.dv_io import DvIoError, DvSettingsError
from evpipe.nodes.sources.live import LiveSource
from evpipe.runtime.node import NodeError, Spec

_US = datetime.timedelta(microseconds=1)
_FILTER_STEP_US = 250  # the DAVIS hardware filters count in 250 µs steps


def list_devices(open_each: bool = True) -> list[dict[str, Any]]:
    """Connected cameras: model, serial, USB bus/address, firmware and (opening each) resolutions.

    A camera that cannot be opened (in use by another program) is listed with ``error`` set.
    """
    devices = []
    for d in dv.io.camera.discover():
        info: dict[str, Any] = {"model": d.cameraModel.name, "serial": d.serialNumber, "usb": f"{d.busNumber}:"
                                f"{d.devAddress}", "firmware": int(d.firmwareVersion), "event_resolution": None,
                                "frame_resolution": None, "imu": None, "error": None}
        if open_each:
            try:
                camera = dv.io.camera.open(d)
            except RuntimeError as exc:
                info["error"] = str(exc).splitlines()[0]
            else:
                info["name"] = camera.getCameraName()
                if camera.isEventStreamAvailable():
                    info["event_resolution"] = list(camera.getEventResolution())
                if camera.isFrameStreamAvailable():
                    info["frame_resolution"] = list(camera.getFrameResolution())
                info["imu"] = bool(camera.isImuStreamAvailable())
                del camera
        devices.append(info)
    return devices


def open_camera(serial: str) -> Any:
    """Open the camera with this serial number, or the first one found when ``serial`` is empty."""
    found = dv.io.camera.discover()
    if not found:
        raise DvIoError("no camera found (is it plugged in, and may this user access USB devices? "
                        "`evpipe devices` lists what dv-processing sees)")
    matches = [d for d in found if not serial or d.serialNumber == serial]
    if not matches:
        raise DvIoError(f"no camera with serial {serial!r}; connected: "
                        + ", ".join(f"{d.cameraModel.name} {d.serialNumber}" for d in found))
    try:
        return dv.io.camera.open(matches[0])
    except RuntimeError as exc:
        raise DvIoError(f"cannot open camera {matches[0].serialNumber}: {str(exc).splitlines()[0]}") from None


# ----------------------------------------------------------------------------------------- biases

BiasAccess = tuple[Callable[[], Any], Callable[[Any], None]]  # (read, write)


def bias_family(camera: Any) -> str:
    """The bias set of an open camera: DAVIS346, DAVIS240, CDAVIS, DVXPLORER or DVS128."""
    cam = dv.io.camera
    if isinstance(camera, cam.DAVIS):
        model = camera.getSensorModel().name
        if model == "DAVIS346":
            return "DAVIS346"
        if model.startswith("DAVIS240"):
            return "DAVIS240"
        if model == "CDAVIS":
            return "CDAVIS"
        raise DvIoError(f"dv-processing 2.0.4 has no bias controls for the {model} sensor")
    if isinstance(camera, (cam.DVXplorer, cam.DVXplorerM)):
        return "DVXPLORER"
    if isinstance(camera, cam.DVS128):
        return "DVS128"
    raise DvIoError(f"no bias controls for {type(camera).__name__} cameras")


def bias_controls(camera: Any) -> dict[str, BiasAccess]:
    """Bias name -> (read, write) for an open camera; current biases take [coarse, fine], voltages one int."""
    family = bias_family(camera)
    D = dv.io.camera.DAVIS
    if family == "DVXPLORER":
        return {"ContrastThresholdOn": (camera.getContrastThresholdOn, camera.setContrastThresholdOn),
                "ContrastThresholdOff": (camera.getContrastThresholdOff, camera.setContrastThresholdOff)}
    if family == "DVS128":
        enum = dv.io.camera.DVS128.Bias
        return {name: (lambda b=b: camera.getBias(b), lambda v, b=b: camera.setBias(b, int(v)))
                for name, b in enum.__members__.items()}
    current = {"DAVIS346": (D.Davis346BiasCF, camera.getDavis346BiasCoarseFine, camera.setDavis346BiasCoarseFine),
               "DAVIS240": (D.Davis240BiasCF, camera.getDavis240BiasCoarseFine, camera.setDavis240BiasCoarseFine),
               "CDAVIS": (D.CDavisBiasCF, camera.getCDavisBiasCoarseFine, camera.setCDavisBiasCoarseFine)}[family]
    voltage = {"DAVIS346": (D.Davis346BiasVDAC, camera.getDavis346BiasVoltage, camera.setDavis346BiasVoltage),
               "CDAVIS": (D.CDavisBiasVDAC, camera.getCDavisBiasVoltage, camera.setCDavisBiasVoltage)}.get(family)
    enum, get, put = current
    controls: dict[str, BiasAccess] = {
        name: (lambda b=b: list(get(b)), lambda v, b=b: put(b, int(v[0]), int(v[1])))
        for name, b in enum.__members__.items()}
    if voltage is not None:
        enum, get, put = voltage
        controls.update({name: (lambda b=b: get(b), lambda v, b=b: put(b, int(v)))
                         for name, b in enum.__members__.items()})
    return controls


def load_preset(path: str) -> dict[str, Any]:
    """A bias preset file -> {"family": str, "biases": {name: int | [coarse, fine]}}; ValueError if malformed."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"bias preset {path}: no such file")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"bias preset {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("family"), str) or not isinstance(data.get("biases"),
                                                                                             dict):
        raise ValueError(f"bias preset {path}: expected a mapping with 'family' (text) and 'biases' (a mapping)")
    check_biases(data["biases"], f"bias preset {path}")
    return data


def check_biases(biases: dict[str, Any], where: str) -> None:
    """Each value must be an integer or a [coarse, fine] pair of integers."""
    for name, value in biases.items():
        pair = isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)
        if not (isinstance(name, str) and (pair or (isinstance(value, int) and not isinstance(value, bool)))):
            raise ValueError(f"{where}: bias {name!r} = {value!r}; expected an integer or [coarse, fine]")


def apply_biases(camera: Any, biases: dict[str, Any]) -> None:
    """Set ``biases`` on an open camera; DvIoError names an unknown bias and lists the known ones."""
    controls = bias_controls(camera)
    for name, value in biases.items():
        if name not in controls:
            raise DvIoError(f"unknown bias {name!r} for a {bias_family(camera)} camera; known: "
                            + ", ".join(sorted(controls)))
        controls[name][1](value)


def read_biases(camera: Any) -> dict[str, Any]:
    """The biases of an open camera now, as a preset (see the module docstring)."""
    controls = bias_controls(camera)
    return {"family": bias_family(camera), "biases": {name: read() for name, (read, _) in controls.items()}}


# ------------------------------------------------------------------------------------------- node


class Camera(LiveSource):
    """A live iniVation camera: events, APS frames and IMU, with the settings users expect as parameters.

    Opens the camera with ``serial`` (or the first found). Settings left at null keep the camera's
    defaults. ``exposure_us`` 0 turns auto-exposure on; ``hw_noise_filter_us`` and ``hw_refractory_us``
    are the DAVIS on-board filters (250 µs steps), ``noise_filter_us`` the software filter every live
    source has. A setting the opened camera does not have (frame exposure on a DVXplorer) is an error
    naming it. An unplugged camera is reopened with backoff; see `evpipe.nodes.sources.live` for
    buffering, accounting and the report.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        super().setup(spec)
        spec.param("serial", str, "", "serial number of the camera to open; empty: the first one found")
        spec.param("events", bool, True, "stream events")
        spec.param("frames", bool, True, "stream APS frames (DAVIS)")
        spec.param("imu", bool, True, "stream IMU samples")
        spec.param("triggers", str, "none", "external trigger edges to detect (counted in the report)",
                   choices=["none", "rising", "falling", "both"])
        spec.param("bias_preset", str, None, "YAML bias preset (see `evpipe devices --save-preset`)")
        spec.param("biases", dict, None, "single biases overriding the preset: name: value or [coarse, fine]")
        spec.param("exposure_us", int, None, "DAVIS frame exposure in µs; 0: auto-exposure", minimum=0)
        spec.param("frame_interval_us", int, None, "DAVIS time between frames in µs", minimum=1)
        spec.param("packet_interval_us", int, None, "how often the camera hands over data, in µs (latency vs "
                   "overhead)", minimum=1)
        spec.param("hw_noise_filter_us", int, None, "DAVIS on-board background-activity filter, µs (0: off)",
                   minimum=0)
        spec.param("hw_refractory_us", int, None, "DAVIS on-board refractory-period filter, µs (0: off)", minimum=0)
        spec.param("flip_horizontal", bool, False, "mirror events (and DAVIS frames) left-right")
        spec.param("flip_vertical", bool, False, "mirror events (and DAVIS frames) top-bottom")
        spec.param("crop", list, None, "events region of interest [x, y, width, height]")

    def start(self) -> None:
        super().start()
        p = self.params
        try:
            self.preset = load_preset(p.bias_preset) if p.bias_preset else None
            if p.biases is not None:
                check_biases(p.biases, "parameter 'biases'")
        except ValueError as exc:
            raise NodeError(f"{self.name}: {exc}") from None
        if p.crop is not None and (len(p.crop) != 4 or not all(isinstance(v, int) and v >= 0 for v in p.crop)
                                   or p.crop[2] == 0 or p.crop[3] == 0):
            raise NodeError(f"{self.name}: parameter 'crop' must be [x, y, width, height] (non-negative integers, "
                             f"positive size), got {p.crop}")

    def _open(self) -> Any:
        camera = open_camera(self.params.serial)
        try:
            self._configure(camera)
        except (DvIoError, RuntimeError, TypeError) as exc:
            del camera
            raise DvSettingsError(f"camera settings: {exc}") from None
        return camera

    def _configure(self, camera: Any) -> None:
        p = self.params
        cam = dv.io.camera
        davis = isinstance(camera, cam.DAVIS)
        for name in ("exposure_us", "frame_interval_us", "hw_noise_filter_us", "hw_refractory_us"):
            if getattr(p, name) is not None and not davis:
                raise DvIoError(f"{name} applies to DAVIS cameras; this is a {type(camera).__name__}")
        if self.preset is not None:
            family = bias_family(camera)
            if self.preset["family"] != family:
                raise DvIoError(f"bias preset {p.bias_preset} is for {self.preset['family']} cameras, this is a "
                                f"{family}")
            apply_biases(camera, self.preset["biases"])
        if p.biases:
            apply_biases(camera, p.biases)
        if p.packet_interval_us is not None:
            camera.setTimeInterval(p.packet_interval_us * _US)
        camera.setFlipHorizontal(p.flip_horizontal)
        camera.setFlipVertical(p.flip_vertical)
        if p.crop is not None:
            camera.setCropArea(tuple(p.crop))
        if hasattr(camera, "setEventsRunning"):
            camera.setEventsRunning(p.events)
        if isinstance(camera, (cam.DAVIS, cam.DVXplorer, cam.DVXplorerM)):
            camera.setImuRunningAccelerometer(p.imu)
            camera.setImuRunningGyroscope(p.imu)
        if davis:
            camera.setFramesRunning(p.frames)
            if p.exposure_us == 0:
                camera.setAutoExposure(True)
            elif p.exposure_us is not None:
                camera.setAutoExposure(False)
                camera.setExposureDuration(p.exposure_us * _US)
            if p.frame_interval_us is not None:
                camera.setFrameInterval(p.frame_interval_us * _US)
            if p.hw_noise_filter_us is not None:
                camera.setBackgroundActivityFilter(round(p.hw_noise_filter_us / _FILTER_STEP_US))
            if p.hw_refractory_us is not None:
                camera.setRefractoryPeriodFilter(round(p.hw_refractory_us / _FILTER_STEP_US))
        if p.triggers != "none":
            if not hasattr(camera, "setDetectorRunning"):
                raise DvIoError(f"triggers: a {type(camera).__name__} has no trigger input")
            camera.setDetectorRisingEdges(p.triggers in ("rising", "both"))
            camera.setDetectorFallingEdges(p.triggers in ("falling", "both"))
            camera.setDetectorRunning(True)

    def _streams(self, handle: Any) -> set[str]:
        p = self.params
        available = {"events": p.events and handle.isEventStreamAvailable(),
                     "frames": p.frames and handle.isFrameStreamAvailable(),
                     "imu": p.imu and handle.isImuStreamAvailable(),
                     "triggers": p.triggers != "none" and handle.isTriggerStreamAvailable()}
        return {name for name, wanted in available.items() if wanted}

    def _describe(self, handle: Any) -> dict[str, Any]:
        descriptor = handle.getDeviceDescriptor()
        return {"camera": handle.getCameraName(), "model": descriptor.cameraModel.name,
                "serial": descriptor.serialNumber, "class": type(handle).__name__}
