"""The explain tree of a query still running, from the coordinator's live progress
(``coordinator/progress.py``): the same ``ExplainTree`` the spans give once it has ended, with
each task's status (queued, running, finished, failed, cancelled), its duration and metrics
so far and its operators' metrics so far, so the JSON, text and HTML renderers draw it as is.
"""

from __future__ import annotations

from typing import Any

from otel_dist.coordinator.progress import LiveQuery, LiveStage, ProgressTracker
from otel_dist.explain.build import _nest, aggregate_operators
from otel_dist.explain.model import ExplainTree, OperatorNode, StageNode, TaskNode

STATUS_RUNNING = "running"


def live_tree(query: LiveQuery) -> ExplainTree:
    """The tree of a running query; ``status`` is ``running``, durations are so far."""
    stages = {stage.stage_id: _stage(stage, query.now_ns) for stage in query.stages}
    return ExplainTree(
        query_id=query.query_id,
        trace_id=query.trace_id,
        sql=query.sql,
        duration_ns=query.elapsed_ns,
        status=STATUS_RUNNING,
        error=None,
        stages=_nest(stages),
        strategy=query.strategy,
    )


def _stage(stage: LiveStage, now_ns: int) -> StageNode:
    tasks = [_task(task) for task in stage.tasks]
    starts = [t.started_ns for t in tasks if t.started_ns is not None]
    ends = [
        t.started_ns + t.duration_ns
        for t in tasks
        if t.started_ns is not None and t.duration_ns is not None
    ]
    running = any(t.status in ("queued", "running") for t in tasks)
    end = now_ns if running or not ends else max(ends)
    return StageNode(
        stage_id=stage.stage_id,
        task_count=stage.task_count,
        partitioning=stage.partitioning,
        kind=stage.kind,
        fallback_reason=stage.fallback_reason,
        duration_ns=end - min(starts) if starts else None,
        sql=stage.sql,
        inputs=stage.inputs,
        operators=aggregate_operators(tasks),
        tasks=tasks,
        strategy=stage.strategy or None,
    )


def _task(task: dict[str, Any]) -> TaskNode:
    partitions = task.get("partitions")
    return TaskNode(
        task_index=int(task["task_index"]),
        worker=task.get("worker"),
        partitions=None if partitions is None else tuple(partitions),
        duration_ns=task.get("duration_ns"),
        status=str(task.get("status", "queued")),
        error=task.get("error"),
        metrics={k: int(v) for k, v in task.get("metrics", {}).items()},
        operators=[_operator(op) for op in task.get("operators", [])],
        started_ns=task.get("start_ns"),
    )


def _operator(operator: dict[str, Any]) -> OperatorNode:
    return OperatorNode(
        name=str(operator["name"]),
        display=str(operator.get("display", "")),
        path=str(operator["path"]),
        metrics={k: int(v) for k, v in operator.get("metrics", {}).items()},
        children=[_operator(child) for child in operator.get("children", [])],
    )


class LiveQueries:
    """What the query pages show of running queries: their list and their live trees."""

    def __init__(self, progress: ProgressTracker) -> None:
        self.progress = progress

    def list(self) -> list[dict[str, Any]]:
        """Running queries' summaries, oldest first."""
        return [query.summary() for query in self.progress.queries()]

    def tree(self, query_id: str) -> ExplainTree | None:
        query = self.progress.query(query_id)
        return None if query is None else live_tree(query)
