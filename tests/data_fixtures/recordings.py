"""Writers for small event recordings in every format the readers support, and for small videos, for tests.

Each writer encodes from the format's description (not from the reader's code) so a round trip
checks the decoder against the format. Events are given as sorted int64 µs ``t`` and integer
``x``, ``y``, ``p`` (0/1) arrays.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from evpipe.runtime.events import Events


def random_events(n: int, width: int, height: int, *, t0: int = 0, rate_per_us: float = 0.5, seed: int = 0) -> Events:
    """``n`` sorted events with exponential gaps (many share a timestamp), uniform pixels and polarity."""
    rng = np.random.default_rng(seed)
    t = t0 + np.cumsum(rng.poisson(1.0 / rate_per_us, n)).astype(np.int64)
    return Events.from_arrays(t, rng.integers(0, width, n), rng.integers(0, height, n), rng.integers(0, 2, n))


def polarity01(events: Events) -> np.ndarray:
    return (events.p > 0).astype(np.int64)


def _rows(events: Events) -> zip:
    """(t, x, y, p 0/1) per event as Python ints."""
    return zip(events.t.tolist(), events.x.tolist(), events.y.tolist(), polarity01(events).tolist(), strict=True)


# ------------------------------------------------------------------------------ Prophesee


def _raw_header(version: str, geometry: tuple[int, int] | None) -> bytes:
    lines = ["% date 2024-01-01 00:00:00", f"% evt {version}"]
    if geometry is not None:
        lines.append(f"% geometry {geometry[0]}x{geometry[1]}")
    return ("\n".join(lines) + "\n").encode()


def encode_evt2(events: Events) -> np.ndarray:
    """EVT 2.0 words (uint32): a TIME_HIGH whenever t >> 6 changes, then one CD word per event."""
    words: list[int] = []
    high = None
    for t, x, y, p in _rows(events):
        if t >> 6 != high:
            high = t >> 6
            words.append((0x8 << 28) | (high & 0x0FFFFFFF))
        words.append((p << 28) | ((t & 0x3F) << 22) | (x << 11) | y)
    return np.array(words, dtype="<u4")


def write_evt2(path: Path, events: Events, *, geometry: tuple[int, int] | None = None) -> Path:
    path.write_bytes(_raw_header("2.0", geometry) + encode_evt2(events).tobytes())
    return path


def encode_evt3(events: Events, *, stray_before_t: int | None = None) -> np.ndarray:
    """EVT 3.0 words (uint16). Runs of events sharing t, y and polarity at neighbouring x are sent as
    VECT_BASE_X + VECT_12/VECT_8 masks; isolated events as EVT_ADDR_X. Time words are sent when the
    high or low 12 bits change. ``stray_before_t``: just before the TIME_LOW that opens timestamp
    ``stray_before_t``, insert a spurious TIME_LOW 11 µs ahead (the pattern seen in a real file)."""
    words: list[int] = []
    t_all, x_all, y_all = events.t, events.x.astype(np.int64), events.y.astype(np.int64)
    p_all = polarity01(events)
    order = np.lexsort((x_all, p_all, y_all, t_all))
    high = low = y = None
    i = 0
    n = len(order)
    while i < n:
        e = order[i]
        t, yy, pol = int(t_all[e]), int(y_all[e]), int(p_all[e])
        new_high, new_low = (t >> 12) & 0xFFF, t & 0xFFF
        if new_high != high:
            words.append((0x8 << 12) | new_high)
            high, low = new_high, None
        if new_low != low:
            if t == stray_before_t:
                words.append((0x6 << 12) | ((new_low + 11) & 0xFFF))
            words.append((0x6 << 12) | new_low)
            low = new_low
        if yy != y:
            words.append(yy)  # EVT_ADDR_Y, type 0
            y = yy
        # Collect the run sharing t, y, polarity.
        j = i
        xs = []
        while j < n and t_all[order[j]] == t and y_all[order[j]] == yy and p_all[order[j]] == pol:
            xs.append(int(x_all[order[j]]))
            j += 1
        k = 0
        while k < len(xs):
            base = xs[k]
            group = [x for x in xs[k:] if x < base + 12]
            if len(group) == 1:
                words.append((0x2 << 12) | (pol << 11) | base)
            else:
                words.append((0x3 << 12) | (pol << 11) | base)
                mask = 0
                for x in group:
                    mask |= 1 << (x - base)
                if mask < 256:
                    words.append((0x5 << 12) | mask)
                else:
                    words.append((0x4 << 12) | mask)
            k += len(group)
        i = j
    return np.array(words, dtype="<u2")


def write_evt3(path: Path, events: Events, *, geometry: tuple[int, int] | None = None, **kwargs: int) -> Path:
    path.write_bytes(_raw_header("3.0", geometry) + encode_evt3(events, **kwargs).tobytes())
    return path


# ---------------------------------------------------------------------------- Event Stream


def write_event_stream(path: Path, events: Events, width: int, height: int) -> Path:
    """Event Stream 2.0.0, DVS type: overflow bytes 0xFF (+127 µs), then (dt << 1 | p), x, y."""
    out = bytearray(b"Event Stream" + bytes([2, 0, 0, 1]))
    out += width.to_bytes(2, "little") + height.to_bytes(2, "little")
    previous = 0
    for t, x, y, p in _rows(events):
        delta = t - previous
        while delta >= 127:
            out.append(0xFF)
            delta -= 127
        out.append((delta << 1) | p)
        out += x.to_bytes(2, "little") + y.to_bytes(2, "little")
        previous = t
    path.write_bytes(bytes(out))
    return path


# ---------------------------------------------------------------------------------- text


def write_rpg_text(
    folder: Path,
    events: Events,
    *,
    frames: list[tuple[int, np.ndarray]] = (),
    name: str = "events.txt",
) -> Path:
    """events.txt (``t[s] x y p``) and, with ``frames`` [(t µs, uint8 image)], images.txt + PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{t / 1e6:.9f} {x} {y} {p}" for t, x, y, p in _rows(events)]
    (folder / name).write_text("\n".join(lines) + "\n")
    if frames:
        (folder / "images").mkdir(exist_ok=True)
        listing = []
        for i, (t, image) in enumerate(frames):
            relative = f"images/frame_{i:08d}.png"
            Image.fromarray(image).save(folder / relative)
            listing.append(f"{t / 1e6:.9f} {relative}")
        (folder / "images.txt").write_text("\n".join(listing) + "\n")
    return folder / name


# ---------------------------------------------------------------------------------- HDF5


def write_h5_dsec(path: Path, events: Events, *, t_offset: int) -> Path:
    """DSEC layout: events/{x,y,t,p} with t relative to t_offset (µs), ms_to_idx, t_offset."""
    relative = events.t - t_offset
    with h5py.File(path, "w") as f:
        f["events/x"] = events.x
        f["events/y"] = events.y
        f["events/t"] = relative.astype(np.uint32)
        f["events/p"] = polarity01(events).astype(np.uint8)
        ms = np.arange(0, relative[-1] // 1000 + 2) * 1000
        f["ms_to_idx"] = np.searchsorted(relative, ms, side="left").astype(np.uint64)
        f["t_offset"] = np.int64(t_offset)
    return path


def write_h5_plain(path: Path, arrays: dict[str, np.ndarray], *, group: str | None = None, **attrs: object) -> Path:
    """Plain layout: the given named arrays under ``group`` (or the root), attributes on the root."""
    with h5py.File(path, "w") as f:
        target = f.require_group(group) if group else f
        for name, array in arrays.items():
            target[name] = array
        f.attrs.update(attrs)
    return path


def event_arrays(events: Events) -> dict[str, np.ndarray]:
    return {"t": events.t, "x": events.x, "y": events.y, "p": polarity01(events).astype(np.uint8)}


# -------------------------------------------------------------------------------- AEDAT4


def write_aedat4(
    path: Path,
    events: Events,
    width: int,
    height: int,
    *,
    frames: list[tuple[int, int, np.ndarray]] = (),
) -> Path:
    """AEDAT4 via dv-processing's writer: events in packets of 1000 and frames given as
    (exposure start µs, exposure µs, uint8 image (H, W) gray or (H, W, 3) BGR)."""
    import dv_processing as dv

    writer = dv.io.MonoCameraWriter(str(path), dv.io.MonoCameraWriter.DAVISConfig("TEST_0001", (width, height)))
    for start in range(0, len(events), 1000):
        store = dv.EventStore()
        for t, x, y, p in _rows(events[start : start + 1000]):
            store.push_back(t, x, y, bool(p))
        writer.writeEvents(store)
    for t, exposure, image in frames:
        writer.writeFrame(dv.Frame(t, exposure, 0, 0, image, dv.FrameSource.SENSOR))
    del writer  # the writer completes the file (its packet index) when destroyed
    return path


def write_video(path: Path, frames: np.ndarray, rate: int) -> Path:
    """An H.264 video of ``frames`` (N, H, W, 3) uint8 RGB (H, W even) at ``rate`` frames per second."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
