"""The distributed EXPLAIN ANALYZE tree: a query, its stages nested the way data flows, each
stage's operators aggregated over its tasks, and every task with its own operator tree.

Durations and times are integer nanoseconds; ``None`` means the value is unknown (its span
was never received). Task statuses are ``finished``, ``failed``, ``cancelled`` or ``unknown``
(the stage planned the task but no task span arrived).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STATUS_UNKNOWN = "unknown"


@dataclass(frozen=True)
class MetricStats:
    """One metric of one operator across the tasks of a stage that reported it."""

    min: int
    median: int
    max: int
    max_task: int


@dataclass
class OperatorNode:
    """One operator of the physical plan, aligned across tasks by its ``path``.

    In a stage's aggregated tree ``metrics`` are summed over ``tasks`` (the tasks that ran
    this operator) and ``metric_stats`` give the per-task spread; in a task's own tree
    ``metrics`` are that task's, ``metric_stats`` and ``tasks`` are empty.
    """

    name: str
    display: str
    path: str
    metrics: dict[str, int] = field(default_factory=dict)
    metric_stats: dict[str, MetricStats] = field(default_factory=dict)
    children: list[OperatorNode] = field(default_factory=list)
    tasks: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReadNode:
    """One upstream bucket read by a task (or by the coordinator for the root stage)."""

    endpoint: str
    stage_id: int
    task_index: int
    bucket: int
    rows: int
    batches: int
    bytes: int
    duration_ns: int
    time_to_first_batch_ns: int | None
    blocked_ns: int
    started_ns: int | None = None


@dataclass
class TaskNode:
    """One task of a stage. ``metrics`` are the task's totals: ``output_rows`` and
    ``output_bytes`` from the task span, ``elapsed_compute`` summed over its operators, and
    ``read_rows``/``read_bytes``/``read_blocked_time`` when it read upstream buckets."""

    task_index: int
    worker: str | None
    partitions: tuple[int, ...] | None
    duration_ns: int | None
    status: str
    error: str | None
    metrics: dict[str, int] = field(default_factory=dict)
    operators: list[OperatorNode] = field(default_factory=list)
    reads: list[ReadNode] = field(default_factory=list)
    started_ns: int | None = None
    # where the task's wall time went: part -> ns, adding up to duration_ns ({} when unknown;
    # the parts are described in otel_dist.worker.timing)
    time_breakdown_ns: dict[str, int] = field(default_factory=dict)
    output_done_ns: int | None = None  # from the task's start until its output was complete
    # out of its share of execution memory before sending a row, it ran again alone on its
    # worker with all of it (the duration and time parts cover both attempts)
    ran_again_alone: bool = False

    @property
    def rows(self) -> int | None:
        return self.metrics.get("output_rows")

    @property
    def bytes(self) -> int | None:
        return self.metrics.get("output_bytes")


@dataclass(frozen=True)
class SkewInfo:
    """The slowest task of a stage, when it took more than the threshold times the median."""

    task_index: int
    worker: str | None
    ratio: float
    duration_ns: int
    median_ns: int


@dataclass
class StageNode:
    """One stage: its tasks, their operators aggregated, and the stages it reads (nested)."""

    stage_id: int
    task_count: int
    partitioning: str | None
    kind: str | None
    fallback_reason: str | None
    duration_ns: int | None
    sql: str | None = None
    inputs: tuple[int, ...] = ()
    operators: list[OperatorNode] = field(default_factory=list)
    tasks: list[TaskNode] = field(default_factory=list)
    children: list[StageNode] = field(default_factory=list)
    skew: SkewInfo | None = None
    strategy: str | None = None  # how the planner partitioned the stage and why
    # from the stage's scheduling (its span's start) to its first task's start
    scheduling_delay_ns: int | None = None
    # each time part across the stage's tasks (min / median / max, the task of the max)
    time_stats: dict[str, MetricStats] = field(default_factory=dict)


@dataclass(frozen=True)
class CriticalStep:
    """One task on the critical path: the chain of tasks, from the root stage's task down,
    each the upstream task whose data the one above waited on last.

    ``ns`` is the task's own stretch of the path (from when the data it waited on last arrived,
    or its start, until the task above stopped waiting for it); the stretches of a path follow
    one another, so they add up to the path's length. ``parts`` split ``ns`` by the task's time
    parts; ``waited_on`` names the next step.
    """

    stage_id: int
    task_index: int
    ns: int
    start_ns: int
    end_ns: int
    duration_ns: int
    worker: str | None
    operator: str | None  # the operator that spent the most time in the task
    parts: dict[str, int]
    wait_ns: int  # of the task's duration, waiting for upstream data
    waited_on: tuple[int, int] | None


@dataclass(frozen=True)
class CriticalPath:
    """The critical path and the coordinator's time around it, adding up to the query's."""

    steps: list[CriticalStep]
    before_ns: int  # query start to the first step: planning and scheduling, on the coordinator
    after_ns: int  # last step to the query's end: reading the result, collecting telemetry
    total_ns: int


@dataclass
class ExplainTree:
    """A query's distributed EXPLAIN ANALYZE. ``stages`` are the root stages (normally one);
    ``reads`` are the coordinator's reads of the root stage's output."""

    query_id: str
    trace_id: str
    sql: str
    duration_ns: int | None
    status: str
    error: str | None
    stages: list[StageNode] = field(default_factory=list)
    strategy: str | None = None
    output_rows: int | None = None
    reads: list[ReadNode] = field(default_factory=list)
    critical_path: CriticalPath | None = None
    started_ns: int | None = None

    def all_stages(self) -> list[StageNode]:
        """Every stage, depth first from the roots, each once."""
        seen: dict[int, StageNode] = {}
        pending = list(reversed(self.stages))
        while pending:
            stage = pending.pop()
            if stage.stage_id in seen:
                continue
            seen[stage.stage_id] = stage
            pending.extend(reversed(stage.children))
        return list(seen.values())
