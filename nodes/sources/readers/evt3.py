"""The EVT 3.0 word codec (Prophesee), shared by the ``.raw`` reader, the ROS bag reader and the ROS bag sink.

Words are little-endian uint16, type in bits 15..12. EVT_ADDR_Y (0x0) sets y; EVT_ADDR_X (0x2) emits one
event at x with polarity bit 11; VECT_BASE_X (0x3) sets the base x and polarity; VECT_12 (0x4) and VECT_8
(0x5) emit an event at base x + i for each set bit i of their 12/8-bit mask, then advance the base by 12/8;
EVT_TIME_LOW (0x6) and EVT_TIME_HIGH (0x8) set the low and high 12 bits of a 24-bit µs clock, which wraps
every 2**24 µs (a time-high drop of more than half its range counts a wrap). EXT_TRIGGER (0xA) is an
external trigger edge: value in bit 0 (1 rising, 0 falling), channel in bits 11..8, at the current time.
CONTINUED_4 (0x7), OTHERS (0xE) and CONTINUED_12 (0xF) carry nothing decoded here.

Two timing choices, both following the specification rather than clamping time:

* Each TIME_LOW *replaces* the low 12 bits. The EVT 3.0 sample in ``shared/data`` has stray TIME_LOW
  words: right after each periodic TIME_HIGH comes a TIME_LOW about 11 µs ahead (e.g. 811), immediately
  followed by the correct one (800). No event lies between them, so applied literally the stray word
  affects no timestamp. A decoder that forces time to be monotonic (keeps the larger value) instead
  stamps the next ≤ 11 µs of events up to 11 µs late.
* A TIME_HIGH that *changes* the high part restarts the low part at 0, so events before the next
  TIME_LOW get the start of the new 4096 µs period, never a time left over from the previous one.

`encode_evt3` writes what `decode_evt3` reads back exactly (and what other EVT 3.0 decoders read: every
TIME_HIGH is followed by a TIME_LOW, and each call starts with both, so a packet decodes on its own).
"""

from __future__ import annotations

import numba
import numpy as np

# Decoder state slots (int64): y (-1 before the first EVT_ADDR_Y), polarity, vector base x,
# time-high (-1 before the first EVT_TIME_HIGH), time-low, 24-bit wraps.
_Y, _POL, _BASE_X, _HIGH, _LOW, _WRAPS = range(6)
INITIAL_STATE = (-1, 0, 0, -1, 0, 0)
# Counter slots: count and first word index of events without a row / time base, and of reserved word types.
N_NO_Y, FIRST_NO_Y, N_NO_TIME, FIRST_NO_TIME, N_UNKNOWN, FIRST_UNKNOWN = range(6)
# Largest coordinate an EVT_ADDR_X / EVT_ADDR_Y word holds (11 bits).
MAX_COORDINATE = 0x7FF
# The encoder writes a TIME_HIGH at least every this many 4096 µs periods, well inside the half range
# (2048) a decoder needs to tell a forward step from a 24-bit wrap.
_MAX_HIGH_STEP = 1024


@numba.njit(cache=True, nogil=True)
def _popcount12(v: int) -> int:
    count = 0
    while v:
        v &= v - 1
        count += 1
    return count


@numba.njit(cache=True, nogil=True)
def _decode(words: np.ndarray, state: np.ndarray):
    capacity = 0
    n_triggers = 0
    for i in range(words.shape[0]):
        kind = words[i] >> 12
        if kind == 0x2:
            capacity += 1
        elif kind == 0x4:
            capacity += _popcount12(words[i] & 0xFFF)
        elif kind == 0x5:
            capacity += _popcount12(words[i] & 0xFF)
        elif kind == 0xA:
            n_triggers += 1
    t_out = np.empty(capacity, np.int64)
    x_out = np.empty(capacity, np.uint16)
    y_out = np.empty(capacity, np.uint16)
    p_out = np.empty(capacity, np.int8)
    w_out = np.empty(capacity, np.int64)
    trig_t = np.empty(n_triggers, np.int64)
    trig_edge = np.empty(n_triggers, np.uint8)
    trig_channel = np.empty(n_triggers, np.uint8)
    trig_w = np.empty(n_triggers, np.int64)
    s = state.copy()
    counters = np.zeros(6, np.int64)
    counters[FIRST_NO_Y] = -1
    counters[FIRST_NO_TIME] = -1
    counters[FIRST_UNKNOWN] = -1
    k = 0
    m = 0
    for i in range(words.shape[0]):
        word = np.int64(words[i])
        kind = word >> 12
        if kind == 0x0:
            s[_Y] = word & 0x7FF
        elif kind == 0x2 or kind == 0x4 or kind == 0x5:
            if kind == 0x2:
                mask = np.int64(1)
                x0 = word & 0x7FF
                pol = (word >> 11) & 1
                width = 1
            else:
                mask = word & (0xFFF if kind == 0x4 else 0xFF)
                x0 = s[_BASE_X]
                pol = s[_POL]
                width = 12 if kind == 0x4 else 8
                s[_BASE_X] += width
            if s[_HIGH] < 0 or s[_Y] < 0:
                slot = N_NO_TIME if s[_HIGH] < 0 else N_NO_Y
                counters[slot] += _popcount12(mask)
                if counters[slot + 1] < 0:
                    counters[slot + 1] = i
                continue
            t = (s[_WRAPS] << 24) | (s[_HIGH] << 12) | s[_LOW]
            for bit in range(width):
                if (mask >> bit) & 1:
                    t_out[k] = t
                    # Saturate: a corrupt run of vectors must not wrap back into the sensor.
                    x_out[k] = min(x0 + bit, 65535)
                    y_out[k] = s[_Y]
                    p_out[k] = pol
                    w_out[k] = i
                    k += 1
        elif kind == 0x3:
            s[_BASE_X] = word & 0x7FF
            s[_POL] = (word >> 11) & 1
        elif kind == 0x6:
            s[_LOW] = word & 0xFFF
        elif kind == 0x8:
            high = word & 0xFFF
            if s[_HIGH] >= 0 and s[_HIGH] - high > 2048:
                s[_WRAPS] += 1
            if high != s[_HIGH]:
                s[_LOW] = 0
            s[_HIGH] = high
        elif kind == 0xA:
            if s[_HIGH] < 0:
                counters[N_NO_TIME] += 1
                if counters[FIRST_NO_TIME] < 0:
                    counters[FIRST_NO_TIME] = i
                continue
            trig_t[m] = (s[_WRAPS] << 24) | (s[_HIGH] << 12) | s[_LOW]
            trig_edge[m] = word & 1
            trig_channel[m] = (word >> 8) & 0xF
            trig_w[m] = i
            m += 1
        elif kind == 0x7 or kind == 0xE or kind == 0xF:
            pass  # CONTINUED_4, OTHERS, CONTINUED_12: no CD event or trigger (format specification)
        else:
            counters[N_UNKNOWN] += 1
            if counters[FIRST_UNKNOWN] < 0:
                counters[FIRST_UNKNOWN] = i
    return (t_out[:k], x_out[:k], y_out[:k], p_out[:k], w_out[:k],
            trig_t[:m], trig_edge[:m], trig_channel[:m], trig_w[:m], s, counters)


class Evt3Decoded:
    """What `decode_evt3` found in a run of words.

    Events: ``t`` int64 µs, ``x``/``y`` uint16, ``p`` int8 0/1, ``event_words`` (index of each event's word).
    Triggers: ``trigger_t`` int64 µs, ``trigger_edge`` uint8 (1 rising, 0 falling), ``trigger_channel``
    uint8, ``trigger_words``. ``state`` continues the stream in the next call; ``counters`` holds the
    anomaly counts and first word indices at the ``N_*`` / ``FIRST_*`` slots.
    """

    __slots__ = ("counters", "event_words", "p", "state", "t", "trigger_channel", "trigger_edge", "trigger_t",
                 "trigger_words", "x", "y")

    def __init__(self, result: tuple) -> None:
        (self.t, self.x, self.y, self.p, self.event_words, self.trigger_t, self.trigger_edge,
         self.trigger_channel, self.trigger_words, state, self.counters) = result
        self.state = tuple(int(v) for v in state)


def evt3_issues(decoded: Evt3Decoded, words: np.ndarray) -> list[tuple[str, int, int, str]]:
    """The anomalies of one `decode_evt3` call as (issue kind, first word index, count, detail)."""
    issues = []
    for n_slot, kind, detail in (
        (N_UNKNOWN, "unknown_word", "reserved EVT 3.0 word type"),
        (N_NO_TIME, "no_time_base", "events before the first EVT_TIME_HIGH word"),
        (N_NO_Y, "no_row_address", "events before the first EVT_ADDR_Y word"),
    ):
        count = int(decoded.counters[n_slot])
        if count:
            first = int(decoded.counters[n_slot + 1])
            if kind == "unknown_word":
                detail = f"{detail} {int(words[first]) >> 12:#x} ({int(words[first]):#06x})"
            issues.append((kind, first, count, detail))
    return issues


def decode_evt3(words: np.ndarray, state: tuple = INITIAL_STATE) -> Evt3Decoded:
    """Decode EVT 3.0 ``words`` (uint16) starting from decoder ``state`` (`INITIAL_STATE` at a stream start)."""
    return Evt3Decoded(_decode(np.ascontiguousarray(words, dtype=np.uint16), np.array(state, dtype=np.int64)))


@numba.njit(cache=True, nogil=True)
def _encode(t, x, y, on, trig_t, trig_edge, trig_channel, last_high, out):
    """Two passes share this loop: with ``out`` empty it only counts the words it would write."""
    count_only = out.shape[0] == 0
    n, m = t.shape[0], trig_t.shape[0]
    i = j = 0
    k = 0
    high = -1  # absolute (wrap-including) time-high written in this call
    low = -1
    row = -1
    while i < n or j < m:
        is_event = j >= m or (i < n and t[i] <= trig_t[j])
        ti = t[i] if is_event else trig_t[j]
        abs_high = ti >> 12
        if high < 0:
            # Continue from the previous call's clock so a decoder reading on counts the wraps between.
            high = last_high if 0 <= last_high <= abs_high else abs_high
            if not count_only:
                out[k] = (0x8 << 12) | (high & 0xFFF)
            k += 1
            low = -1
        while abs_high - high > _MAX_HIGH_STEP:
            high += _MAX_HIGH_STEP
            if not count_only:
                out[k] = (0x8 << 12) | (high & 0xFFF)
            k += 1
            low = -1
        if abs_high != high:
            high = abs_high
            if not count_only:
                out[k] = (0x8 << 12) | (high & 0xFFF)
            k += 1
            low = -1
        if (ti & 0xFFF) != low:
            low = ti & 0xFFF
            if not count_only:
                out[k] = (0x6 << 12) | low
            k += 1
        if is_event:
            if y[i] != row:
                row = y[i]
                if not count_only:
                    out[k] = row
                k += 1
            if not count_only:
                out[k] = (0x2 << 12) | (on[i] << 11) | x[i]
            k += 1
            i += 1
        else:
            if not count_only:
                out[k] = (0xA << 12) | ((trig_channel[j] & 0xF) << 8) | (trig_edge[j] & 1)
            k += 1
            j += 1
    return k, high


def encode_evt3(
    t: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    trigger_t: np.ndarray | None = None,
    trigger_edge: np.ndarray | None = None,
    trigger_channel: np.ndarray | None = None,
    *,
    last_high: int = -1,
) -> tuple[np.ndarray, int]:
    """EVT 3.0 words (uint16) for time-ordered events and trigger edges; returns (words, last_high).

    ``p`` is 0/1 or -1/+1; ``trigger_edge`` 1 rising / 0 falling; channels 0..15. Times are µs ≥ 0; the
    words carry them modulo 2**24 and a decoder counts the wraps, so a stream read from its start gives the
    times back exactly when the first one is below 2**24. ``last_high`` is what the previous call returned
    (-1 for the first): a long gap between calls is bridged by TIME_HIGH words so no wrap is missed.
    Coordinates must fit 11 bits (0..2047).
    """
    t = np.ascontiguousarray(t, dtype=np.int64)
    if trigger_t is None:
        trigger_t = np.empty(0, np.int64)
        trigger_edge = np.empty(0, np.uint8)
        trigger_channel = np.empty(0, np.uint8)
    args = (
        t,
        np.ascontiguousarray(x, dtype=np.int64),
        np.ascontiguousarray(y, dtype=np.int64),
        (np.asarray(p) > 0).astype(np.int64),
        np.ascontiguousarray(trigger_t, dtype=np.int64),
        np.ascontiguousarray(trigger_edge, dtype=np.int64),
        np.ascontiguousarray(trigger_channel, dtype=np.int64),
        int(last_high),
    )
    if len(t) and (int(args[1].max()) > MAX_COORDINATE or int(args[2].max()) > MAX_COORDINATE):
        raise ValueError(f"EVT 3.0 holds coordinates up to {MAX_COORDINATE}; got x up to {int(args[1].max())}, "
                         f"y up to {int(args[2].max())}")
    if (len(t) and int(t.min()) < 0) or (len(args[4]) and int(args[4].min()) < 0):
        raise ValueError("EVT 3.0 times must not be negative")
    n_words, _ = _encode(*args, np.empty(0, np.uint16))
    out = np.empty(n_words, np.uint16)
    _, high = _encode(*args, out)
    return out.astype("<u2", copy=False), int(high)
