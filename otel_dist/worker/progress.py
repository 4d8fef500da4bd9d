"""What a worker and its tasks are doing right now, for live views (``task_progress`` and
``worker_status`` actions, the task gauges Prometheus scrapes).

Everything here reads counters the tasks keep anyway (rows and bytes written, upstream reads'
stream statistics) and, only when asked for a query's progress, the DataFusion metrics of a
plan still executing; nothing is added to the path data takes. A sampler thread computes the
worker's CPU % and rows/s once a second (a few microseconds of work).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from otel_dist.protocol import TaskKey
from otel_dist.telemetry.task_spans import OperatorMetrics, operator_metrics, without_details
from otel_dist.worker.task import Task

SAMPLE_INTERVAL_S = 1.0
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def task_status(task: Task) -> str:
    """``queued`` (not started, still waiting for its first upstream row, or waiting for a
    turn to execute), ``running``, ``finished``, ``failed`` or ``cancelled``."""
    state = task.state
    if state == "pending":
        return "queued"
    if state == "running" and task.phase == "queued":
        return "queued"
    if state == "running":
        waiting = task.phase.startswith("reading") and not any(
            read.stats.rows for read in list(task.input_reads)
        )
        return "queued" if waiting else "running"
    return state


def task_progress(task: Task, redact: bool = False) -> dict[str, Any]:
    """One task's state and counters so far, with its live operator metrics while it runs.
    Keys follow the explain JSON's task (``task_index``, ``status``, ``metrics``...)."""
    now = time.time_ns()
    reads = list(task.input_reads)
    started = task.started_ns or None
    ended = task.ended_ns or None
    metrics = {"output_rows": task.rows_out, "output_bytes": task.bytes_out}
    if reads:
        metrics["read_rows"] = sum(read.stats.rows for read in reads)
        metrics["read_bytes"] = sum(read.stats.bytes for read in reads)
    operators: list[dict[str, Any]] = []
    plan = task.live_plan
    current = task.phase
    tree = task.operators  # a finished task's, read once for its spans
    try:
        if plan is not None:
            tree = operator_metrics(plan)
            current = _current_operator(tree) or current
        if tree is not None:
            operators = [_operator(without_details(tree) if redact else tree, "0")]
    except Exception:  # a plan finishing meanwhile: its metrics come with its spans
        operators = []
    return {
        "stage_id": task.spec.stage_id,
        "task_index": task.spec.task_index,
        "partitions": list(task.spec.partitions),
        "status": task_status(task),
        "phase": task.phase,
        "operator": current,
        "start_ns": started,
        "duration_ns": None if started is None else (ended or now) - started,
        "error": task.error,
        "metrics": metrics,
        "operators": operators,
    }


def _operator(node: OperatorMetrics, path: str) -> dict[str, Any]:
    return {
        "name": node.name,
        "display": node.display,
        "path": path,
        "metrics": dict(node.totals),
        "children": [_operator(child, f"{path}.{i}") for i, child in enumerate(node.children)],
    }


def _current_operator(node: OperatorMetrics) -> str | None:
    """The operator nearest the root that has produced rows: where the task's work is."""
    pending = [node]
    while pending:
        operator = pending.pop(0)
        if operator.totals.get("output_rows"):
            return operator.name
        pending.extend(operator.children)
    return None


@dataclass
class _Sample:
    wall_s: float
    cpu_s: float
    rows: int


def rows_so_far(task: Task) -> int:
    """The most rows any operator of the task produced so far (its output rows, or what it
    read, once it ended): grows while a join or an aggregate works, before it outputs."""
    best = max(task.rows_out, sum(read.stats.rows for read in list(task.input_reads)))
    plan = task.live_plan
    pending: list[Any] = [getattr(plan, "_raw_plan", plan)] if plan is not None else []
    try:
        while pending:
            operator = pending.pop()
            metrics = operator.metrics()
            if metrics is not None:
                best = max(best, metrics.output_rows() or 0)
            pending.extend(operator.children())
    except Exception:  # the plan finished meanwhile: what was read so far stands
        pass
    return best


class WorkerProgress:
    """Load figures of one worker: running and queued tasks, CPU %, RSS, and rows/s (rows
    its tasks' operators produced per second, sampled once a second)."""

    def __init__(self, tasks: Callable[[], list[Task]]) -> None:
        self._tasks = tasks
        self._released_rows = 0
        self._seen: dict[TaskKey, int] = {}  # each task's rows_so_far, kept once it ends
        self._lock = threading.Lock()
        self._last = _Sample(time.monotonic(), _cpu_seconds(), 0)
        self.cpu_percent = 0.0
        self.rows_per_s = 0.0
        self._stop = threading.Event()

    def start(self) -> WorkerProgress:
        threading.Thread(target=self._sample_loop, name="worker-progress", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def released(self, tasks: Iterable[Task]) -> None:
        """Count the rows of tasks leaving the worker, so rows/s does not drop with them."""
        with self._lock:
            for task in tasks:
                self._released_rows += self._seen.pop(task.spec.key, task.rows_out)

    def counts(self) -> tuple[int, int]:
        """(running, queued) tasks: the figures ``top`` and the task gauges show."""
        statuses = [task_status(task) for task in self._tasks()]
        return statuses.count("running"), statuses.count("queued")

    def status(self) -> dict[str, Any]:
        running, queued = self.counts()
        return {
            "running_tasks": running,
            "queued_tasks": queued,
            "cpu_percent": round(self.cpu_percent, 1),
            "rss_bytes": rss_bytes(),
            "rows_per_s": round(self.rows_per_s, 1),
            "rows_total": self._rows_total(),
        }

    def _rows_total(self) -> int:
        tasks = self._tasks()
        with self._lock:
            for task in tasks:
                key = task.spec.key
                if not task.done or key not in self._seen:
                    self._seen[key] = max(self._seen.get(key, 0), rows_so_far(task))
            return self._released_rows + sum(self._seen.get(t.spec.key, 0) for t in tasks)

    def _sample_loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def sample(self) -> None:
        now = _Sample(time.monotonic(), _cpu_seconds(), self._rows_total())
        elapsed = max(1e-6, now.wall_s - self._last.wall_s)
        self.cpu_percent = max(0.0, (now.cpu_s - self._last.cpu_s) / elapsed * 100)
        self.rows_per_s = max(0.0, (now.rows - self._last.rows) / elapsed)
        self._last = now


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def rss_bytes() -> int:
    """Resident memory of this process (Linux ``/proc``; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0
