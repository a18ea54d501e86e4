"""Reads recordings on request for tests/test_fuzz_readers.py, in its own process.

A reader backed by native code (dv-processing for AEDAT4, HDF5 through h5py) could crash the process
on a hostile file instead of raising; running the reads here turns such a crash into a test failure
with the input saved, instead of killing pytest. Protocol: one JSON request per stdin line
``{"path": ..., "on_error": ..., "sensor_size": [w, h] | null}``, one JSON answer per stdout line:
``{"outcome": "ok", "events": n, "frames": n, "imu": n}``, ``{"outcome": "error", "kind": ...,
"message": ...}`` for a RecordingError, or ``{"outcome": "unexpected", "type": ..., "message": ...}``
for any other exception (a bug: bad input must raise RecordingError). It prints ``ready`` once it can
answer.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np

from evpipe.nodes.sources.readers import RecordingError, RecordingWarning, open_recording


def read(path: str, on_error: str, sensor_size: list[int] | None) -> dict:
    """Read every stream of the file; check what a reader promises about what it yields."""
    size = tuple(sensor_size) if sensor_size else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordingWarning)
        with open_recording(path, on_error=on_error, sensor_size=size) as rec:
            width, height = rec.sensor_size
            n_events, last_t = 0, np.iinfo(np.int64).min
            for packet in rec.events(chunk_events=4096):
                if len(packet):
                    assert packet.t[0] >= last_t and np.all(np.diff(packet.t) >= 0), "events go back in time"
                    assert int(packet.x.max()) < width and int(packet.y.max()) < height, "event outside the sensor"
                    assert set(np.unique(packet.p).tolist()) <= {-1, 1}, "polarity not +-1"
                    last_t = int(packet.t[-1])
                n_events += len(packet)
            frames = sum(1 for _ in rec.frames())
            imu = sum(len(batch.t) for batch in rec.imu())
    return {"outcome": "ok", "events": n_events, "frames": frames, "imu": imu}


def main() -> int:
    # The native libraries the readers load lazily are loaded before "ready": their import takes seconds on a
    # busy machine, which must not count against a read's timeout.
    import dv_processing  # noqa: F401
    import h5py  # noqa: F401

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = read(request["path"], request["on_error"], request.get("sensor_size"))
        except RecordingError as exc:
            answer = {"outcome": "error", "kind": exc.kind, "message": str(exc)}
        except Exception as exc:  # reported to the test as a failure, with the input kept
            answer = {"outcome": "unexpected", "type": type(exc).__name__, "message": str(exc)[:500]}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
