"""The simulator source: an ESIM-style event camera looking at a built-in scene or a video file."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numba
import numpy as np

from evpipe.kernels import EventSimulator
from evpipe.nodes.sources.pacing import Pacer, prefetch
from evpipe.nodes.sources.scenes import PHOTOS, LogRampScene, PhotoScene, VideoScene, load_photo
from evpipe.runtime.events import Events, Frame
from evpipe.runtime.node import Node, NodeError, Spec
from evpipe.runtime.wire import Message, Trace

PREFETCH_STEPS = 64
Item = tuple[int, str, Message]


class Simulator(Node):
    """Synthesises an event camera (ESIM, `evpipe.kernels.EventSimulator`) watching a scene; needs no camera
    and no download.

    **Scenes** (``scene``): a scikit-image photo (``coffee``, ``camera``, ``astronaut``, … see
    `evpipe.nodes.sources.scenes.PHOTOS`) in smooth random motion (rotation, zoom and translation,
    each a sum of low-frequency sinusoids, see `scenes`), whose speed bound is ``motion_px_s``;
    ``log_ramp``, an analytic scene whose log intensity rises linearly (exact expected events, for
    calibration); or the path of a video file (PyAV; gray, centre-cropped, resized).

    **Time steps.** Photo and ramp scenes are rendered at ``truth_fps`` × substeps, substeps being the
    smallest count that keeps motion at or below ``max_step_px`` per simulation step (the simulator
    interpolates log intensity linearly between steps, which is only right for small motion). A video
    is simulated frame by frame at its own rate: larger motion between its frames is interpolated
    linearly, a known approximation.

    **Outputs.** ``events``: per packet (at least ``packet_us`` of sensor time, cut at every frame) the
    events in (t_prev, t], meta ``width``, ``height``, ``watermark_us`` = t. ``frames``: APS frames at
    ``aps_fps``, uint8 (H, W), the mean of the simulation steps within an exposure of
    ``aps_exposure_us`` centred on the APS time (0: the sharp render at that time). ``truth``: the
    ground-truth intensity at every ``truth_fps`` step, float32 (H, W) linear in [0, 1] — what a
    predictor of the frame at that time should output, so models can be scored live. Every event up
    to a frame's time is sent before the frame. Timestamps are µs from the start (t = 0: the first
    frame). ``pace: realtime`` releases each step when its sensor time has passed on the wall clock.

    Default 128x128: the resolution the shipped tiny predictor is trained at, and small enough that
    rendering and simulating 200 steps per second stays a fraction of one core (measured: about 1.5 ms
    per step on a busy 2-core machine, so 0.3 of a core).

    Report: ``produced`` (events ``messages``, ``events``, ``checksum``, ``frames``, ``truth``: counted
    before each item is sent), ``scene`` (``substeps``, ``motion_bound_px_s``, ``max_step_px``, or the
    ramp's ``log_rate_per_s``, or ``video_fps``), ``steps_simulated`` and, in realtime, ``pacing``.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.output("events", "events", "simulated event packets, time-ordered")
        spec.output("frames", "frame", "APS frames at aps_fps, uint8 (H, W)")
        spec.output("truth", "frame", "ground-truth frames at truth_fps, float32 (H, W) in [0, 1]")
        spec.param("scene", str, "coffee", f"a photo ({', '.join(PHOTOS)}), log_ramp, or a video file path",
                   input_path=True, names=(*PHOTOS, "log_ramp"))
        spec.param("resolution", list, [128, 128], "[width, height] of the simulated sensor")
        spec.param("duration_s", float, 10.0, "sensor seconds to simulate; 0: until stopped (a video: its end)",
                   minimum=0.0)
        spec.param("truth_fps", float, 200.0, "ground-truth frame rate (photo and ramp scenes)", minimum=1.0)
        spec.param("aps_fps", float, 25.0, "APS frame rate", minimum=0.1)
        spec.param("aps_exposure_us", int, 0, "APS exposure (motion blur); 0: sharp", minimum=0)
        spec.param("motion_px_s", float, 100.0, "photo scenes: bound on the image motion in pixels per second",
                   minimum=0.0)
        spec.param("max_step_px", float, 1.0, "most motion per simulation step in pixels", minimum=0.01)
        spec.param("c_pos", float, 0.2, "ON contrast threshold (log intensity)", minimum=0.01)
        spec.param("c_neg", float, 0.2, "OFF contrast threshold (log intensity)", minimum=0.01)
        spec.param("sigma_c", float, 0.03, "per-pixel spread of the thresholds", minimum=0.0)
        spec.param("refractory_us", int, 0, "minimum time between two events of a pixel", minimum=0)
        spec.param("noise_rate_hz", float, 0.1, "background noise events per pixel per second", minimum=0.0)
        spec.param("log_eps", float, 1e-3, "offset inside the log so black stays finite", minimum=1e-9)
        spec.param("seed", int, 0, "seeds the motion, the thresholds and the noise")
        spec.param("packet_us", int, 1000, "least sensor time per events packet", minimum=1)
        spec.param("pace", str, "realtime", "realtime (sensor time follows wall time) or fast",
                   choices=["realtime", "fast"])
        spec.param("speed", float, 1.0, "realtime speed factor", minimum=1e-3)
        spec.param("threads", int, 1, "Numba threads for the simulator (0: all cores); on a busy 2-core "
                   "machine one thread was faster (128x128 step: 2.6 ms vs 19 ms with two)", minimum=0)
        spec.param("checksum", bool, True, "checksum what is produced (about 5 ns per event)")

    # ------------------------------------------------------------------------------------ setup

    def start(self) -> None:
        p = self.params
        self.produced = {"messages": 0, "events": 0, "checksum": 0, "frames": 0, "truth": 0}
        self.steps_simulated = 0
        self.pacer: Pacer | None = None
        self.feed: Iterator[Item] | None = None
        res = p.resolution
        if len(res) != 2 or not all(isinstance(v, int) and 0 < v <= 4096 for v in res):
            self._fail(f"parameter 'resolution' must be [width, height] (integers 1..4096), got {res}")
        self.width, self.height = res
        self.aps_period_us = 1e6 / p.aps_fps
        if p.aps_exposure_us >= self.aps_period_us:
            self._fail(f"parameter 'aps_exposure_us' ({p.aps_exposure_us}) must be shorter than the APS period "
                       f"({self.aps_period_us:.0f} µs at aps_fps={p.aps_fps})")
        self.scene_info: dict[str, Any] = {"scene": p.scene}
        try:
            if p.scene in PHOTOS or p.scene == "log_ramp":
                steps_per_aps = p.truth_fps / p.aps_fps
                if abs(steps_per_aps - round(steps_per_aps)) > 1e-9:
                    self._fail(f"parameter 'truth_fps' ({p.truth_fps}) must be a multiple of 'aps_fps' ({p.aps_fps}) "
                               "so every APS frame falls on a ground-truth step")
                if p.scene == "log_ramp":
                    if p.duration_s <= 0:
                        self._fail("scene 'log_ramp' needs a finite duration_s (the ramp ends at full brightness)")
                    self.scene = LogRampScene(self.width, self.height, p.duration_s, p.log_eps)
                    self.substeps = 1
                    self.scene_info["log_rate_per_s"] = self.scene.rate
                else:
                    self.scene = PhotoScene(load_photo(p.scene), self.width, self.height, p.motion_px_s, p.seed)
                    self.substeps = max(1, math.ceil(self.scene.speed_px_s / (p.truth_fps * p.max_step_px)))
                    self.scene_info["motion_bound_px_s"] = self.scene.speed_px_s
                self.scene_info.update(substeps=self.substeps,
                                       max_step_px=self.scene_info.get("motion_bound_px_s", 0.0)
                                       / (p.truth_fps * self.substeps))
            elif Path(p.scene).is_file():
                self.scene = VideoScene(p.scene, self.width, self.height)
                self.scene_info["video_fps"] = self.scene.fps
            else:
                self._fail(f"parameter 'scene': {p.scene!r} is neither a built-in scene ({', '.join(PHOTOS)}, "
                           "log_ramp) nor an existing video file")
        except ValueError as exc:
            self._fail(f"parameter 'scene': {exc}")
        # Load the compiled kernels now, not on the first step: a first call costs about a second.
        if isinstance(self.scene, PhotoScene):
            self.scene.render(0.0)
        warm = EventSimulator(1, 1)
        warm.reset(np.zeros((1, 1), np.float32), 0)
        warm.step(np.ones((1, 1), np.float32), 1)

    def _fail(self, message: str) -> None:
        # NodeError: the worker prints one line and the graph stops, without a traceback or restarts.
        raise NodeError(f"{self.name}: {message}")

    # ---------------------------------------------------------------------------------- produce

    def produce(self) -> Iterator[tuple[str, Message]]:
        p = self.params
        self.pacer = Pacer(p.pace == "realtime", p.speed, 0)
        try:
            self.feed = prefetch(self._items(), PREFETCH_STEPS)
            for due, port, msg in self.feed:
                self.pacer.wait(due)
                self._count(port, msg)  # before yielding: the runtime may stop the generator right after sending
                yield port, msg
        except ValueError as exc:  # a video that fails to decode part way
            self._fail(str(exc))

    def _steps(self) -> Iterator[tuple[int, np.ndarray, bool]]:
        """(t µs, linear intensity (H, W), is a truth step) up to the duration."""
        p = self.params
        limit = p.duration_s * 1e6 if p.duration_s > 0 else math.inf
        if isinstance(self.scene, VideoScene):
            for t, image in self.scene.frames():
                if t > limit:
                    return
                yield t, image, True
            return
        rate = p.truth_fps * self.substeps
        i = 0
        while True:
            t = round(i * 1e6 / rate)
            if t > limit:
                return
            yield t, self.scene.render(t / 1e6), i % self.substeps == 0
            i += 1

    def _items(self) -> Iterator[Item]:
        """The simulation (runs on the prefetch thread): events, then the frames due at each step."""
        p = self.params
        if p.threads:
            numba.set_num_threads(min(p.threads, numba.config.NUMBA_NUM_THREADS))  # per thread: set it here
        simulator = EventSimulator(self.height, self.width, p.c_pos, p.c_neg, p.sigma_c, p.refractory_us,
                                   p.noise_rate_hz, p.log_eps, p.seed)
        aps = _ApsExposure(self.aps_period_us, p.aps_exposure_us)
        packets: list[Events] = []
        packet_start: int | None = None  # the previous flush time: the packet holds events in (packet_start, t]
        t = 0
        for t, image, is_truth in self._steps():
            self.steps_simulated += 1
            if packet_start is None:
                simulator.reset(image, t)
                packet_start = t
            else:
                packets.append(simulator.step(image, t))
            frames: list[tuple[str, Message]] = []
            if is_truth:
                frames.append(("truth", Message.from_frame(Frame(np.asarray(image, np.float32), t))))
            aps_frame = aps.add(t, image)
            if aps_frame is not None:
                frames.append(("frames", Message.from_frame(aps_frame)))
            if packets and (frames or t - packet_start >= p.packet_us):
                yield t, "events", self._events_message(packets, packet_start, t)
                packets, packet_start = [], t
            for port, msg in frames:
                yield t, port, msg
        if packets:
            yield t, "events", self._events_message(packets, packet_start, t)

    def _events_message(self, packets: list[Events], after: int, t: int) -> Message:
        """The events in (after, t]."""
        events = Events.concatenate(packets)
        msg = Message.from_events(events, width=self.width, height=self.height, watermark_us=t)
        msg.t_range = (after + 1, t)
        if not len(events):
            msg.trace = Trace(sensor_t=t)
        return msg

    def _count(self, port: str, msg: Message) -> None:
        produced = self.produced
        if port == "events":
            produced["messages"] += 1
            produced["events"] += len(msg.arrays["t"])
            if self.params.checksum:
                produced["checksum"] = (produced["checksum"] + msg.events().checksum()) % (1 << 64)
        else:
            produced[port] += 1

    def stop(self) -> None:
        if getattr(self, "feed", None) is not None:
            self.feed.close()  # stopped early: end the simulation thread before the scene closes under it
        report: dict[str, Any] = {"produced": self.produced, "scene": getattr(self, "scene_info", {}),
                                  "steps_simulated": getattr(self, "steps_simulated", 0)}
        if self.pacer is not None:
            report["pacing"] = self.pacer.summary()
        if isinstance(getattr(self, "scene", None), VideoScene):
            self.scene.close()
        self.report(report)


class _ApsExposure:
    """APS frames from simulation steps: frame k is due at t_k = k·period with exposure [t_k - e//2, t_k + e - e//2).

    With an exposure, the frame is the mean of the steps inside that window (t = t_k); with none (or
    no step inside it) the first step at or after t_k, at that step's time. Frames whose exposure would
    start before the first step are skipped.
    """

    def __init__(self, period_us: float, exposure_us: int) -> None:
        self.period_us, self.exposure_us = period_us, exposure_us
        self.k = 0
        self.first_t: int | None = None
        self.total: np.ndarray | None = None
        self.count = 0

    def _window(self) -> tuple[int, int, int]:
        t_k = round(self.k * self.period_us)
        lo = t_k - self.exposure_us // 2
        return t_k, lo, lo + self.exposure_us

    def add(self, t: int, image: np.ndarray) -> Frame | None:
        if self.first_t is None:
            self.first_t = t
            while self._window()[1] < t:
                self.k += 1
        t_k, lo, hi = self._window()
        if self.exposure_us == 0 or hi <= lo:
            if t < t_k:
                return None
            self.k += 1
            while self._window()[0] <= t:  # steps sparser than APS frames: one frame per step at most
                self.k += 1
            return Frame(_to_uint8(image), t)
        if lo <= t < hi:
            self.total = image.astype(np.float64) if self.total is None else self.total + image
            self.count += 1
        if t < hi - 1:
            return None
        mean = self.total / self.count if self.count else image
        frame = Frame(_to_uint8(mean), t_k, self.exposure_us) if self.count else Frame(_to_uint8(image), t)
        self.total, self.count = None, 0
        self.k += 1
        return frame


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
