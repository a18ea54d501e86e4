"""Pipelined execution: up to N requests in flight, results in submission order.

The runner owns N pipeline slots. A submitted request takes a free slot and is started at once
(``Engine._start``: a worker thread on the CPU; upload / compute / download enqueued on three CUDA
streams on a GPU). One completion thread waits for the oldest running request (``Engine._wait``),
queues its result, frees its slot and starts the next waiting request on it. Results are therefore
delivered strictly in submission order even when a later request finishes first.

When all N slots are busy:

- ``lossless``: ``submit`` blocks until a slot frees (back-pressure, nothing is dropped);
- ``latest``: ``submit`` returns at once; the request waits for the next free slot, and any older
  request still waiting is dropped and counted in ``skipped`` (a predictor wants the newest window,
  not a backlog). Requests already running are never cancelled.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from evpipe.runtime.engines.base import POLICIES, EngineRunError

if TYPE_CHECKING:
    from evpipe.runtime.engines.base import Engine


@dataclass(frozen=True)
class Completed:
    """One finished asynchronous request.

    ticket: the number ``submit`` returned (gaps mean skipped requests).
    outputs: one array per output name, owned by the caller.
    latency_s: seconds from the ``submit`` call (including any time it blocked for a free slot) to
        the result being collectable, i.e. done and every earlier request done too.
    """

    ticket: int
    outputs: dict[str, np.ndarray]
    latency_s: float


@dataclass(frozen=True)
class _Failed:
    ticket: int
    error: BaseException


@dataclass
class _Running:
    ticket: int
    slot: int
    handle: Any
    submitted_at: float


@dataclass
class _Waiting:
    ticket: int
    feeds: dict[str, np.ndarray]
    submitted_at: float


class AsyncRunner:
    """Keeps up to ``max_in_flight`` requests of one engine in flight (see module docstring)."""

    def __init__(self, engine: Engine, max_in_flight: int, policy: str) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self._engine = engine
        self._policy = policy
        self._cond = threading.Condition()
        self._free_slots: deque[int] = deque(range(max_in_flight))
        self._running: deque[_Running] = deque()
        self._waiting: deque[_Waiting] = deque()
        self._done: deque[Completed | _Failed] = deque()
        self._next_ticket = 0
        self._skipped = 0
        self._closing = False
        self._completer = threading.Thread(
            target=self._complete_in_order, name="evpipe-engine-completer", daemon=True
        )
        self._completer.start()

    @property
    def skipped(self) -> int:
        with self._cond:
            return self._skipped

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._running) + len(self._waiting)

    def submit(self, feeds: Mapping[str, np.ndarray]) -> int:
        checked = self._engine.check_feeds(feeds)
        submitted_at = time.perf_counter()
        with self._cond:
            if self._closing:
                raise RuntimeError("engine is closing; submit refused")
            ticket = self._next_ticket
            self._next_ticket += 1
            if self._policy == "lossless":
                while not self._free_slots and not self._closing:
                    self._cond.wait()
                if self._closing:
                    raise RuntimeError("engine closed while submit waited for a free slot")
            if self._free_slots:
                # The caller may overwrite its arrays once submit returns: copy them unless the
                # engine stages them (into pinned memory) before _start returns.
                if not self._engine.stages_feeds_on_start:
                    checked = _copied(checked)
                self._start_locked(_Waiting(ticket, checked, submitted_at), self._free_slots.popleft())
            else:
                while self._waiting:
                    self._waiting.popleft()
                    self._skipped += 1
                self._waiting.append(_Waiting(ticket, _copied(checked), submitted_at))
            self._cond.notify_all()
        return ticket

    def collect(self, block: bool = False, timeout: float | None = None) -> list[Completed]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if block:
                while self._running or self._waiting:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(
                            f"collect(block=True): {len(self._running) + len(self._waiting)} request(s) "
                            f"still pending after {timeout} s"
                        )
                    self._cond.wait(remaining)
            results: list[Completed] = []
            while self._done:
                head = self._done[0]
                if isinstance(head, _Failed):
                    if results:
                        break  # hand over what came before; the failure is raised on the next call
                    self._done.popleft()
                    raise EngineRunError(f"request {head.ticket} failed: {head.error}") from head.error
                results.append(self._done.popleft())
            return results

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._skipped += len(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        self._completer.join()

    def _start_locked(self, request: _Waiting, slot: int) -> None:
        try:
            handle = self._engine._start(request.feeds, slot)
        except BaseException:
            self._free_slots.appendleft(slot)
            raise
        self._running.append(_Running(request.ticket, slot, handle, request.submitted_at))

    def _complete_in_order(self) -> None:
        while True:
            with self._cond:
                while not self._running and not self._closing:
                    self._cond.wait()
                if not self._running:
                    return
                oldest = self._running[0]
            # Wait outside the lock so submit/collect stay responsive while the device works.
            try:
                outputs = self._engine._wait(oldest.handle)
                result: Completed | _Failed = Completed(
                    oldest.ticket, outputs, time.perf_counter() - oldest.submitted_at
                )
            except BaseException as error:  # delivered to the caller by collect()
                result = _Failed(oldest.ticket, error)
            with self._cond:
                self._running.popleft()
                self._done.append(result)
                slot = oldest.slot
                if self._waiting:
                    request = self._waiting.popleft()
                    try:
                        self._start_locked(request, slot)
                    except BaseException as error:
                        self._done.append(_Failed(request.ticket, error))
                else:
                    self._free_slots.append(slot)
                self._cond.notify_all()


def _copied(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: array.copy() for name, array in feeds.items()}
