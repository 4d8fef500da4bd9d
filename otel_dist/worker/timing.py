"""Where a task's wall time went: named parts, measured in the task loop, that add up to the
task's duration.

The parts (integer nanoseconds of wall time, carried as ``otel_dist.task.time.<part>`` on the
task span):

* ``planning``: a DataFusion session, the task's tables registered, its SQL planned.
* ``wait_stage_<N>``: waiting for, and receiving, upstream stage N's data (a task reads its
  stage inputs one after the other before its plan runs; a streamed input's scan waits while
  the plan runs, and that wait is moved here from ``operators``, ``worker/inputs.py``).
* ``queued``: waiting for a turn to execute (the worker's admission control,
  ``worker/admission.py``), after the inputs were read.
* ``operators``: DataFusion running the plan (the operators' own work, scans included).
* ``output``: converting result batches, hash-partitioning them and appending them to the
  task's buckets.
* ``send_blocked``: blocked handing output to a slow consumer. A bucket never blocks its
  producer (it spills what does not fit in memory instead), so this is 0 by construction;
  what a slow consumer costs shows as ``spill``.
* ``spill``: appending output that went to a bucket's spill file.
* ``telemetry``: reading the plan's metrics and building the task's spans, after the output
  was complete (the task span ends when its spans are built; encoding them and waiting for
  upstream telemetry come after its end and are not counted).
* ``other``: the remainder, what no part measured (thread hand-offs, bookkeeping).

The output partitions of a plan run concurrently, one thread each. Their time is apportioned
to the wall time of the run: each part gets the run's wall time times its share of the
threads' summed time, so the parts stay wall time and add up.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

PLANNING = "planning"
QUEUED = "queued"
OPERATORS = "operators"
OUTPUT = "output"
SEND_BLOCKED = "send_blocked"
SPILL = "spill"
TELEMETRY = "telemetry"
OTHER = "other"
WAIT_PREFIX = "wait_stage_"


def wait_part(stage_id: int) -> str:
    """The part of waiting for upstream stage ``stage_id``."""
    return f"{WAIT_PREFIX}{stage_id}"


@dataclass
class DrainTimes:
    """Time one thread spent draining one output partition of the plan."""

    operators_ns: int = 0
    output_ns: int = 0
    spill_ns: int = 0
    started: int = field(default_factory=time.perf_counter_ns)
    total_ns: int = 0

    def stop(self) -> None:
        self.total_ns = time.perf_counter_ns() - self.started


class TaskClock:
    """The parts of one task's wall time as they are measured."""

    def __init__(self) -> None:
        self._parts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._drains: list[DrainTimes] = []

    def add(self, part: str, ns: int) -> None:
        with self._lock:
            self._parts[part] = self._parts.get(part, 0) + max(0, ns)

    def drain(self) -> DrainTimes:
        """A new thread's times, for ``run_finished`` to apportion."""
        times = DrainTimes()
        with self._lock:
            self._drains.append(times)
        return times

    def run_finished(self, wall_ns: int, waits: dict[str, int] | None = None) -> None:
        """The plan ran for ``wall_ns``: share it among the drains' parts. ``waits``: time
        streamed scans blocked for upstream data inside the drains' operator time, by wait
        part (``worker/inputs.py``); it moves from ``operators`` to those parts."""
        with self._lock:
            drains, self._drains = self._drains, []
        for times in drains:
            if not times.total_ns:
                times.stop()
        total = sum(t.total_ns for t in drains)
        if total <= 0:
            self.add(OPERATORS, wall_ns)
            return
        scale = wall_ns / total
        operators_ns = sum(t.operators_ns for t in drains)
        waited = {part: ns for part, ns in (waits or {}).items() if ns > 0}
        waited_ns = sum(waited.values())
        if waited_ns > operators_ns:  # never more than the time it was measured in
            waited = {part: ns * operators_ns // waited_ns for part, ns in waited.items()}
        for part, ns in waited.items():
            operators_ns -= ns
            self.add(part, round(ns * scale))
        self.add(OPERATORS, round(operators_ns * scale))
        self.add(OUTPUT, round(sum(t.output_ns - t.spill_ns for t in drains) * scale))
        self.add(SPILL, round(sum(t.spill_ns for t in drains) * scale))
        # the drains' unmeasured moments (thread start, cancellation checks) stay in `other`

    def breakdown(self, duration_ns: int) -> dict[str, int]:
        """Every part, with ``other`` the remainder; adds up to ``duration_ns``.

        Measured parts exceeding the duration (clock granularity) are scaled down to it.
        """
        with self._lock:
            parts = dict(self._parts)
        for name in (OPERATORS, OUTPUT, SEND_BLOCKED, SPILL, TELEMETRY):
            parts.setdefault(name, 0)
        measured = sum(parts.values())
        duration_ns = max(0, duration_ns)
        if measured > duration_ns and measured > 0:
            scale = duration_ns / measured
            parts = {name: int(ns * scale) for name, ns in parts.items()}
            measured = sum(parts.values())
        parts[OTHER] = duration_ns - measured
        return parts


class Stopwatch:
    """``with Stopwatch(clock, part):`` adds the block's wall time to ``part``."""

    __slots__ = ("_clock", "_part", "_started")

    def __init__(self, clock: TaskClock, part: str) -> None:
        self._clock = clock
        self._part = part
        self._started = 0

    def __enter__(self) -> None:
        self._started = time.perf_counter_ns()

    def __exit__(self, *exc: object) -> None:
        self._clock.add(self._part, time.perf_counter_ns() - self._started)
