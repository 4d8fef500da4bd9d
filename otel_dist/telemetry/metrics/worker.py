"""The workers' metrics: each task's duration, output, shuffle bytes, queue time and operators, and the worker's gauges."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.metrics import Meter, Observation

from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.metrics.instruments import guarded, observed_sums
from otel_dist.telemetry.metrics.names import (
    DURATION_BUCKETS,
    FINAL_MESSAGE_SIZE,
    MALFORMED_MESSAGES,
    MESSAGE_BUCKETS,
    OPERATOR_NAME,
    OPERATOR_OUTPUT_ROWS,
    OPERATOR_OUTPUT_SIZE,
    SHUFFLE_IO,
    SHUFFLE_LOCALITY,
    TASK_ACTIVE,
    TASK_DURATION,
    TASK_OUTPUT_ROWS,
    TASK_OUTPUT_SIZE,
    TASK_QUEUE_TIME,
    TASK_QUEUED,
    WORKER_MEMORY_LIMIT,
    WORKER_MEMORY_USAGE,
    WORKER_SPILLED,
    bounded_label,
    stage_kind_label,
)
from otel_dist.telemetry.task_spans import OperatorMetrics, ReadRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerObservers:
    """Callbacks a worker's gauges read when metrics are collected (never per batch)."""

    active_tasks: Callable[[], int]
    memory_used_bytes: Callable[[], int]
    memory_limit_bytes: Callable[[], int]
    spilled_bytes: Callable[[], int]
    queued_tasks: Callable[[], int] = lambda: 0


@dataclass(frozen=True)
class TaskOutcome:
    """What a worker knows when one of its tasks ends."""

    stage_kind: str
    status: str
    duration_s: float
    output_rows: int
    output_bytes: int
    worker_url: str
    operators: OperatorMetrics | None = None
    reads: Sequence[ReadRecord] = ()
    final_message_bytes: int | None = None
    malformed_messages: int = 0
    span_context: trace.SpanContext | None = None  # the task span's: histogram exemplars
    queued_s: float | None = None  # waited for a turn to execute; None: never got that far


class WorkerMetrics:
    """A worker's instruments."""

    def __init__(self, meter: Meter, enabled: bool, observers: WorkerObservers) -> None:
        self.enabled = enabled
        self.task_duration = meter.create_histogram(
            TASK_DURATION,
            "s",
            "Duration of tasks, by stage kind and final status",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.queue_time = meter.create_histogram(
            TASK_QUEUE_TIME,
            "s",
            "Time tasks waited for a turn to execute (the worker's admission control)",
            explicit_bucket_boundaries_advisory=(0.0, *DURATION_BUCKETS),
        )
        self.task_rows = observed_sums(
            meter, TASK_OUTPUT_ROWS, "{row}", "Rows tasks wrote to their output buckets"
        )
        self.task_bytes = observed_sums(
            meter, TASK_OUTPUT_SIZE, "By", "Arrow bytes tasks wrote to their output buckets"
        )
        self.operator_rows = observed_sums(
            meter,
            OPERATOR_OUTPUT_ROWS,
            "{row}",
            "Rows produced by DataFusion operators, by operator",
        )
        self.operator_bytes = observed_sums(
            meter,
            OPERATOR_OUTPUT_SIZE,
            "By",
            "Bytes produced by DataFusion operators, by operator",
        )
        self.shuffle = observed_sums(
            meter,
            SHUFFLE_IO,
            "By",
            "Arrow bytes tasks read from upstream tasks over Flight (local: same worker)",
        )
        self.final_message = meter.create_histogram(
            FINAL_MESSAGE_SIZE,
            "By",
            "Size of the final telemetry message at the end of a task's bucket streams",
            explicit_bucket_boundaries_advisory=MESSAGE_BUCKETS,
        )
        self.malformed = meter.create_counter(
            MALFORMED_MESSAGES, "{message}", "Telemetry messages that could not be decoded"
        )
        meter.create_observable_up_down_counter(
            TASK_ACTIVE,
            [guarded(lambda: [Observation(observers.active_tasks())])],
            "{task}",
            "Tasks running on this worker",
        )
        meter.create_observable_up_down_counter(
            TASK_QUEUED,
            [guarded(lambda: [Observation(observers.queued_tasks())])],
            "{task}",
            "Tasks on this worker not started or waiting for their first upstream row",
        )
        meter.create_observable_up_down_counter(
            WORKER_MEMORY_USAGE,
            [guarded(lambda: [Observation(observers.memory_used_bytes())])],
            "By",
            "Bucket data held in memory, within the worker's memory budget",
        )
        meter.create_observable_up_down_counter(
            WORKER_MEMORY_LIMIT,
            [guarded(lambda: [Observation(observers.memory_limit_bytes())])],
            "By",
            "The worker's memory budget for bucket data",
        )
        meter.create_observable_counter(
            WORKER_SPILLED,
            [guarded(lambda: [Observation(observers.spilled_bytes())])],
            "By",
            "Bucket data spilled to disk past the memory budget",
        )
        if enabled:
            self.malformed.add(0)

    def record_task(self, task: TaskOutcome) -> None:
        """Record a finished task; never raises."""
        if not self.enabled:
            return
        try:
            kind = (c.STAGE_KIND, stage_kind_label(task.stage_kind))
            status = task.status if task.status in c.TASK_STATUSES else "failed"
            # The task span as the measurement's context: a sampled one becomes the exemplar.
            context = (
                trace.set_span_in_context(trace.NonRecordingSpan(task.span_context))
                if task.span_context is not None
                else None
            )
            self.task_duration.record(
                max(0.0, task.duration_s),
                {kind[0]: kind[1], c.TASK_STATUS: status},
                context=context,
            )
            if task.queued_s is not None:
                self.queue_time.record(max(0.0, task.queued_s), context=context)
            self.task_rows.add(task.output_rows, (kind,))
            self.task_bytes.add(task.output_bytes, (kind,))
            if task.operators is not None:
                for operator in walk_operators(task.operators):
                    series = ((OPERATOR_NAME, bounded_label(operator.name)),)
                    value = operator.totals.get("output_rows")
                    if value is not None:
                        self.operator_rows.add(value, series)
                    value = operator.totals.get("output_bytes")
                    if value is not None:
                        self.operator_bytes.add(value, series)
            for read in task.reads:
                locality = "local" if read.endpoint == task.worker_url else "remote"
                self.shuffle.add(read.bytes, (kind, (SHUFFLE_LOCALITY, locality)))
            if task.final_message_bytes is not None:
                self.final_message.record(task.final_message_bytes, context=context)
            if task.malformed_messages:
                self.malformed.add(task.malformed_messages)
        except Exception:
            log.warning("task metrics not recorded", exc_info=True)


def walk_operators(operator: OperatorMetrics) -> Iterable[OperatorMetrics]:
    stack = [operator]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)
