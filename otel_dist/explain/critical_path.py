"""The critical path of a query: the chain of tasks that determined its latency.

From the root stage's task the coordinator finished reading last, step down, at each task, to
the upstream task whose data it finished reading last (the read that ended last among the
task's reads): that one held the task up the longest. Each task's stretch of the path runs
from when that last upstream read ended (or the task's start, if it read nothing or had read
everything before it started) until the task above stopped waiting for it (for the root task:
until the coordinator's read of it ended). The stretches follow one another without overlap,
so with the coordinator's time before the first task (planning, scheduling) and after the
root task (reading the result, collecting telemetry) they add up to the query's duration.
"""

from __future__ import annotations

from otel_dist.explain.model import (
    CriticalPath,
    CriticalStep,
    ExplainTree,
    OperatorNode,
    ReadNode,
    TaskNode,
)

WAIT_PREFIX = "wait_stage_"
# The time an operator spent itself; a scan's compute time leaves out its reading and decoding
# (time_elapsed_processing), which is most of it.
_SELF_TIME_METRICS = ("elapsed_compute", "time_elapsed_processing")


def critical_path(tree: ExplainTree) -> CriticalPath | None:
    """The tree's critical path, or ``None`` when no task's timing is known."""
    tasks: dict[tuple[int, int], TaskNode] = {
        (stage.stage_id, task.task_index): task
        for stage in tree.all_stages()
        for task in stage.tasks
        if task.started_ns is not None and task.duration_ns is not None
    }
    if not tasks:
        return None
    root_ids = {stage.stage_id for stage in tree.stages}
    reads = [r for r in tree.reads if (r.stage_id, r.task_index) in tasks]
    current: tuple[int, int] | None
    if reads:
        last = max(reads, key=_read_end)
        current, bound = (last.stage_id, last.task_index), _read_end(last)
    else:
        roots = [key for key in tasks if key[0] in root_ids] or list(tasks)
        current = max(roots, key=lambda key: _task_end(tasks[key]))
        bound = _task_end(tasks[current])
    steps: list[CriticalStep] = []
    seen: set[tuple[int, int]] = set()
    while current is not None and current not in seen:
        seen.add(current)
        task = tasks[current]
        start = task.started_ns or 0
        bound = max(bound, start)
        waited_on, available = _waited_on_last(task, tasks)
        stretch_start = start if available is None else max(start, min(available, bound))
        steps.append(
            CriticalStep(
                stage_id=current[0],
                task_index=current[1],
                ns=bound - stretch_start,
                start_ns=stretch_start,
                end_ns=bound,
                duration_ns=task.duration_ns or 0,
                worker=task.worker,
                operator=busiest_operator(task.operators),
                parts=dict(task.time_breakdown_ns),
                wait_ns=sum(
                    ns
                    for name, ns in task.time_breakdown_ns.items()
                    if name.startswith(WAIT_PREFIX)
                ),
                waited_on=waited_on,
            )
        )
        current, bound = waited_on, stretch_start
    query_start = tree.started_ns if tree.started_ns is not None else steps[-1].start_ns
    total = tree.duration_ns if tree.duration_ns is not None else steps[0].end_ns - query_start
    before = max(0, steps[-1].start_ns - query_start)
    after = max(0, total - before - sum(step.ns for step in steps))
    return CriticalPath(steps=steps, before_ns=before, after_ns=after, total_ns=total)


def _waited_on_last(
    task: TaskNode, tasks: dict[tuple[int, int], TaskNode]
) -> tuple[tuple[int, int] | None, int | None]:
    """The upstream task whose data became available to ``task`` last, and when.

    A task reads its inputs one after the other, so the read that ended last may be of an
    upstream task that had finished long before: what held the task up is the upstream whose
    output was complete last (its data arrived no earlier than that, nor after the read ended).
    """
    best: tuple[int, int] | None = None
    best_at: int | None = None
    for read in task.reads:
        upstream = tasks.get((read.stage_id, read.task_index))
        if upstream is None:
            continue
        at = _read_end(read)
        if upstream.output_done_ns is not None and upstream.started_ns is not None:
            at = min(at, upstream.started_ns + upstream.output_done_ns)
        if best_at is None or at > best_at:
            best, best_at = (read.stage_id, read.task_index), at
    if best_at is None or best_at <= (task.started_ns or 0):
        return None, None
    return best, best_at


def busiest_operator(operators: list[OperatorNode]) -> str | None:
    """The name of the operator that spent the most time itself, if any spent any."""
    best: tuple[int, str] | None = None
    pending = list(operators)
    while pending:
        operator = pending.pop()
        pending.extend(operator.children)
        spent = max((operator.metrics.get(name, 0) for name in _SELF_TIME_METRICS), default=0)
        if spent > 0 and (best is None or spent > best[0]):
            best = (spent, operator.name)
    return None if best is None else best[1]


def _read_end(read: ReadNode) -> int:
    return (read.started_ns or 0) + read.duration_ns


def _task_end(task: TaskNode) -> int:
    return (task.started_ns or 0) + (task.duration_ns or 0)
