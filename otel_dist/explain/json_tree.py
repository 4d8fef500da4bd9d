"""The distributed EXPLAIN ANALYZE tree as plain JSON-serialisable data.

Schema (durations in integer nanoseconds; ``null`` when unknown)::

    tree:     {query_id, trace_id, sql, duration_ns,
               status ("ok" | "error" | "unknown" | "running": live, durations so far),
               error, strategy, output_rows, reads: [read], stages: [stage],  # root stages
               critical_path: [step],         # from the root task down; [] when no timings
               critical_path_coordinator_ns: null | {before, after}}
    step:     {stage_id, task_index,
               ns,                            # task_ns + coordinator_ns; the steps' ns add up
                                              # to the query's duration_ns
               task_ns,                       # the task's stretch of the path
               coordinator_ns,                # the first step: the coordinator's time after
                                              # the root task; the last: its time before the
                                              # first task (planning, scheduling); else 0
               start_ns, end_ns,              # the stretch (unix ns)
               duration_ns, worker,
               operator,                      # the operator that spent the most time itself
               wait_ns,                       # of the task's duration, waiting for upstream data
               waited_on: null | {stage_id, task_index},  # the next step
               time_breakdown_ns}
    stage:    {stage_id, task_count, partitioning, kind, fallback_reason,
               strategy,                      # how the stage is partitioned and why
               duration_ns,                   # first task start to last task end
               scheduling_delay_ns,           # stage scheduled to its first task's start
               time_stats: {part: {min, median, max, max_task}},
               sql,
               inputs: [stage_id],            # every stage it reads
               skew: null | {task_index, worker, ratio, duration_ns, median_ns},
               operators: [aggregated operator], tasks: [task],
               children: [stage]}             # the stages it reads, nested (each stage once)
    aggregated operator:
              {name, display, path, metrics: {name: total over tasks},
               metric_stats: {name: {min, median, max, max_task}},
               tasks: [task_index],           # the tasks that ran this operator
               children: [...]}
    task:     {task_index, worker, partitions: [int] | null, start_ns, duration_ns,
               time_breakdown_ns: {part: ns},  # adds up to duration_ns; {} when unknown
               output_done_ns,                # from its start until its output was complete
               status ("finished" | "failed" | "cancelled" | "unknown",
                       and while the query runs "queued" | "running"), error,
               ran_again_alone,               # out of its memory share: run again alone
               metrics: {output_rows, output_bytes, elapsed_compute
                         [, read_rows, read_bytes, read_blocked_time]
                         [, sent_bytes]},     # {} when unknown
               operators: [task operator], reads: [read]}
    task operator: {name, display, path, metrics: {name: value}, children: [...]}
    read:     {endpoint, stage_id, task_index, bucket, rows, batches, bytes, duration_ns,
               time_to_first_batch_ns, blocked_ns}

Time parts (``otel_dist.worker.timing``): ``planning``, ``wait_stage_<N>`` (one per upstream
stage read), ``operators``, ``output``, ``send_blocked``, ``spill``, ``telemetry``, ``other``
(the remainder). Sizes: a read's ``bytes`` and a task's ``sent_bytes`` (summed over the reads of
its output) are what the receiving router counted; a task's ``output_bytes`` is the Arrow size
of the rows it produced; ``read_blocked_time`` is summed over concurrent reads, so it can exceed
the task's duration (its ``wait_stage_<N>`` parts are wall time). Operators' metrics are
DataFusion's, without ``output_bytes`` (it counts whole buffers that sliced batches share).

Operator ``path`` is the operator's position in the plan (``"0"``, ``"0.0"``, ``"0.1"``...).
Tasks of a stage normally run the same plan; where their plans differ (a task over more files
needs no round-robin repartition), the aggregated tree keeps the differing operators apart and
their ``tasks`` say which tasks ran them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from otel_dist.explain.model import CriticalPath, ExplainTree, OperatorNode, StageNode, TaskNode


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
        "critical_path": critical_path_to_list(tree.critical_path),
        "critical_path_coordinator_ns": None
        if tree.critical_path is None
        else {"before": tree.critical_path.before_ns, "after": tree.critical_path.after_ns},
    }


def critical_path_to_list(path: CriticalPath | None) -> list[dict[str, Any]]:
    """The critical path's steps from the root task down. Each step's ``ns`` is the task's
    stretch of the path (``task_ns``) plus the coordinator's time next to it
    (``coordinator_ns``): after the root task (reading the result, collecting telemetry) on
    the first step, before the last (planning, scheduling) on the last step; so the ``ns``
    add up to the query's duration."""
    if path is None:
        return []
    result = []
    for position, step in enumerate(path.steps):
        coordinator = (path.after_ns if position == 0 else 0) + (
            path.before_ns if position == len(path.steps) - 1 else 0
        )
        result.append(
            {
                "stage_id": step.stage_id,
                "task_index": step.task_index,
                "ns": step.ns + coordinator,
                "task_ns": step.ns,
                "coordinator_ns": coordinator,
                "start_ns": step.start_ns,
                "end_ns": step.end_ns,
                "duration_ns": step.duration_ns,
                "worker": step.worker,
                "operator": step.operator,
                "wait_ns": step.wait_ns,
                "waited_on": None
                if step.waited_on is None
                else {"stage_id": step.waited_on[0], "task_index": step.waited_on[1]},
                "time_breakdown_ns": dict(step.parts),
            }
        )
    return result


def stage_to_dict(stage: StageNode) -> dict[str, Any]:
    return {
        "stage_id": stage.stage_id,
        "task_count": stage.task_count,
        "partitioning": stage.partitioning,
        "kind": stage.kind,
        "fallback_reason": stage.fallback_reason,
        "strategy": stage.strategy,
        "duration_ns": stage.duration_ns,
        "scheduling_delay_ns": stage.scheduling_delay_ns,
        "time_stats": {name: asdict(stats) for name, stats in stage.time_stats.items()},
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
        "time_breakdown_ns": dict(task.time_breakdown_ns),
        "output_done_ns": task.output_done_ns,
        "status": task.status,
        "error": task.error,
        "ran_again_alone": task.ran_again_alone,
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
