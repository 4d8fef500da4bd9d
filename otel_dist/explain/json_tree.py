"""The distributed EXPLAIN ANALYZE tree as plain JSON-serialisable data.

Schema (durations in integer nanoseconds; ``null`` when unknown)::

    tree:     {query_id, trace_id, sql, duration_ns,
               status ("ok" | "error" | "unknown" | "running": live, durations so far),
               error, strategy, output_rows, reads: [read], stages: [stage]}  # root stages
    stage:    {stage_id, task_count, partitioning, kind, fallback_reason,
               strategy,                      # how the stage is partitioned and why
               duration_ns, sql,
               inputs: [stage_id],            # every stage it reads
               skew: null | {task_index, worker, ratio, duration_ns, median_ns},
               operators: [aggregated operator], tasks: [task],
               children: [stage]}             # the stages it reads, nested (each stage once)
    aggregated operator:
              {name, display, path, metrics: {name: total over tasks},
               metric_stats: {name: {min, median, max, max_task}},
               tasks: [task_index],           # the tasks that ran this operator
               children: [...]}
    task:     {task_index, worker, partitions: [int] | null, duration_ns,
               status ("finished" | "failed" | "cancelled" | "unknown",
                       and while the query runs "queued" | "running"), error,
               metrics: {output_rows, output_bytes, elapsed_compute
                         [, read_rows, read_bytes, read_blocked_time]},   # {} when unknown
               operators: [task operator], reads: [read]}
    task operator: {name, display, path, metrics: {name: value}, children: [...]}
    read:     {endpoint, stage_id, task_index, bucket, rows, batches, bytes, duration_ns,
               time_to_first_batch_ns, blocked_ns}

Operator ``path`` is the operator's position in the plan (``"0"``, ``"0.0"``, ``"0.1"``...).
Tasks of a stage normally run the same plan; where their plans differ (a task over more files
needs no round-robin repartition), the aggregated tree keeps the differing operators apart and
their ``tasks`` say which tasks ran them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from otel_dist.explain.model import ExplainTree, OperatorNode, StageNode, TaskNode


def tree_to_dict(tree: ExplainTree) -> dict[str, Any]:
    """The tree as dicts, lists, strings, numbers, booleans and ``None`` only."""
    return {
        "query_id": tree.query_id,
        "trace_id": tree.trace_id,
        "sql": tree.sql,
        "duration_ns": tree.duration_ns,
        "status": tree.status,
        "error": tree.error,
        "strategy": tree.strategy,
        "output_rows": tree.output_rows,
        "reads": [asdict(read) for read in tree.reads],
        "stages": [stage_to_dict(stage) for stage in tree.stages],
    }


def stage_to_dict(stage: StageNode) -> dict[str, Any]:
    return {
        "stage_id": stage.stage_id,
        "task_count": stage.task_count,
        "partitioning": stage.partitioning,
        "kind": stage.kind,
        "fallback_reason": stage.fallback_reason,
        "strategy": stage.strategy,
        "duration_ns": stage.duration_ns,
        "sql": stage.sql,
        "inputs": list(stage.inputs),
        "skew": None if stage.skew is None else asdict(stage.skew),
        "operators": [_aggregated_operator(op) for op in stage.operators],
        "tasks": [task_to_dict(task) for task in stage.tasks],
        "children": [stage_to_dict(child) for child in stage.children],
    }


def task_to_dict(task: TaskNode) -> dict[str, Any]:
    return {
        "task_index": task.task_index,
        "worker": task.worker,
        "partitions": None if task.partitions is None else list(task.partitions),
        "start_ns": task.started_ns,
        "duration_ns": task.duration_ns,
        "status": task.status,
        "error": task.error,
        "metrics": dict(task.metrics),
        "operators": [_task_operator(op) for op in task.operators],
        "reads": [asdict(read) for read in task.reads],
    }


def _aggregated_operator(operator: OperatorNode) -> dict[str, Any]:
    return {
        "name": operator.name,
        "display": operator.display,
        "path": operator.path,
        "metrics": dict(operator.metrics),
        "metric_stats": {name: asdict(stats) for name, stats in operator.metric_stats.items()},
        "tasks": list(operator.tasks),
        "children": [_aggregated_operator(child) for child in operator.children],
    }


def _task_operator(operator: OperatorNode) -> dict[str, Any]:
    return {
        "name": operator.name,
        "display": operator.display,
        "path": operator.path,
        "metrics": dict(operator.metrics),
        "children": [_task_operator(child) for child in operator.children],
    }
