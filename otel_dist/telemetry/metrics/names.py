"""The metrics' names, attribute names, histogram buckets and the bounded stage-kind label."""

from __future__ import annotations

import logging
from typing import Final

from otel_dist.telemetry import conventions as c

log = logging.getLogger(__name__)

QUERY_DURATION = "otel_dist.query.duration"


QUERY_ACTIVE = "otel_dist.query.active"


STAGE_TASK_SKEW = "otel_dist.stage.task_skew"


TASK_DURATION = "otel_dist.task.duration"


TASK_ACTIVE = "otel_dist.task.active"


TASK_QUEUED = "otel_dist.task.queued"


TASK_QUEUE_TIME = "otel_dist.task.queue_time"


TASK_OUTPUT_ROWS = "otel_dist.task.output.rows"


TASK_OUTPUT_SIZE = "otel_dist.task.output.size"


OPERATOR_OUTPUT_ROWS = "otel_dist.operator.output.rows"


OPERATOR_OUTPUT_SIZE = "otel_dist.operator.output.size"


SHUFFLE_IO = "otel_dist.shuffle.io"


WORKER_MEMORY_USAGE = "otel_dist.worker.memory.usage"


WORKER_MEMORY_LIMIT = "otel_dist.worker.memory.limit"


WORKER_SPILLED = "otel_dist.worker.spilled"


PROCESS_MEMORY_USAGE = "process.memory.usage"


FINAL_MESSAGE_SIZE = "otel_dist.telemetry.final_message.size"


FALLBACK_FETCHES = "otel_dist.telemetry.fallback_fetches"


MALFORMED_MESSAGES = "otel_dist.telemetry.malformed_messages"


TRUNCATED_MESSAGES = "otel_dist.telemetry.truncated_messages"


SPANS_SUBMITTED = "otel_dist.telemetry.spans.submitted"


SPANS_EXPORTED = "otel_dist.telemetry.spans.exported"


SPANS_DROPPED = "otel_dist.telemetry.spans.dropped"


QUERY_STATUS = "otel_dist.query.status"


OPERATOR_NAME = c.OPERATOR_NAME


SHUFFLE_LOCALITY = "otel_dist.shuffle.locality"


FETCH_RESULT = "otel_dist.telemetry.fetch.result"


EXPORT_RESULT = "otel_dist.telemetry.export.result"


QUERY_STATUSES = ("ok", "error", "cancelled")


UNKNOWN_KIND = "unknown"


DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


SKEW_BUCKETS = (1, 1.1, 1.25, 1.5, 2, 3, 5, 10, 20, 50)


MESSAGE_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1 << 20, 4 << 20, 16 << 20)


EXPORTERS = ("otlp", "prometheus", "console")


MAX_LABEL = 64


# The values of the otel_dist.stage.kind metric label: a stage's kind is its fused operations
# ("scan + join + partial aggregate"), an open set; the label is its first operation.
STAGE_KIND_LABELS: Final = frozenset(
    {
        "scan",
        "join",
        "partial aggregate",
        "final aggregate",
        "aggregate",
        "distinct keys",
        "sort",
        "top-k",
        "merge",
        "limit",
        "union",
        "exchange",
        "single-task",
        UNKNOWN_KIND,
        "other",
    }
)


def stage_kind_label(kind: str) -> str:
    """The bounded metric label of a stage kind (one of ``STAGE_KIND_LABELS``)."""
    first = kind.split(" + ", 1)[0].strip() if kind else UNKNOWN_KIND
    return first if first in STAGE_KIND_LABELS else "other"


def bounded_label(value: str) -> str:
    return value[:MAX_LABEL] if value else UNKNOWN_KIND
