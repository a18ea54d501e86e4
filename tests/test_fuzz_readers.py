"""Fuzzing every recording reader: mutated files must give a clean result or a RecordingError, never
another exception, a wrong promise (events out of order, outside the sensor, bad polarity) or a crash.

A valid small seed file per format is mutated by hypothesis (bit flips, overwritten bytes, truncation,
insertion, deletion; often in the header, where the parsing decisions are) and read completely in both
bad-input modes by tests/fuzz_reader_worker.py in a separate process, so a native crash or hang fails
the test with the input saved instead of killing pytest. The budget is ``EVPIPE_FUZZ_EXAMPLES`` examples
per format (default 40). The examples are the same on every run (hypothesis derandomized), so CI is
reproducible; ``EVPIPE_FUZZ_RANDOM=1`` explores new ones. What fuzzing found is pinned as regression
tests at the end of this file.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evpipe.nodes.sinks.rosbag import RosbagRecorder
from evpipe.nodes.sources.readers.aedat4 import DECODE_TIMEOUT_S
from evpipe.runtime.wire import Message
from tests.data_fixtures.recordings import (
    event_arrays,
    random_events,
    write_aedat4,
    write_event_stream,
    write_evt2,
    write_evt3,
    write_h5_dsec,
    write_h5_plain,
    write_rpg_text,
)
from tests.live_support import record

WORKER = Path(__file__).resolve().parent / "fuzz_reader_worker.py"
EXAMPLES = int(os.environ.get("EVPIPE_FUZZ_EXAMPLES", "40"))
EXPLORE = os.environ.get("EVPIPE_FUZZ_RANDOM", "") == "1"
# A seed file reads in milliseconds; a damaged AEDAT4 whose decoder spins is cut off by the reader's own
# watchdog after DECODE_TIMEOUT_S (a RecordingError), so a "hang" here is the reader failing its promise.
READ_TIMEOUT_S = DECODE_TIMEOUT_S + 7.0
WORKER_START_TIMEOUT_S = 120.0  # importing dv-processing and h5py, not part of a read's time
WIDTH, HEIGHT = 64, 48


def _write_bag(path: Path, events, params: dict) -> Path:
    node = RosbagRecorder("bag", {"path": str(path), **params})
    node.attach_reporter(lambda report: None)
    node.start()
    for i in range(0, len(events), 100):  # several messages, so damage can hit one of them
        node.process("events", Message.from_events(events[i:i + 100], width=WIDTH, height=HEIGHT))
    node.stop()
    return path


def _seed_files(folder: Path) -> dict[str, Path]:
    """One small valid recording per reader (600 events; AEDAT4 with a frame)."""
    events = random_events(600, WIDTH, HEIGHT, seed=3)
    arrays = event_arrays(events)
    structured = np.zeros(len(events), dtype=[("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
    for name in ("t", "x", "y", "p"):
        structured[name] = arrays[name]
    np.save(folder / "events.npy", structured)
    np.savez(folder / "events.npz", sensor_size=np.array([WIDTH, HEIGHT]), **arrays)
    frame = (np.arange(WIDTH * HEIGHT, dtype=np.uint8) % 251).reshape(HEIGHT, WIDTH)
    return {
        "aedat4": write_aedat4(folder / "seed.aedat4", events, WIDTH, HEIGHT, frames=[(100, 50, frame)]),
        "hdf5": write_h5_plain(folder / "plain.h5", arrays, group="events", width=WIDTH, height=HEIGHT),
        "hdf5-dsec": write_h5_dsec(folder / "dsec.h5", events, t_offset=1_000_000),
        "rpg-text": write_rpg_text(folder / "rpg", events),
        "npy": folder / "events.npy",
        "npz": folder / "events.npz",
        "evt2": write_evt2(folder / "seed2.raw", events, geometry=(WIDTH, HEIGHT)),
        "evt3": write_evt3(folder / "seed3.raw", events, geometry=(WIDTH, HEIGHT)),
        "event-stream": write_event_stream(folder / "seed.es", events, WIDTH, HEIGHT),
        "rosbag1": _write_bag(folder / "seed.bag", events, {"format": "ros1", "events_as": "dvs"}),
        "rosbag2-sqlite3": _write_bag(folder / "sqlite", events, {"storage": "sqlite3", "events_as": "dvs"}),
        "rosbag2-mcap": _write_bag(folder / "mcap", events, {"storage": "mcap"}),
        "rosbag2-mcap-mono": _write_bag(folder / "mono", events, {"storage": "mcap", "events_as": "mono"}),
    }


class ReaderWorker:
    """tests/fuzz_reader_worker.py as a long-lived child; restarted after a crash or a hang."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def read(self, path: Path, on_error: str, timeout_s: float = READ_TIMEOUT_S) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
            # Started and its libraries loaded before the clock of a read starts.
            started = select.select([self.proc.stdout], [], [], WORKER_START_TIMEOUT_S)[0]
            if not started or self.proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{WORKER.name} did not start within {WORKER_START_TIMEOUT_S} s")
        self.proc.stdin.write(json.dumps({"path": str(path), "on_error": on_error}) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], timeout_s)[0]:
            self.proc.kill()  # native code spinning with the GIL held cannot be interrupted otherwise
            self.proc.wait()
            self.proc = None
            return {"outcome": "hang", "timeout_s": timeout_s}
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            return {"outcome": "crash", "exit_code": code}
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    return _seed_files(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.fixture(scope="module")
def worker():
    reader = ReaderWorker()
    yield reader
    reader.close()


def mutations(size: int) -> st.SearchStrategy:
    """Lists of edits on a file of ``size`` bytes; positions favour the first 256 bytes (headers)."""
    position = st.one_of(st.integers(0, min(size - 1, 255)), st.integers(0, size - 1))
    edit = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(1, 255)),
        st.tuples(st.just("set"), position, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("truncate"), st.integers(0, size - 1)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), position, st.integers(1, 64)),
    )
    return st.lists(edit, min_size=1, max_size=4)


def mutate(data: bytes, edits: list[tuple]) -> bytes:
    out = bytearray(data)
    for op, pos, *arg in edits:
        pos = min(pos, max(len(out) - 1, 0))
        if op == "flip" and out:
            out[pos] ^= arg[0]
        elif op == "set":
            out[pos:pos + len(arg[0])] = arg[0]
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = arg[0]
        elif op == "delete":
            del out[pos:pos + arg[0]]
    return bytes(out)


def fuzz_target(seeds: dict[str, Path], fmt: str, tmp_path: Path) -> tuple[Path, bytes, Callable[[bytes], Path]]:
    """(seed file, its bytes, a writer of mutated bytes into a fresh path of the same layout)."""
    seed = seeds[fmt]
    if fmt.startswith("rosbag2"):  # a bag folder: its storage file is mutated, metadata.yaml kept
        storage = next(p for p in seed.iterdir() if p.name != "metadata.yaml")

        def write_bag(mutated: bytes) -> Path:
            folder = tmp_path / "bag"
            folder.mkdir(exist_ok=True)
            shutil.copy(seed / "metadata.yaml", folder / "metadata.yaml")
            (folder / storage.name).write_bytes(mutated)
            return folder

        return storage, storage.read_bytes(), write_bag
    data = seed.read_bytes()

    def write(mutated: bytes) -> Path:
        if fmt == "rpg-text":  # the reader takes the sequence folder
            folder = tmp_path / "rpg"
            folder.mkdir(exist_ok=True)
            (folder / "events.txt").write_bytes(mutated)
            return folder
        path = tmp_path / f"fuzzed{''.join(seed.suffixes)}"
        path.write_bytes(mutated)
        return path

    return seed, data, write


# Every format a reader exists for (a new reader adds its seed file above and its name here). AEDAT4's budget
# includes the damaged files whose decoder spins until the reader's watchdog (DECODE_TIMEOUT_S each): slow.
FORMATS = [pytest.param("aedat4", marks=pytest.mark.slow), "hdf5", "hdf5-dsec", "rpg-text", "npy", "npz", "evt2",
           "evt3", "event-stream", "rosbag1", "rosbag2-sqlite3", "rosbag2-mcap", "rosbag2-mcap-mono"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzzed_recordings_read_cleanly_or_raise_recording_error(seeds, worker, tmp_path, fmt):
    seed, data, write = fuzz_target(seeds, fmt, tmp_path)
    clean = worker.read(write(data), "raise")
    assert clean["outcome"] == "ok" and clean["events"] == 600, clean  # the seed itself is valid
    outcomes: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not EXPLORE, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(edits=mutations(len(data)), on_error=st.sampled_from(["raise", "skip"]))
    def check(edits: list[tuple], on_error: str) -> None:
        mutated = mutate(data, edits)
        answer = worker.read(write(mutated), on_error)
        outcomes[answer["outcome"]] = outcomes.get(answer["outcome"], 0) + 1
        if answer["outcome"] not in ("ok", "error"):  # a hang, a crash or a broken promise: never accepted
            kept = tmp_path / f"failing-{fmt}{''.join(seed.suffixes) or '.txt'}"
            kept.write_bytes(mutated)
            pytest.fail(f"{fmt} reader, on_error={on_error}: {answer} on {edits!r} (input kept in {kept})")

    check()
    record(f"fuzz_{fmt}", {"bad_input": f"{fmt}: mutated seed files", "examples": sum(outcomes.values()),
                           "outcomes": outcomes})


# Regression tests from what fuzzing found. The AEDAT4 seed is byte-identical on every run (dv-processing's
# writer is deterministic), so each finding is the seed plus its minimal edit.
AEDAT4_HANGS = {
    "header_xml_shortened": [("delete", 450, 44)],  # 44 bytes cut from the XML stream description
    "compressed_packet_bytes": [("set", 2859, bytes.fromhex("8ec09a898d50f084"))],  # inside an LZ4 frame
}


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("case", sorted(AEDAT4_HANGS))
def test_damaged_aedat4_that_spins_the_decoder_raises_recording_error_in_time(seeds, worker, tmp_path, case,
                                                                             on_error):
    """dv-processing 2.0.4 spins forever (LZ4F_decompress, GIL held) on these files; the reader's watchdog
    (a decoder child that must answer within DECODE_TIMEOUT_S) turns that into a RecordingError."""
    _, data, write = fuzz_target(seeds, "aedat4", tmp_path)
    answer = worker.read(write(mutate(data, AEDAT4_HANGS[case])), on_error)
    assert answer["outcome"] == "error" and answer["kind"] == "corrupt", answer
    assert "did not finish decoding" in answer["message"] and "re-copy or re-export" in answer["message"], answer


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_npy_with_a_damaged_header_found_by_fuzzing_raises_recording_error(seeds, worker, tmp_path, on_error):
    _, data, write = fuzz_target(seeds, "npy", tmp_path)
    answer = worker.read(write(mutate(data, [("set", 18, b"(")])), on_error)  # an unbalanced '(' in the dict
    assert answer["outcome"] == "error", answer


HDF5_FINDINGS = {
    "flipped_header_bit": ("hdf5", [("flip", 8156, 1)]),  # RuntimeError: ran off end of input buffer
    "flipped_dsec_bit": ("hdf5-dsec", [("flip", 120, 1)]),  # RuntimeError: wrong B-tree signature
    "overwritten_name": ("hdf5", [("set", 1428, bytes.fromhex("0000000080"))]),  # TypeError: bytes < str
    "shifted_object": ("hdf5", [("insert", 73, b"\x00"), ("delete", 48, 1)]),  # KeyError: past end of allocation
}


@pytest.mark.parametrize("case", sorted(HDF5_FINDINGS))
def test_hdf5_with_damaged_metadata_found_by_fuzzing_raises_recording_error(seeds, worker, tmp_path, case):
    fmt, edits = HDF5_FINDINGS[case]
    _, data, write = fuzz_target(seeds, fmt, tmp_path)
    answer = worker.read(write(mutate(data, edits)), "raise")
    assert answer["outcome"] == "error", answer


def test_aedat4_without_a_readable_resolution_found_by_fuzzing_raises_recording_error(seeds, worker, tmp_path):
    _, data, write = fuzz_target(seeds, "aedat4", tmp_path)
    answer = worker.read(write(mutate(data, [("flip", 617, 1)])), "raise")  # one bit in the XML description
    assert answer["outcome"] == "error", answer


def test_aedat4_with_a_non_utf8_description_found_by_fuzzing_raises_recording_error(seeds, worker, tmp_path):
    _, data, write = fuzz_target(seeds, "aedat4", tmp_path)
    answer = worker.read(write(mutate(data, [("set", 101, b"\x80")])), "raise")  # UnicodeDecodeError in dv-processing
    assert answer["outcome"] == "error" and "damaged" in answer["message"], answer
