"""Command-line tools: dataset synthesis, training, export, evaluation, benchmarks."""

from __future__ import annotations

import shlex
import sys


def command_line(module: str, argv: list[str] | None) -> str:
    """The shell command that ran ``module`` with ``argv`` (default: this process's arguments), as the
    reports and training logs record it."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])
