"""Admission control: at most ``limit`` tasks execute on a worker at once; the others wait in
a first-come queue.

A task takes its turn before DataFusion plans and runs it, once its held inputs are read and
every upstream task of its streamed inputs has sent a batch or ended (``worker/task.py``):
a task holding a turn waits only for tasks that hold turns themselves or are done, so turns
are always given back and no set of queued tasks can wait on each other, on one worker or
across workers. The time
spent in the queue goes on the task span (``otel_dist.task.queued_time``) and into the
``otel_dist_task_queue_time_seconds`` histogram.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# How often a queued task checks whether it was cancelled.
_POLL_S = 0.05


def default_max_running_tasks() -> int:
    """Two tasks per core: a task waits on I/O and Python part of the time."""
    return 2 * (os.cpu_count() or 1)


class AdmissionCancelled(RuntimeError):
    """The task was cancelled while it waited for its turn."""


@dataclass
class Admission:
    """Turns to execute, at most ``limit`` at once, in arrival order."""

    limit: int
    _running: int = 0
    _queue: deque[int] = field(default_factory=deque)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _tickets: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.limit = max(1, self.limit)

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return len(self._queue)

    def acquire(self, stopped: Callable[[], bool], turns: int = 1) -> int:
        """Wait for ``turns`` turns (at most ``limit``: every turn runs a task alone); return
        the nanoseconds waited. Raises ``AdmissionCancelled`` when ``stopped()`` turns true
        first."""
        turns = self._clamped(turns)
        started = time.perf_counter_ns()
        with self._cond:
            if not self._queue and self._running + turns <= self.limit:
                self._running += turns
                return 0
            ticket = next(self._tickets)
            self._queue.append(ticket)
            try:
                while not (self._queue[0] == ticket and self._running + turns <= self.limit):
                    if stopped():
                        raise AdmissionCancelled("cancelled while queued")
                    self._cond.wait(_POLL_S)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            self._running += turns
        return time.perf_counter_ns() - started

    def release(self, turns: int = 1) -> None:
        with self._cond:
            self._running = max(0, self._running - self._clamped(turns))
            self._cond.notify_all()

    def _clamped(self, turns: int) -> int:
        return min(max(1, turns), self.limit)


@contextlib.contextmanager
def admitted(
    admission: Admission | None,
    stopped: Callable[[], bool],
    on_admitted: Callable[[int], None],
    turns: int = 1,
) -> Iterator[None]:
    """Hold ``turns`` turns for the block (none needed without ``admission``); ``on_admitted``
    gets the nanoseconds waited. A task stopped while queued raises ``AdmissionCancelled``."""
    if admission is None:
        on_admitted(0)
        yield
        return
    on_admitted(admission.acquire(stopped, turns))
    try:
        yield
    finally:
        admission.release(turns)
