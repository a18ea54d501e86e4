"""The voxelizer: event packets in, E2VID voxel grids of chosen time windows out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from evpipe.kernels import voxel_grid
from evpipe.kernels.voxel import warm_up as warm_up_voxel_grid
from evpipe.runtime.events import Events, Frame
from evpipe.runtime.node import Node, NodeError, ParamError, Spec
from evpipe.runtime.wire import Message

_INITIAL_CAPACITY = 1 << 16


def kernel_device(node: str, device: str) -> int | None:
    """The CUDA device index a kernel node's ``device`` parameter names (None: the CPU); ParamError
    naming ``node.device`` when it is malformed or this machine has no such GPU (no silent CPU fallback)."""
    if device == "cpu":
        return None
    index_text = device[5:] if device.startswith("cuda:") else "0" if device == "cuda" else None
    if index_text is None or not index_text.isdigit():
        raise ParamError(f"{node}.device: must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    try:
        from numba import cuda

        gpus = len(cuda.gpus) if cuda.is_available() else 0
    except Exception:  # a broken CUDA driver install counts as no GPU for the message below
        gpus = 0
    if gpus == 0:
        raise ParamError(f"{node}.device: {device.split(':')[0]} is not available: Numba finds no CUDA GPU "
                         "(on a CUDA machine: pip install 'evpipe[gpu]')")
    if int(index_text) >= gpus:
        raise ParamError(f"{node}.device: {device} does not exist: Numba sees {gpus} CUDA GPU(s)")
    return int(index_text)


def event_watermark(msg: Message) -> int | None:
    """Sensor time (µs) up to which an events message proves its stream complete, or None.

    A source that knows more says so in meta ``watermark_us`` (every event at or before it has been
    sent; e.g. replay time slices, simulator steps). Otherwise the newest event at t proves only that
    every event before t has arrived (more events at t itself may follow): t - 1.
    """
    mark = msg.meta.get("watermark_us")
    if mark is not None:
        return int(mark)
    t = msg.arrays["t"]
    return int(t[-1]) - 1 if len(t) else None


class EventBuffer:
    """Time-ordered events in growable arrays: append at the end, release from the front.

    Appends copy into spare capacity (doubling when full, compacting when the released front is
    large), so buffering costs amortised O(1) per event — never a concatenation of the whole buffer.
    Views returned by the properties are valid until the next `append`.
    """

    def __init__(self, capacity: int = _INITIAL_CAPACITY) -> None:
        self._t = np.empty(capacity, np.int64)
        self._x = np.empty(capacity, np.uint16)
        self._y = np.empty(capacity, np.uint16)
        self._p = np.empty(capacity, np.int8)
        self._start = 0
        self._stop = 0

    def __len__(self) -> int:
        return self._stop - self._start

    @property
    def t(self) -> np.ndarray:
        return self._t[self._start:self._stop]

    def events(self, lo: int = 0, hi: int | None = None) -> Events:
        """Events [lo, hi) of the buffer (indices relative to its front); views, no copy."""
        s = slice(self._start + lo, self._stop if hi is None else self._start + hi)
        return Events(self._t[s], self._x[s], self._y[s], self._p[s])

    def append(self, events: Events) -> None:
        n = len(events)
        if self._stop + n > len(self._t):
            live = len(self)
            capacity = len(self._t)
            while live + n > capacity // 2:
                capacity *= 2
            for name in ("_t", "_x", "_y", "_p"):
                old = getattr(self, name)
                new = old if capacity == len(old) else np.empty(capacity, old.dtype)
                new[:live] = old[self._start:self._stop]  # a forward copy within one array is safe (memmove)
                setattr(self, name, new)
            self._start, self._stop = 0, live
        stop = self._stop + n
        self._t[self._stop:stop] = events.t
        self._x[self._stop:stop] = events.x
        self._y[self._stop:stop] = events.y
        self._p[self._stop:stop] = events.p
        self._stop = stop

    def release_before(self, t: int) -> np.ndarray:
        """Drop the events with time < ``t``; returns their timestamps (a view valid until the next append)."""
        n = int(np.searchsorted(self.t, t, side="left"))
        return self.release(n)

    def release(self, n: int) -> np.ndarray:
        """Drop the first ``n`` events; returns their timestamps (a view valid until the next append)."""
        released = self._t[self._start:self._start + n]
        self._start += n
        return released


class EventIntake:
    """A node's received event stream: time-ordered events in an :class:`EventBuffer` and how far the
    stream is known to be complete.

    ``accept`` drops events that go back in time (older than the newest kept one) and, given a sensor
    ``size`` (width, height), events outside it, then buffers the rest. ``watermark``: every event at or
    before this sensor time has arrived (:func:`event_watermark`, at least the newest kept event - 1).
    ``released_before``: every event older than this has been dropped from the buffer.
    """

    def __init__(self) -> None:
        self.buffer = EventBuffer()
        self.watermark: int | None = None
        self.t_last: int | None = None  # newest event time kept (later events must not be older)
        self.released_before = np.iinfo(np.int64).min

    def accept(self, msg: Message, size: tuple[int, int] | None = None) -> tuple[Events, int, int]:
        """Buffer the in-order events of ``msg`` and advance the watermark. Returns (the events kept,
        how many went back in time, how many in-order ones fell outside ``size``)."""
        events = msg.events()
        mark = event_watermark(msg)
        n_back = n_outside = 0
        if len(events):
            floor = self.t_last if self.t_last is not None else np.iinfo(np.int64).min
            running = np.maximum.accumulate(events.t)
            keep = events.t >= np.maximum(np.concatenate(([floor], running[:-1])), floor)
            n_back = len(events) - int(np.count_nonzero(keep))
            if size is not None:
                inside = (events.x < size[0]) & (events.y < size[1])
                n_outside = int(np.count_nonzero(keep & ~inside))
                keep &= inside
            events = events if keep.all() else events[keep]
        if len(events):
            self.buffer.append(events)
            self.t_last = int(events.t[-1])
            mark = max(mark, self.t_last - 1) if mark is not None else self.t_last - 1
        if mark is not None and (self.watermark is None or mark > self.watermark):
            self.watermark = mark
        return events, n_back, n_outside

    def known_until(self, final: bool) -> int:
        """Every event at or before this time has arrived: the watermark, or at the end of the stream
        (``final``) the last event too; the int64 minimum before anything is known."""
        limit = self.watermark if self.watermark is not None else np.iinfo(np.int64).min
        if final and self.t_last is not None:
            limit = max(limit, self.t_last)
        return limit

    def release_before(self, cut: int) -> np.ndarray:
        """Drop the events older than ``cut`` if that advances ``released_before``; returns the dropped
        events' timestamps (empty if nothing was dropped; a view valid until the next append)."""
        if cut <= self.released_before:
            return self.buffer.t[:0]
        self.released_before = cut
        return self.buffer.release_before(cut)


@dataclass
class _Window:
    """Events with lo <= t < hi (µs) become one voxel grid; ``meta`` goes into its message."""

    lo: int
    hi: int
    meta: dict[str, Any]


class Voxelizer(Node):
    """Turns an event stream into voxel grids (E2VID definition, `evpipe.kernels.voxel_grid`) of time windows.

    Modes (``mode``):

    * ``window``: fixed windows [k·window_us, (k+1)·window_us) of sensor time (the grid starts at the
      window of the first event; with ``emit_empty`` windows without events give zero grids), or,
      with ``window_events`` > 0, every ``window_events`` consecutive events.
    * ``frame_sync`` (for the next-frame predictor): every frame on ``frames`` (time a, its exposure
      midpoint) is an anchor; with interval I (``frame_interval_us``, or when 0 the spacing of the last
      two anchors) it yields ``predictions_per_frame`` = P windows with targets a + round(k·I/P),
      k = 1..P, each holding ALL events with a < t <= target — the events between the anchor frame and
      the target, the layout the predictor is trained on. The first anchor has no windows when I is
      measured (its interval is unknown).
    * ``exposure`` (for the deblurrer): one window per frame with its exposure [t - e//2, t + e - e//2)
      (frames without an exposure time are counted and skipped).

    A window is emitted as soon as its events are known to be complete: the events stream's watermark
    (`event_watermark`) has reached its last µs. Windows that become ready together are computed in
    one batched ``voxel_grid(..., windows=...)`` call. At the end of the stream, windows reaching past
    the last known sensor time are dropped and counted (``cut_at_end``), except in ``window`` mode,
    whose last, partial window holds real events and is emitted.

    Output: kind voxel, ``voxel`` float32 (bins, H, W) (unnormalised, as in training), ``t_range``
    (lo, hi - 1), meta ``mode``, ``t_start``/``t_end`` (the half-open µs range [lo, hi) of events),
    ``t_anchor``/``t_target`` (frame_sync: anchor frame time and target time; exposure: the frame's
    time for both; window: window start and end), ``k`` and ``predictions_per_frame`` (frame_sync),
    ``bins``, ``events`` (count in the window), ``width``, ``height``. Frames are not passed through:
    connect the source's frames to every consumer (an output port fans out to several edges).

    The set of windows depends only on event and frame times, not on how the two input edges
    interleave: events are kept from the oldest pending window's start (and, for windows of frames
    still to come, from the last frame's time), so a frame arriving late still finds its events.
    Memory stays bounded: older events are released, and those never part of an emitted window are
    counted (``events_unused``). A frame delayed more than ``max_buffer_us`` of sensor time behind the
    events finds its events gone: its windows are skipped and counted (``windows_skipped_late``).
    Events going back in time or outside the sensor are dropped and counted.
    """

    @classmethod
    def setup(cls, spec: Spec) -> None:
        spec.input("events", "events", "event packets, time-ordered")
        spec.input("frames", "frame", "anchor frames (frame_sync) or exposed frames (exposure); unused by window")
        spec.output("voxels", "voxel", "voxel grids float32 (bins, H, W) with window times in meta")
        spec.param("mode", str, "window", "which windows to voxelize", choices=["window", "frame_sync", "exposure"])
        spec.param("bins", int, 5, "temporal bins per grid", minimum=1)
        spec.param("window_us", int, 10_000, "window mode: window length in µs", minimum=1)
        spec.param("window_events", int, 0, "window mode: events per window instead of a time window (0: off)",
                   minimum=0)
        spec.param("emit_empty", bool, True, "window mode: emit zero grids for time windows without events")
        spec.param("predictions_per_frame", int, 8, "frame_sync: target times per anchor frame interval", minimum=1)
        spec.param("frame_interval_us", int, 0, "frame_sync: anchor frame interval in µs; 0 measures it from the "
                   "last two frames", minimum=0)
        spec.param("sensor_size", list, None, "[width, height]; null takes width/height from the events' meta")
        spec.param("max_buffer_us", int, 1_000_000, "events kept for frames still to come, in µs of sensor time",
                   minimum=1)
        spec.param("max_batch", int, 16, "most windows computed in one voxel_grid call (bounds its memory)",
                   minimum=1)
        spec.param("threads", int, 1, "Numba threads for voxel_grid (0: all cores); on a busy 2-core machine "
                   "one thread was faster (200k events: 1.4 ms vs 4.6 ms with two)", minimum=0)
        spec.param("device", str, "cpu", "where voxel_grid runs: cpu (Numba), cuda or cuda:N (the Numba-CUDA kernel: "
                   "each batch's events go to the GPU and its grids come back, see README 'GPU')")

    @classmethod
    def check_machine(cls, name: str, params: dict[str, Any]) -> None:
        kernel_device(name, params["device"])

    def _grids(self, ev: Events, batch: np.ndarray, bins: int, height: int, width: int) -> np.ndarray:
        """Grids of the windows ``batch`` (index ranges into ``ev``) on the node's device, as host arrays.

        On a GPU only the events the batch covers are copied over (13 bytes per event: t, x, y, p) and
        the grids come back (4 bytes x bins x H x W each): messages stay host arrays on the wire."""
        if self.gpu_index is None:
            return voxel_grid(ev.t, ev.x, ev.y, ev.p, bins, height, width, windows=np.ascontiguousarray(batch))
        lo, hi = int(batch[:, 0].min()), int(batch[:, 1].max())
        part = ev[lo:hi]
        grids = voxel_grid(part.t, part.x, part.y, part.p, bins, height, width,
                           windows=np.ascontiguousarray(batch - lo), device="cuda")
        return grids.copy_to_host()

    def start(self) -> None:
        p = self.params
        self.gpu_index = kernel_device(self.name, p.device)
        if self.gpu_index is not None:
            from numba import cuda

            cuda.select_device(self.gpu_index)
        if p.threads:
            numba.set_num_threads(min(p.threads, numba.config.NUMBA_NUM_THREADS))
        self.size: tuple[int, int] | None = None
        if p.sensor_size is not None:
            if len(p.sensor_size) != 2 or not all(isinstance(v, int) and v > 0 for v in p.sensor_size):
                raise NodeError(f"{self.name}: parameter 'sensor_size' must be [width, height] (positive "
                                 f"integers), got {p.sensor_size}")
            self.size = (p.sensor_size[0], p.sensor_size[1])
        # Load every compiled path of the kernel now, not on the first batch of windows (about a second).
        warm_up_voxel_grid()
        self.stream = EventIntake()
        self.pending: list[_Window] = []
        self.emitted_spans: list[tuple[int, int]] = []  # [lo, hi) of emitted windows that may cover buffered events
        self.last_frame_t: int | None = None
        self.previous_anchor_t: int | None = None
        self.max_exposure_us = 0
        self.next_window_k: int | None = None  # window mode (time): index of the next window to create
        self.counts = {"events_in": 0, "events_out_of_order": 0, "events_outside_sensor": 0, "events_unused": 0,
                       "frames_in": 0, "frames_ignored": 0, "anchors_without_interval": 0, "windows": 0,
                       "windows_skipped_late": 0, "cut_at_end": 0}

    # ------------------------------------------------------------------------------------ input

    def process(self, port: str, msg: Message) -> None:
        if port == "frames":
            self._on_frame(msg.frame())
        else:
            self._on_events(msg)
        self._emit_ready(final=False)
        self._release()

    def _on_events(self, msg: Message) -> None:
        if self.size is None and "width" in msg.meta and "height" in msg.meta:
            self.size = (int(msg.meta["width"]), int(msg.meta["height"]))
        self.counts["events_in"] += len(msg.arrays["t"])
        events, n_back, n_outside = self.stream.accept(msg, self.size)
        self.counts["events_out_of_order"] += n_back
        self.counts["events_outside_sensor"] += n_outside
        if (len(events) and self.params.mode == "window" and self.next_window_k is None
                and not self.params.window_events):
            self.next_window_k = int(events.t[0]) // self.params.window_us

    def _on_frame(self, frame: Frame) -> None:
        p = self.params
        self.counts["frames_in"] += 1
        if p.mode == "window" or (self.last_frame_t is not None and frame.t <= self.last_frame_t):
            self.counts["frames_ignored"] += 1  # not used in window mode; older than a frame already seen
            return
        self.last_frame_t = frame.t
        windows = []
        if p.mode == "frame_sync":
            interval = p.frame_interval_us or (frame.t - self.previous_anchor_t if self.previous_anchor_t is not None
                                               else 0)
            self.previous_anchor_t = frame.t
            if not interval:
                self.counts["anchors_without_interval"] += 1
            n = p.predictions_per_frame
            for k in range(1, n + 1 if interval else 1):
                target = frame.t + round(k * interval / n)
                windows.append(_Window(frame.t + 1, target + 1, {
                    "mode": "frame_sync", "t_anchor": frame.t, "t_target": target, "k": k,
                    "predictions_per_frame": n}))
        elif frame.exposure_us > 0:
            self.max_exposure_us = max(self.max_exposure_us, frame.exposure_us)
            windows.append(_Window(frame.exposure_start, frame.exposure_end, {
                "mode": "exposure", "t_anchor": frame.t, "t_target": frame.t, "exposure_us": frame.exposure_us}))
        else:
            self.counts["frames_ignored"] += 1
        for window in windows:
            if window.lo < self.stream.released_before:  # its first events were released while the frame was delayed
                self.counts["windows_skipped_late"] += 1
            else:
                self.pending.append(window)

    # ----------------------------------------------------------------------------------- output

    def _create_time_windows(self, final: bool) -> None:
        """Window mode (time): create the windows the watermark (or, at the end, the last event) has reached."""
        w = self.params.window_us
        if self.next_window_k is None:
            return
        if final:
            last_k = self.stream.t_last // w if self.stream.t_last is not None else self.next_window_k - 1
        else:
            mark = self.stream.watermark
            last_k = (mark + 1) // w - 1 if mark is not None else self.next_window_k - 1
        for k in range(self.next_window_k, last_k + 1):
            self.pending.append(_Window(k * w, (k + 1) * w, {"mode": "window", "t_anchor": k * w,
                                                              "t_target": (k + 1) * w}))
        self.next_window_k = max(self.next_window_k, last_k + 1)

    def _emit_ready(self, final: bool) -> None:
        p = self.params
        if p.mode == "window" and p.window_events:
            self._emit_count_windows(final)
            return
        if p.mode == "window":
            self._create_time_windows(final)
        if not self.pending:
            return
        if final and p.mode == "window":
            ready, self.pending = self.pending, []
        else:
            limit = self.stream.known_until(final)
            ready = [w for w in self.pending if w.hi - 1 <= limit]
            self.pending = [w for w in self.pending if w.hi - 1 > limit]
            if final:
                self.counts["cut_at_end"] += len(self.pending)
                self.pending = []
        if not ready:
            return
        t = self.stream.buffer.t
        bounds = np.array([[w.lo, w.hi] for w in ready], np.int64)
        index = np.searchsorted(t, bounds, side="left").astype(np.int64)
        if p.mode == "window" and not p.emit_empty:
            keep = index[:, 1] > index[:, 0]
            ready = [w for w, k in zip(ready, keep, strict=True) if k]
            index = index[keep]
        self._emit_windows(ready, index)

    def _emit_count_windows(self, final: bool) -> None:
        n = self.params.window_events
        count = len(self.stream.buffer) // n
        index = np.arange(count, dtype=np.int64)[:, None] * n + np.array([0, n], np.int64)
        if final and len(self.stream.buffer) % n:
            index = np.concatenate([index, [[count * n, len(self.stream.buffer)]]]).astype(np.int64)
        if not len(index):
            return
        t = self.stream.buffer.t
        ready = [_Window(int(t[lo]), int(t[hi - 1]) + 1, {"mode": "window", "t_anchor": int(t[lo]),
                                                           "t_target": int(t[hi - 1]) + 1})
                 for lo, hi in index.tolist()]
        self._emit_windows(ready, index)
        self.stream.buffer.release(int(index[-1, 1]))

    def _emit_windows(self, windows: list[_Window], index: np.ndarray) -> None:
        """Compute and send the voxel grids of ``windows`` (event index ranges ``index`` into the buffer)."""
        if not windows:
            return
        if self.size is None:
            raise NodeError(f"{self.name}: the sensor size is unknown: the events carry no width/height meta; "
                             "set parameter 'sensor_size' to [width, height]")
        width, height = self.size
        bins = self.params.bins
        ev = self.stream.buffer.events()
        for start in range(0, len(windows), self.params.max_batch):
            batch = index[start:start + self.params.max_batch]
            grids = self._grids(ev, batch, bins, height, width)
            for window, (lo, hi), grid in zip(windows[start:start + len(batch)], batch.tolist(), grids, strict=True):
                meta = {**window.meta, "t_start": window.lo, "t_end": window.hi, "bins": bins, "events": hi - lo,
                        "width": width, "height": height}
                self.emit("voxels", Message("voxel", {"voxel": grid}, meta, (window.lo, window.hi - 1)))
                self.emitted_spans.append((window.lo, window.hi))
                self.counts["windows"] += 1

    def _release(self) -> None:
        """Drop events no pending or future window can need (see the class docstring)."""
        p = self.params
        if p.mode == "window" and p.window_events:
            return  # count windows release what they used
        if p.mode == "window":
            cut = self.next_window_k * p.window_us if self.next_window_k is not None else None
        else:
            # Windows of frames still to come start after the last frame seen (exposure: up to one exposure
            # before it); with no frame yet, any time may be needed — bounded by max_buffer_us below.
            future = None
            if self.last_frame_t is not None:
                future = self.last_frame_t + 1 - (self.max_exposure_us if p.mode == "exposure" else 0)
            if self.stream.watermark is not None:
                expiry = self.stream.watermark - p.max_buffer_us
                future = expiry if future is None else max(future, expiry)
            cut = future
        if cut is None:
            return
        if self.pending:
            cut = min(cut, min(w.lo for w in self.pending))
        self._count_unused(self.stream.release_before(cut))
        self.emitted_spans = [(lo, hi) for lo, hi in self.emitted_spans if hi > cut]

    def _count_unused(self, released: np.ndarray) -> None:
        """Count released events (their timestamps) that no emitted window covered."""
        if not len(released):
            return
        covered = np.zeros(len(released), bool)
        for lo, hi in self.emitted_spans:
            covered |= (released >= lo) & (released < hi)
        self.counts["events_unused"] += int(len(released) - np.count_nonzero(covered))

    def stop(self) -> None:
        if hasattr(self, "stream"):
            self._emit_ready(final=True)
            if not (self.params.mode == "window" and self.params.window_events):
                self._count_unused(self.stream.buffer.release(len(self.stream.buffer)))
        self.report(dict(self.counts))
