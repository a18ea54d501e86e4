"""Synthetic event datasets on disk: layout, lazy loader, and training views for every model.

Datasets are written by ``tools/make_dataset.py`` (see its docstring for how sequences are
synthesised). Where they live: ``$EVPIPE_DATASETS/<name>`` if that environment variable is set,
else ``~/.cache/evpipe/datasets/<name>`` — :func:`default_dataset_path`. The ``tiny`` preset is
``~/.cache/evpipe/datasets/tiny``. Nothing generated belongs in the repository.

On-disk layout (format ``evpipe-event-dataset`` version 1)::

    <root>/dataset.json           global metadata (below)
    <root>/<split>/<sequence>.h5  one HDF5 file per sequence, split in {train, val, test}

``dataset.json``: ``format``, ``version``, ``name``, ``preset``, ``config`` (every build
parameter), ``height``, ``width``, ``channels`` (1 gray, 3 RGB), ``seed``, ``sources``
(source name -> {kind "image"/"clip", origin, split}), ``splits`` (split -> source names; a
source is in exactly one split), ``sequences`` (list of per-sequence metadata, the same dict
as the HDF5 file's ``meta`` attribute), ``counts`` and ``build_seconds``.

Per-sequence HDF5 file (N ground-truth frames, M APS frames, E events)::

    frames          float16 (N, H, W) gray or (N, H, W, 3) RGB; linear intensity in [0, 1],
                    the ground truth at the high (simulation) rate; one chunk per frame
    frames_t        int64 (N,) µs, strictly increasing
    aps_index       int64 (M,) indices into frames: the "APS" frames (the low, video rate)
    events/t,x,y,p  int64 µs / uint16 / uint16 / int8 ±1 (E,), sorted by t (lzf-compressed)
    event_index     int64 (N,) number of events with t <= frames_t[i]: the events between
                    frames i < j (t in (frames_t[i], frames_t[j]]) are [event_index[i], event_index[j])
    blur/frames     float16 (M, ...) blurry frame of APS frame m = float16 of the float64 mean of
                    frames[blur/first[m] : blur/last[m] + 1] (an odd count, centred on aps_index[m])
    blur/first, blur/last            int64 (M,) inclusive frame range of each blurry frame
    blur/exposure_start, blur/exposure_end   int64 (M,) µs: the exposure window [start, end) that
                    the mean stands for: from halfway between frames first-1 and first to halfway
                    between last and last+1, so each averaged frame stands for one frame period.
                    The window's events are those with start <= t < end; feeding them to
                    ``edi_integral(..., exposure_start, exposure_end, n_samples=last-first+1)``
                    puts the EDI samples exactly at the averaged frames' times.
    attrs["meta"]   JSON: name, source, kind, split, sizes, APS interval, substeps, simulator
                    parameters (c_pos, c_neg, sigma_c, refractory_us, noise_rate_hz, seed), ...

Events come from the simulator run on the luminance (:func:`luminance`) of the stored float16
frames converted to float32, so re-running ``simulate_events`` on them reproduces them exactly.

Loading is lazy: a :class:`SequenceFile` opens its HDF5 file on first access (once per process,
so the views work in torch DataLoader workers) and reads only the requested frames and event
ranges. The views return dicts of numpy arrays — images float32 (C, H, W) in [0, 1], voxel grids
float32 (B, H, W) (E2VID definition, ``evpipe.kernels.voxel_grid``, unnormalised), scalars as
numpy int64 — so ``torch.utils.data.DataLoader(view, batch_size=...)`` batches them directly.
With ``with_events=True`` a view also returns the raw ``Events`` (not batchable: use
``batch_size=None`` or a custom ``collate_fn``). Every view takes ``dataset``: an
:class:`EventDataset` (used as given, with its split), or a path (None: the default ``tiny``
location) opened with ``split`` (default ``"train"``; None for every split).

    from evpipe.tools.dataset import PredictionView
    view = PredictionView(split="train", k_max=4, bins=5)     # ~/.cache/evpipe/datasets/tiny
    loader = torch.utils.data.DataLoader(view, batch_size=16, shuffle=True, num_workers=2)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from evpipe.kernels import voxel_grid
from evpipe.runtime.events import Events

FORMAT = "evpipe-event-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
ENV_DATASETS = "EVPIPE_DATASETS"
# Rec. 709 luma weights, the ones skimage.color.rgb2gray uses.
LUMA_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], np.float32)


def datasets_root() -> Path:
    """``$EVPIPE_DATASETS`` if set, else ``~/.cache/evpipe/datasets``."""
    env = os.environ.get(ENV_DATASETS)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evpipe" / "datasets"


def default_dataset_path(name: str = "tiny") -> Path:
    """Where dataset ``name`` lives by default: ``datasets_root() / name``."""
    return datasets_root() / name


def luminance(rgb: np.ndarray) -> np.ndarray:
    """float32 (...) luminance of float (..., 3) linear RGB: Rec. 709 weights (as skimage rgb2gray)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.shape[-1] != 3:
        raise ValueError(f"luminance: expected (..., 3) RGB, got shape {rgb.shape}")
    return rgb @ LUMA_WEIGHTS


def exposure_window(frames_t: np.ndarray, center: np.ndarray | int, half: int) -> tuple[Any, Any, Any, Any]:
    """(first, last, exposure_start, exposure_end) of the blur window of 2 half + 1 frames around ``center``.

    The mean of frames[first : last + 1] stands for an exposure from halfway between frames
    first - 1 and first to halfway between last and last + 1 (µs, [start, end)); needs
    1 <= first and last <= N - 2. Works elementwise for an array of centres.
    """
    first, last = np.asarray(center) - half, np.asarray(center) + half
    if half < 0 or np.min(first) < 1 or np.max(last) > len(frames_t) - 2:
        raise ValueError(f"blur window of {2 * half + 1} frames around {center} leaves the {len(frames_t)} frames"
                         " (a margin frame is needed on each side)")
    return first, last, (frames_t[first - 1] + frames_t[first]) // 2, (frames_t[last] + frames_t[last + 1]) // 2


class SequenceFile:
    """One synthesised sequence, read lazily from its HDF5 file.

    ``meta`` (dict) is available without opening the file; arrays are read on demand. Small
    index arrays (``frames_t``, ``aps_index``, ``event_index``, blur windows) are read once.
    """

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        self.name: str = meta["name"]
        self.height: int = int(meta["height"])
        self.width: int = int(meta["width"])
        self.channels: int = int(meta["channels"])
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._index: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # An open HDF5 handle must not cross a fork/pickle: each worker reopens its own.
        return {**self.__dict__, "_file": None, "_pid": None, "_datasets": {}}

    def __repr__(self) -> str:
        return f"SequenceFile({self.name!r}, split={self.meta.get('split')!r}, {self.path})"

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as error:
                raise OSError(f"{self.path}: cannot open sequence file ({error})") from error
            self._pid = os.getpid()
            self._datasets = {}
        return self._file

    def _dataset(self, name: str) -> h5py.Dataset:
        """A dataset handle, looked up once per open file (a path lookup costs more than a small read)."""
        f = self.file
        handle = self._datasets.get(name)
        if handle is None:
            try:
                handle = self._datasets[name] = f[name]
            except KeyError as error:
                raise ValueError(f"{self.path}: missing dataset {name!r} (not a {FORMAT} sequence file?)") from error
        return handle

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._datasets = {}

    def _indices(self) -> dict[str, np.ndarray]:
        if self._index is None:
            f = self.file
            names = ("frames_t", "aps_index", "event_index", "blur/first", "blur/last", "blur/exposure_start",
                     "blur/exposure_end")
            try:
                self._index = {name: f[name][()] for name in names}
            except KeyError as error:
                raise ValueError(f"{self.path}: missing dataset {error} (not a {FORMAT} sequence file?)") from error
        return self._index

    @property
    def frames_t(self) -> np.ndarray:
        """int64 (N,) µs timestamps of the ground-truth frames."""
        return self._indices()["frames_t"]

    @property
    def aps_index(self) -> np.ndarray:
        """int64 (M,) indices into the ground-truth frames of the APS frames."""
        return self._indices()["aps_index"]

    @property
    def aps_t(self) -> np.ndarray:
        """int64 (M,) µs timestamps of the APS frames."""
        return self.frames_t[self.aps_index]

    @property
    def n_frames(self) -> int:
        return int(self.meta["n_frames"])

    @property
    def n_aps(self) -> int:
        return int(self.meta["n_aps"])

    def frames(self, indices: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        """Ground-truth frame(s) as float32 (C, H, W), or (n, C, H, W) for a slice / index list."""
        data = self._dataset("frames")
        if isinstance(indices, (int, np.integer)):
            return self._chw(data[int(indices)])
        if isinstance(indices, slice):
            return self._chw(data[indices])
        indices = np.asarray(indices, dtype=np.int64)
        # h5py fancy indexing needs increasing unique indices.
        unique, inverse = np.unique(indices, return_inverse=True)
        return self._chw(data[unique])[inverse]

    def aps_frames(self, indices: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """APS frame(s) by APS index: float32 (C, H, W) or (n, C, H, W)."""
        if isinstance(indices, (int, np.integer)):
            return self.frames(int(self.aps_index[int(indices)]))
        return self.frames(self.aps_index[np.asarray(indices, dtype=np.int64)])

    def blurry(self, aps: int) -> np.ndarray:
        """Blurry frame of APS frame ``aps``: float32 (C, H, W)."""
        return self._chw(self._dataset("blur/frames")[int(aps)])

    def exposure(self, aps: int) -> tuple[int, int]:
        """Exposure window [start, end) in µs of the blurry frame of APS frame ``aps``."""
        index = self._indices()
        return int(index["blur/exposure_start"][aps]), int(index["blur/exposure_end"][aps])

    def blur_range(self, aps: int) -> tuple[int, int]:
        """Inclusive ground-truth frame range (first, last) averaged into blurry frame ``aps``."""
        index = self._indices()
        return int(index["blur/first"][aps]), int(index["blur/last"][aps])

    def events_between(self, i: int, j: int) -> Events:
        """Events with frames_t[i] < t <= frames_t[j] (ground-truth frame indices, i <= j)."""
        event_index = self._indices()["event_index"]
        if not 0 <= i <= j < len(event_index):
            raise IndexError(f"{self.name}: frame range ({i}, {j}) outside 0..{len(event_index) - 1}")
        return self._read_events(int(event_index[i]), int(event_index[j]))

    def events_in(self, t_start: int, t_end: int) -> Events:
        """Events with t_start <= t < t_end (µs)."""
        t = self._dataset("events/t")
        # Narrow the binary search with the frame index so only a chunk or two of t is read.
        frames_t, event_index = self.frames_t, self._indices()["event_index"]
        lo = self._search(t, event_index, frames_t, int(t_start))
        hi = self._search(t, event_index, frames_t, int(t_end))
        return self._read_events(lo, hi)

    @staticmethod
    def _search(t: h5py.Dataset, event_index: np.ndarray, frames_t: np.ndarray, time: int) -> int:
        """Index of the first event with t >= time."""
        k = int(np.searchsorted(frames_t, time, side="left"))
        # Events with t <= frames_t[k-1] lie before, events with t > frames_t[k] after.
        lo = int(event_index[k - 1]) if k > 0 else 0
        hi = int(event_index[k]) if k < len(frames_t) else len(t)
        return lo + int(np.searchsorted(t[lo:hi], time, side="left"))

    def _read_events(self, lo: int, hi: int) -> Events:
        return Events(*(self._dataset(f"events/{name}")[lo:hi] for name in ("t", "x", "y", "p")))

    def voxel(self, events: Events, bins: int) -> np.ndarray:
        """E2VID voxel grid float32 (bins, H, W) of ``events`` on this sequence's sensor."""
        return voxel_grid(events.t, events.x, events.y, events.p, bins, self.height, self.width)

    def _chw(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames, dtype=np.float32)
        if self.channels == 3:
            return np.ascontiguousarray(np.moveaxis(frames, -1, -3))
        return frames[..., None, :, :]


class EventDataset:
    """A built dataset: ``EventDataset(path=None, split=None)``.

    ``path`` defaults to :func:`default_dataset_path` ("tiny"); ``split`` None keeps every
    sequence, or one of train/val/test. ``meta`` is ``dataset.json``; ``sequences`` the
    :class:`SequenceFile` list (sorted by name within the split).
    """

    def __init__(self, path: str | Path | None = None, split: str | None = None) -> None:
        self.root = Path(path).expanduser() if path is not None else default_dataset_path()
        meta_path = self.root / "dataset.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path}: no dataset here; build one with `python -m evpipe.tools.make_dataset --preset tiny`"
                f" (default location {default_dataset_path()}, override with --out or ${ENV_DATASETS})"
            )
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{meta_path}: not valid JSON ({error})") from error
        if self.meta.get("format") != FORMAT or self.meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format {self.meta.get('format')!r} version {self.meta.get('version')!r};"
                f" expected {FORMAT!r} version {FORMAT_VERSION}"
            )
        if split is not None and split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS} or None, got {split!r}")
        self.split = split
        self.height: int = int(self.meta["height"])
        self.width: int = int(self.meta["width"])
        self.channels: int = int(self.meta["channels"])
        entries = [s for s in self.meta["sequences"] if split is None or s["split"] == split]
        self.sequences = [SequenceFile(self.root / s["file"], s) for s in sorted(entries, key=lambda s: s["name"])]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> SequenceFile:
        return self.sequences[index]


def _open(dataset: EventDataset | str | Path | None, split: str | None) -> EventDataset:
    """An EventDataset is used as given (it already selects its split); a path is opened with ``split``."""
    return dataset if isinstance(dataset, EventDataset) else EventDataset(dataset, split)


def _scalars(**values: int) -> dict[str, np.ndarray]:
    return {name: np.int64(value) for name, value in values.items()}


class PredictionView:
    """Diverse-Length Temporal (DLT) samples for next-frame prediction (DESSERT).

    Every (sequence, anchor APS frame a, gap k) with ``k_min <= k <= k_max`` and ``a + k`` inside
    the sequence is one sample, enumerated in a fixed order (shuffle in the DataLoader). A sample:
    ``anchor``/``target`` float32 (C, H, W): APS frames a and a + k; ``voxel`` float32 (bins, H, W):
    the events between them (t in (t_anchor, t_target]); ``k``, ``dt_us`` = t_target - t_anchor,
    ``t_anchor``, ``t_target`` (µs), ``sequence`` (index into ``dataset.sequences``), ``aps``
    (= a): int64; with ``with_events`` also ``events`` (Events).
    """

    def __init__(
        self,
        dataset: EventDataset | str | Path | None = None,
        split: str | None = "train",
        k_max: int = 4,
        k_min: int = 1,
        bins: int = 5,
        with_events: bool = False,
    ) -> None:
        if not 1 <= k_min <= k_max:
            raise ValueError(f"PredictionView: need 1 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
        if bins < 1:
            raise ValueError(f"PredictionView: bins must be >= 1, got {bins}")
        self.dataset = _open(dataset, split)
        self.k_min, self.k_max, self.bins, self.with_events = k_min, k_max, bins, with_events
        samples = [
            (s, a, k)
            for s, seq in enumerate(self.dataset.sequences)
            for k in range(k_min, k_max + 1)
            for a in range(seq.n_aps - k)
        ]
        self._samples = np.array(samples, dtype=np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s, a, k = (int(v) for v in self._samples[index])
        seq = self.dataset.sequences[s]
        i, j = int(seq.aps_index[a]), int(seq.aps_index[a + k])
        events = seq.events_between(i, j)
        t_anchor, t_target = int(seq.frames_t[i]), int(seq.frames_t[j])
        sample = {
            "anchor": seq.frames(i),
            "target": seq.frames(j),
            "voxel": seq.voxel(events, self.bins),
            **_scalars(k=k, dt_us=t_target - t_anchor, t_anchor=t_anchor, t_target=t_target, sequence=s, aps=a),
        }
        if self.with_events:
            sample["events"] = events
        return sample


class DeblurView:
    """One sample per APS frame: ``blurry``, ``sharp`` float32 (C, H, W) (the APS frame at the
    exposure centre), ``voxel`` float32 (bins, H, W) of the events in the exposure window,
    ``exposure_start``/``exposure_end`` (µs, events with start <= t < end), ``t`` (the sharp
    frame's time), ``n_samples`` (frames averaged), ``sequence``, ``aps``: int64; with
    ``with_events`` also ``events``.

    ``exposure_intervals`` None: the stored blurry frames. A number e (or a (low, high) range,
    drawn per sample from a generator seeded by (``seed``, index), so reproducible in any
    worker): the blurry frame is computed here as the mean of the 2h + 1 ground-truth frames
    around the APS frame, h = round(e * substeps / 2) clipped to [1, substeps - 1] — an exposure
    of about e APS intervals, e < 2 (the sequences keep one interval of margin on each side).
    Stronger blur than the stored one, for training and evaluating deblurring.
    """

    def __init__(
        self,
        dataset: EventDataset | str | Path | None = None,
        split: str | None = "train",
        bins: int = 5,
        with_events: bool = False,
        exposure_intervals: float | tuple[float, float] | None = None,
        seed: int = 0,
    ) -> None:
        if bins < 1:
            raise ValueError(f"DeblurView: bins must be >= 1, got {bins}")
        if exposure_intervals is not None:
            low, high = np.broadcast_to(np.asarray(exposure_intervals, dtype=np.float64), (2,))
            if not 0 < low <= high < 2:
                raise ValueError(f"DeblurView: exposure_intervals must lie in (0, 2), got {exposure_intervals!r}")
            exposure_intervals = (float(low), float(high))
        self.dataset = _open(dataset, split)
        self.bins, self.with_events = bins, with_events
        self.exposure_intervals, self.seed = exposure_intervals, seed
        samples = [(s, a) for s, seq in enumerate(self.dataset.sequences) for a in range(seq.n_aps)]
        self._samples = np.array(samples, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s, a = (int(v) for v in self._samples[index])
        seq = self.dataset.sequences[s]
        i = int(seq.aps_index[a])
        if self.exposure_intervals is None:
            start, end = seq.exposure(a)
            first, last = seq.blur_range(a)
            blurry = seq.blurry(a)
        else:
            exposure = np.random.default_rng([self.seed, index]).uniform(*self.exposure_intervals)
            substeps = int(seq.meta["substeps"])
            half = int(np.clip(round(exposure * substeps / 2), 1, max(substeps - 1, 1)))
            first, last, start, end = (int(v) for v in exposure_window(seq.frames_t, i, half))
            blurry = seq.frames(slice(first, last + 1)).astype(np.float64).mean(axis=0).astype(np.float32)
        events = seq.events_in(start, end)
        sample = {
            "blurry": blurry,
            "sharp": seq.frames(i),
            "voxel": seq.voxel(events, self.bins),
            **_scalars(exposure_start=start, exposure_end=end, t=int(seq.frames_t[i]), n_samples=last - first + 1,
                       sequence=s, aps=a),
        }
        if self.with_events:
            sample["events"] = events
        return sample


class InterpolationView:
    """Frame-interpolation triplets from APS frames: ``frame0`` = APS a, ``middle`` = a + spacing,
    ``frame1`` = a + 2 spacing (float32 (C, H, W)), ``t0``, ``t_middle``, ``t1`` (µs),
    ``sequence``, ``aps`` (= a): int64. With ``context`` only triplets that also have
    ``before`` = APS a - 2 spacing and ``after`` = a + 4 spacing (the neighbours at the input
    spacing, for cubic temporal interpolation) are kept, and those are returned too. With
    ``bins`` > 0 also ``voxel`` (bins, H, W) of the events between frame0 and frame1.
    """

    def __init__(
        self,
        dataset: EventDataset | str | Path | None = None,
        split: str | None = "train",
        spacing: int = 1,
        context: bool = False,
        bins: int = 0,
    ) -> None:
        if spacing < 1 or bins < 0:
            raise ValueError(f"InterpolationView: need spacing >= 1 and bins >= 0, got {spacing=} {bins=}")
        self.dataset = _open(dataset, split)
        self.spacing, self.context, self.bins = spacing, context, bins
        lo, extra = (2 * spacing, 4 * spacing) if context else (0, 2 * spacing)
        samples = [(s, a) for s, seq in enumerate(self.dataset.sequences) for a in range(lo, seq.n_aps - extra)]
        self._samples = np.array(samples, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s, a = (int(v) for v in self._samples[index])
        seq = self.dataset.sequences[s]
        d = self.spacing
        aps = [a, a + d, a + 2 * d] + ([a - 2 * d, a + 4 * d] if self.context else [])
        frames = seq.aps_frames(aps)
        t = seq.aps_t[aps]
        sample: dict[str, Any] = {
            "frame0": frames[0],
            "middle": frames[1],
            "frame1": frames[2],
            **_scalars(t0=int(t[0]), t_middle=int(t[1]), t1=int(t[2]), sequence=s, aps=a),
        }
        if self.context:
            sample["before"], sample["after"] = frames[3], frames[4]
        if self.bins:
            i, j = int(seq.aps_index[a]), int(seq.aps_index[a + 2 * d])
            sample["voxel"] = seq.voxel(seq.events_between(i, j), self.bins)
        return sample


class ClipView:
    """Clips of ``length`` consecutive APS frames for video restoration: ``frames`` float32
    (length, C, H, W), ``t`` int64 (length,) µs, ``sequence``, ``aps`` (first APS index): int64.
    Clips start every ``stride`` APS frames (default ``length``: non-overlapping).
    """

    def __init__(
        self,
        dataset: EventDataset | str | Path | None = None,
        split: str | None = "train",
        length: int = 16,
        stride: int | None = None,
    ) -> None:
        stride = length if stride is None else stride
        if length < 1 or stride < 1:
            raise ValueError(f"ClipView: need length >= 1 and stride >= 1, got {length=} {stride=}")
        self.dataset = _open(dataset, split)
        self.length, self.stride = length, stride
        samples = [
            (s, a) for s, seq in enumerate(self.dataset.sequences) for a in range(0, seq.n_aps - length + 1, stride)
        ]
        self._samples = np.array(samples, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s, a = (int(v) for v in self._samples[index])
        seq = self.dataset.sequences[s]
        aps = np.arange(a, a + self.length)
        return {"frames": seq.aps_frames(aps), "t": seq.aps_t[aps].astype(np.int64), **_scalars(sequence=s, aps=a)}
