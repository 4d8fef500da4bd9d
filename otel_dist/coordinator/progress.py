"""Live progress of the queries a coordinator runs, and of its workers, for the views that
watch them while they run (query pages, ``otel-dist top``, the terminal progress display).

The coordinator already holds every running query's plan and task placement; what the tasks
are doing comes from their workers (Flight action ``task_progress``). Workers are asked only
when someone asks for a query's progress, at most once per ``max_age_s`` (a few times a
second) however many watch, so an unwatched query costs nothing. Plain data only: the
explain package turns a ``LiveQuery`` into its tree (``explain/live.py``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from otel_dist.background import run_in_background
from otel_dist.protocol import ACTION_TASK_PROGRESS, ACTION_WORKER_STATUS, encode_json

if TYPE_CHECKING:
    from otel_dist.coordinator.core import Coordinator
    from otel_dist.coordinator.query import QueryRun

log = logging.getLogger(__name__)

POLL_MAX_AGE_S = 0.25
POLL_TIMEOUT_S = 2.0
TASK_STATES = ("queued", "running", "finished", "failed", "cancelled")


@dataclass
class LiveStage:
    """One stage of a running query, with its tasks as their workers last reported them."""

    stage_id: int
    task_count: int
    kind: str
    partitioning: str
    sql: str
    inputs: tuple[int, ...]
    fallback_reason: str | None
    strategy: str
    tasks: list[dict[str, Any]]  # explain-JSON task keys, plus "phase" and "operator"

    def counts(self) -> dict[str, int]:
        """Tasks by status: done (finished), running, queued, failed (failed or cancelled)."""
        statuses = [task["status"] for task in self.tasks]
        return {
            "done": statuses.count("finished"),
            "running": statuses.count("running"),
            "queued": statuses.count("queued") + statuses.count("unknown"),
            "failed": statuses.count("failed") + statuses.count("cancelled"),
        }

    def rows(self) -> int:
        """Rows the stage's tasks wrote so far (its output)."""
        return sum(int(task["metrics"].get("output_rows", 0)) for task in self.tasks)

    def rows_processed(self) -> int:
        """The most rows any operator of each task has produced so far, summed over tasks: a
        figure that grows while a task works even when its output comes only at its end."""
        return sum(_max_operator_rows(task) for task in self.tasks)


@dataclass
class LiveQuery:
    """A running query as its live views show it."""

    query_id: str
    sql: str
    started_ns: int
    now_ns: int
    status: str  # "planning" until its stages are placed, then "running"
    trace_id: str = ""
    strategy: str | None = None
    stages: list[LiveStage] = field(default_factory=list)
    root_stage_id: int | None = None

    @property
    def elapsed_ns(self) -> int:
        return self.now_ns - self.started_ns

    def summary(self) -> dict[str, Any]:
        """The query in a few numbers per stage: what the progress displays draw."""
        return {
            "query_id": self.query_id,
            "trace_id": self.trace_id,
            "sql": self.sql,
            "status": "running",
            "phase": self.status,
            "start_ns": self.started_ns,
            "elapsed_ns": self.elapsed_ns,
            "stages": [
                {
                    "stage_id": stage.stage_id,
                    "kind": stage.kind,
                    "task_count": stage.task_count,
                    **stage.counts(),
                    "rows": stage.rows(),
                    "rows_processed": stage.rows_processed(),
                }
                for stage in self.stages
            ],
        }


@dataclass
class _Polled:
    at: float = 0.0
    tasks: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ProgressTracker:
    """Running queries' live state and the cluster's load, asked of workers on demand."""

    def __init__(self, coordinator: Coordinator, max_age_s: float = POLL_MAX_AGE_S) -> None:
        self._coordinator = coordinator
        self.max_age_s = max_age_s
        self._polled: dict[str, _Polled] = {}
        self._lock = threading.Lock()

    def running_ids(self) -> list[str]:
        """The ids of the queries running now, oldest first."""
        return [run.query_id for run in self._runs()]

    def query(self, query_id: str) -> LiveQuery | None:
        """A running query's live state (workers asked if the last answer is stale); None
        when it is not running here."""
        run = next((r for r in self._runs() if r.query_id == query_id), None)
        return None if run is None else self._live(run, poll=True)

    def queries(self, poll: bool = True) -> list[LiveQuery]:
        """Every running query; ``poll=False`` shows what is known without asking workers."""
        return [self._live(run, poll) for run in self._runs()]

    def cluster_status(self) -> dict[str, Any]:
        """Every worker's state and load, and every query in flight with its progress."""
        coordinator = self._coordinator
        states = {state.url: state for state in coordinator.worker_health.states()}

        def status(url: str) -> dict[str, Any]:
            state = states.get(url)
            entry: dict[str, Any] = {"url": url, "up": state.up if state else True}
            if state is not None and not state.up:
                return {**entry, "status": "down", "reason": state.reason}
            try:
                answer = coordinator._action(url, ACTION_WORKER_STATUS, b"", POLL_TIMEOUT_S)
                return {**entry, "status": "up", **json.loads(answer)}
            except Exception as error:  # a worker that does not answer is shown as such
                return {**entry, "status": "unreachable", "reason": str(error)}

        futures = [run_in_background(status, url) for url in coordinator.workers]
        queries = [query.summary() for query in self.queries(poll=True)]
        wait(futures, timeout=POLL_TIMEOUT_S + 1)
        workers = [
            f.result() if f.done() else {"url": url, "up": False, "status": "unreachable"}
            for f, url in zip(futures, coordinator.workers, strict=True)
        ]
        return {"workers": workers, "queries": queries, "now_ns": time.time_ns()}

    # ---- internals -----------------------------------------------------------------------

    def _runs(self) -> list[QueryRun]:
        coordinator = self._coordinator
        with coordinator._running_lock:
            runs = sorted(coordinator._running.values(), key=lambda run: run.started_ns)
        with self._lock:  # forget the answers about queries that ended
            for query_id in set(self._polled) - {run.query_id for run in runs}:
                del self._polled[query_id]
        return runs

    def _live(self, run: QueryRun, poll: bool) -> LiveQuery:
        plan = run.plan
        with run.lock:
            placement = dict(run.placement)
        trace_id = format(run.query_span.get_span_context().trace_id, "032x")
        live = LiveQuery(
            run.query_id, run.sql, run.started_ns, time.time_ns(), "planning", trace_id
        )
        if plan is None or not placement:
            return live
        reported = self._poll(run, placement) if poll else self._known(run.query_id)
        live.status, live.strategy, live.root_stage_id = (
            "running",
            plan.strategy,
            plan.root.stage_id,
        )
        for stage in plan.stages:
            tasks = []
            for index in range(stage.task_count):
                worker = placement.get((stage.stage_id, index))
                task = reported.get((stage.stage_id, index)) or _not_reported(index)
                tasks.append({**task, "worker": worker})
            live.stages.append(
                LiveStage(
                    stage_id=stage.stage_id,
                    task_count=stage.task_count,
                    kind=stage.kind,
                    partitioning=stage.output.describe(),
                    sql=stage.sql,
                    inputs=tuple(i.stage_id for i in stage.inputs),
                    fallback_reason=stage.fallback_reason,
                    strategy=stage.strategy,
                    tasks=tasks,
                )
            )
        return live

    def _known(self, query_id: str) -> dict[tuple[int, int], dict[str, Any]]:
        with self._lock:
            polled = self._polled.get(query_id)
        return dict(polled.tasks) if polled else {}

    def _poll(
        self, run: QueryRun, placement: dict[tuple[int, int], str]
    ) -> dict[tuple[int, int], dict[str, Any]]:
        """The tasks' latest reports; one poll at a time per query, at most every max_age."""
        with self._lock:
            polled = self._polled.setdefault(run.query_id, _Polled())
        with polled.lock:
            if time.monotonic() - polled.at < self.max_age_s:
                return dict(polled.tasks)
            body = encode_json({"query_id": run.query_id})

            def ask(url: str) -> list[dict[str, Any]]:
                answer = self._coordinator._action(url, ACTION_TASK_PROGRESS, body, POLL_TIMEOUT_S)
                return list(json.loads(answer).get("tasks", []))

            urls = sorted(set(placement.values()))
            futures = {url: run_in_background(ask, url) for url in urls}
            wait(futures.values(), timeout=POLL_TIMEOUT_S + 1)
            for url, future in futures.items():
                if not future.done() or future.exception() is not None:
                    log.debug("progress of query %s not read from %s", run.query_id, url)
                    continue  # keep what it said last
                for task in future.result():
                    key = (int(task["stage_id"]), int(task["task_index"]))
                    if placement.get(key) == url:
                        polled.tasks[key] = task
            polled.at = time.monotonic()
            return dict(polled.tasks)


def _not_reported(index: int) -> dict[str, Any]:
    """A placed task its worker has not reported (not submitted yet, or no answer)."""
    return {
        "task_index": index,
        "partitions": None,
        "status": "queued",
        "phase": "queued",
        "operator": None,
        "start_ns": None,
        "duration_ns": None,
        "error": None,
        "metrics": {},
        "operators": [],
    }


def _max_operator_rows(task: dict[str, Any]) -> int:
    best = int(task.get("metrics", {}).get("output_rows", 0))
    pending = list(task.get("operators", []))
    while pending:
        operator = pending.pop()
        best = max(best, int(operator.get("metrics", {}).get("output_rows", 0)))
        pending.extend(operator.get("children", []))
    return best
