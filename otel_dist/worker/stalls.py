"""Stopping a task whose DataFusion plan has stopped making progress.

DataFusion 55 can park every thread of a plan for good: under a memory limit, a
``RepartitionExec`` that spills from two input partitions at once waits on the wrong spill
file (apache/datafusion#24883, fixed upstream after this release). Nothing fails and nothing
moves, so the task would hold its turn until the query's timeout. A plan that reads only
files and inputs held in memory always has work it can do, so a task whose plan's metrics
(rows, bytes, compute time, spills, summed over its operators) have not changed for
``OTEL_DIST_STALL_S`` seconds is stopped with an error that says so. Plans that stream an
input are not watched: they wait for upstream tasks, which may legitimately be slow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from otel_dist import settings


class TaskStalled(RuntimeError):
    """The task's plan made no progress for the stall window."""


def stall_window_s() -> float:
    """``OTEL_DIST_STALL_S``; 0 turns the watch off."""
    return max(0.0, float(settings.read("OTEL_DIST_STALL_S")))


def plan_progress(plan: object) -> int:
    """The sum of every whole-number metric of the plan's operators so far: it grows while
    any operator does anything."""
    total = 0
    stack: list[Any] = [getattr(plan, "_raw_plan", plan)]
    while stack:
        node = stack.pop()
        metrics = node.metrics()
        for metric in metrics.metrics() if metrics is not None else ():
            value = metric.value
            if type(value) is int:
                total += value
        stack.extend(node.children())
    return total


@dataclass
class StallWatch:
    """Tells when ``plan_progress`` has not moved for ``window_s`` seconds."""

    plan: object
    window_s: float
    _last: int = -1
    _since: float = field(default_factory=time.monotonic)

    def stalled(self) -> bool:
        progress = plan_progress(self.plan)
        now = time.monotonic()
        if progress != self._last:
            self._last, self._since = progress, now
            return False
        return now - self._since >= self.window_s
