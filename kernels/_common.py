"""Input validation and CPU/CUDA dispatch shared by every kernel.

Kernels take the wire dtypes (``t`` int64 µs, ``x``/``y`` uint16, ``p`` int8 ±1). Whole-array
checks that need a pass over the events (coordinates inside the sensor, polarity ±1, time order)
happen inside the kernels themselves, which read those values anyway; the kernels report the first
offending event index and :func:`raise_bad_event` turns it into a ``ValueError``.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

EVENT_FIELD_DTYPES: dict[str, np.dtype] = {
    "t": np.dtype(np.int64),
    "x": np.dtype(np.uint16),
    "y": np.dtype(np.uint16),
    "p": np.dtype(np.int8),
}

# Largest sensor side a uint16 coordinate can address.
MAX_SIDE = 65536


def is_device_array(arr: Any) -> bool:
    """True for CUDA device arrays (numba device arrays, CuPy, torch CUDA tensors, the CUDA simulator).

    ``numba.cuda`` is never imported here: an object can only be a numba device array if the
    caller already imported it, so CPU users never pay for the CUDA import.
    """
    if hasattr(arr, "__cuda_array_interface__"):
        return True
    cuda = sys.modules.get("numba.cuda")
    return cuda is not None and cuda.devicearray.is_cuda_ndarray(arr)


def use_cuda(device: str | None, *arrays: Any) -> bool:
    """Pick the implementation: explicit ``device`` ("cpu"/"cuda") or where the inputs live."""
    if device is None:
        return any(is_device_array(a) for a in arrays)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected None, 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        on_device = [i for i, a in enumerate(arrays) if is_device_array(a)]
        if on_device:
            raise ValueError(f"device='cpu' but argument(s) {on_device} are CUDA device arrays; copy them to the host")
    return device == "cuda"


def resolve_device(device: str | None, *arrays: Any) -> tuple[ModuleType | None, tuple[Any, ...]]:
    """Where to run: ``(None, arrays)`` for the CPU, or ``(the CUDA module, arrays as device arrays)``.

    Device inputs are used in place; host inputs with ``device="cuda"`` are copied to the device.
    """
    if not use_cuda(device, *arrays):
        return None, arrays
    from evpipe.kernels import _cuda

    return _cuda, tuple(_cuda.to_device(a) for a in arrays)


def check_sensor(height: int, width: int) -> tuple[int, int]:
    """Validate the sensor size and return it as Python ints."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 < value <= MAX_SIDE:
            raise ValueError(f"{name}: expected an integer in [1, {MAX_SIDE}], got {value!r}")
    return int(height), int(width)


def check_event_arrays(**arrays: Any) -> int:
    """Check 1-D arrays of the wire dtypes and equal length; returns the event count.

    Works for host and device arrays alike (only ``shape``/``dtype`` are read).
    """
    n = None
    for name, arr in arrays.items():
        expected = EVENT_FIELD_DTYPES[name]
        shape = getattr(arr, "shape", None)
        try:
            dtype = np.dtype(arr.dtype)
        except (AttributeError, TypeError):
            raise ValueError(f"{name}: expected a 1-D {expected} array, got {type(arr).__name__}") from None
        if shape is None or (not isinstance(arr, np.ndarray) and not is_device_array(arr)):
            raise ValueError(f"{name}: expected a 1-D {expected} array, got {type(arr).__name__}")
        if len(shape) != 1 or dtype != expected:
            raise ValueError(f"{name}: expected a 1-D {expected} array, got {dtype} shape {tuple(shape)}")
        if n is None:
            n = shape[0]
        elif shape[0] != n:
            lengths = {k: v.shape[0] for k, v in arrays.items()}
            raise ValueError(f"event arrays have different lengths: {lengths}")
    return int(n or 0)


def check_windows(windows: Any, n_events: int) -> np.ndarray:
    """Validate ``windows``: int64 (n, 2) of ``[start, stop)`` event-index ranges within ``n_events``.

    Device windows are copied to the host (they are tiny) so they can be checked.
    """
    if is_device_array(windows):
        windows = windows.copy_to_host() if hasattr(windows, "copy_to_host") else np.asarray(windows)
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] != 2 or windows.dtype != np.int64:
        raise ValueError(f"windows: expected an int64 array of shape (n, 2), got {windows.dtype} shape {windows.shape}")
    if len(windows):
        start, stop = windows[:, 0], windows[:, 1]
        bad = np.flatnonzero((start < 0) | (stop < start) | (stop > n_events))
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"windows[{i}] = {windows[i].tolist()}: need 0 <= start <= stop <= {n_events} (events)")
    return np.ascontiguousarray(windows)


def invalid_event_error(
    index: int, t: int | None, x: int, y: int, p: int, height: int, width: int, t_range: str = ""
) -> ValueError:
    """The ValueError for event ``index`` with these values, found invalid by a kernel."""
    if x >= width or y >= height:
        problem = f"(x={x}, y={y}) is outside the {width}x{height} sensor"
    elif p not in (-1, 1):
        problem = f"p={p}, polarity must be -1 or +1"
    else:
        problem = f"t={t} is outside its window's time range{t_range}; events must be sorted by t"
    return ValueError(f"event {index}: {problem}")


def raise_first_invalid(
    t: np.ndarray | None,
    x: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    start: int,
    height: int,
    width: int,
    t_lo: int = 0,
    t_hi: int = 0,
) -> None:
    """Raise a ValueError for the first invalid event at or after ``start`` (host arrays).

    A kernel found a bad event in a block beginning at ``start``; this finds and names it. Valid
    means inside the sensor, polarity ±1 and, unless ``t`` is None, ``t_lo <= t <= t_hi``.
    """
    stop = len(x)
    while start < stop:
        block = slice(start, min(start + 65536, stop))
        bad = (x[block] >= width) | (y[block] >= height) | (np.abs(p[block].astype(np.int16)) != 1)
        if t is not None:
            bad |= (t[block] < t_lo) | (t[block] > t_hi)
        flagged = np.flatnonzero(bad)
        if len(flagged):
            i = block.start + int(flagged[0])
            t_i = None if t is None else int(t[i])
            raise invalid_event_error(i, t_i, int(x[i]), int(y[i]), int(p[i]), height, width, f" [{t_lo}, {t_hi}]")
        start = block.stop
    raise AssertionError("a kernel reported an invalid event that the host check does not find")
