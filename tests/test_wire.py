"""Wire format: round trips, and every kind of malformed or oversized message rejected before allocation."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evpipe.runtime.events import Events, Frame, events_checksum
from evpipe.runtime.wire import Limits, Message, Trace, WireError, decode, encode
from tests.live_support import record


def _events(n: int, seed: int = 0) -> Events:
    rng = np.random.default_rng(seed)
    return Events(np.sort(rng.integers(0, 10**9, n)).astype(np.int64), rng.integers(0, 346, n, dtype=np.uint16),
                  rng.integers(0, 260, n, dtype=np.uint16), rng.choice(np.array([-1, 1], np.int8), n))


def _frames(msg: Message) -> list[bytes]:
    return [bytes(f) for f in encode(msg)]


def test_events_round_trip_keeps_arrays_trace_and_meta():
    ev = _events(1000)
    msg = Message.from_events(ev, width=346)
    msg.trace = Trace(sensor_t=int(ev.t[-1]), emit_ns=123, hops=[("src", 1, 2), ("vox", 3, 4)])
    out = decode(_frames(msg))
    got = out.events()
    assert got.checksum() == ev.checksum()
    for name in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ev, name))
    assert out.meta == {"width": 346}
    assert out.trace.hops == [("src", 1, 2), ("vox", 3, 4)] and out.trace.emit_ns == 123
    assert out.t_range == (int(ev.t[0]), int(ev.t[-1]))


def test_frame_round_trip():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = decode(_frames(Message.from_frame(Frame(img, t=500, exposure_us=100))))
    frame = out.frame()
    np.testing.assert_array_equal(frame.image, img)
    assert (frame.t, frame.exposure_us) == (500, 100)


def test_empty_events_round_trip():
    out = decode(_frames(Message.from_events(Events.empty())))
    assert len(out.events()) == 0


def test_checksum_is_independent_of_packetisation():
    ev = _events(5000, seed=3)
    parts = [ev[0:1234], ev[1234:4000], ev[4000:]]
    total = sum(p.checksum() for p in parts) % (1 << 64)
    assert total == ev.checksum()
    shuffled = ev[np.random.default_rng(1).permutation(len(ev))]
    assert shuffled.checksum() == ev.checksum()
    assert events_checksum(ev.t, ev.x, ev.y, ev.p) != ev[1:].checksum()


def _header(frames: list[bytes]) -> dict:
    return msgpack.unpackb(frames[0], raw=False)


def _with_header(frames: list[bytes], **changes) -> list[bytes]:
    header = {**_header(frames), **changes}
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


GOOD = _frames(Message.from_events(_events(10)))


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "empty"),
        ([b"\xc1garbage"], "not valid msgpack"),
        ([msgpack.packb([1, 2, 3])], "not a map"),
        (_with_header(GOOD, v=99), "version"),
        (_with_header(GOOD, kind="video"), "unknown kind"),
        (_with_header(GOOD, seq="7"), "seq"),
        (_with_header(GOOD, meta=[1]), "meta"),
        (_with_header(GOOD, trace={"sensor_t": 0}), "trace"),
        (GOOD[:-1], "buffers follow"),
        ([*GOOD, b"extra"], "buffers follow"),
        (_with_header(GOOD, arrays=[["t", "object", [10]], *_header(GOOD)["arrays"][1:]]), "not allowed"),
        (_with_header(GOOD, arrays=[["t", "int64", [11]], *_header(GOOD)["arrays"][1:]]), "needs 88 bytes"),
        (_with_header(GOOD, arrays=[["t", "int64", [-10]], *_header(GOOD)["arrays"][1:]]), "bad shape"),
        (_with_header(GOOD, arrays=[["t", "int32", [20]], *_header(GOOD)["arrays"][1:]]), "events message"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(frames, message):
    with pytest.raises(WireError, match=message):
        decode(frames)


def test_limits_are_checked_before_arrays_are_built():
    big = _frames(Message.from_events(_events(1000)))
    refused = {}
    for limit, limits in [("max_message_bytes", Limits(max_message_bytes=5000)), ("max_events", Limits(max_events=999)),
                          ("max_header_bytes", Limits(max_header_bytes=10))]:
        with pytest.raises(WireError, match=limit) as refusal:
            decode(big, limits)
        refused[limit] = str(refusal.value)
    many = _frames(Message("voxel", {f"a{i}": np.zeros(1, np.float32) for i in range(20)}))
    with pytest.raises(WireError, match="max_arrays") as refusal:
        decode(many)
    refused["max_arrays"] = str(refusal.value)
    record("wire_limits", {"bad_input": "messages over each size limit", "refused": refused})


def _decode_outcome(frames: list[bytes], outcomes: dict[str, int]) -> None:
    """Decode; a WireError is the one acceptable failure (any other exception fails the test)."""
    try:
        decode(frames)
        outcomes["decoded"] = outcomes.get("decoded", 0) + 1
    except WireError:
        outcomes["wire_error"] = outcomes.get("wire_error", 0) + 1


def test_decoder_never_fails_other_than_with_wire_error_on_garbage():
    outcomes: dict[str, int] = {}

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=64), min_size=1, max_size=5))
    def check(frames: list[bytes]) -> None:
        _decode_outcome(frames, outcomes)

    check()
    record("wire_fuzz_garbage", {"bad_input": "random frames (1-5 of up to 64 bytes)", "outcomes": outcomes})


def test_decoder_survives_mutated_headers():
    outcomes: dict[str, int] = {}

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        header = _header(GOOD)
        key = data.draw(st.sampled_from(sorted(header)))
        ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
        header[key] = data.draw(st.one_of(st.none(), ints, st.text(max_size=5), st.lists(ints, max_size=3),
                                          st.dictionaries(st.text(max_size=3), ints, max_size=2)))
        _decode_outcome([msgpack.packb(header, use_bin_type=True), *GOOD[1:]], outcomes)

    check()
    record("wire_fuzz_headers", {"bad_input": "a valid message with one header field replaced by a random value",
                                 "outcomes": outcomes})
