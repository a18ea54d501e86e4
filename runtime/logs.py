"""Logging for the ``evpipe`` command and its node processes: evpipe's own loggers at the level asked for,
every other library's at WARNING (ONNX export alone logs hundreds of INFO lines a user cannot act on)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Root (third-party) at WARNING, ``evpipe.*`` at ``level``, one line per record on stderr."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=FORMAT)
    logging.getLogger("evpipe").setLevel(level)
