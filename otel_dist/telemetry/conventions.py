"""otel_dist's span conventions: names and attribute keys that tests and dashboards rely on.

* ``otel_dist.query``: one per query, on the coordinator; child of the caller's span if any.
* ``otel_dist.stage``: one per stage, on the coordinator; child of the query span for the root
  stage, else of the stage that consumes it (stages nest the way data flows).
* ``otel_dist.task``: one per task, on the worker that ran it; child of its stage span.
* one span per DataFusion operator of a task, named after the operator (``AggregateExec``...),
  nested like the physical plan under the task span, with every metric as
  ``otel_dist.metrics.<name>`` (times in integer nanoseconds) and per-partition values as
  ``otel_dist.metrics.<name>.partitions``.
* ``otel_dist.read``: one per upstream bucket a task (or the coordinator) read.

A task span carries where its wall time went as ``otel_dist.task.time.<part>`` (integer
nanoseconds adding up to the span's duration; the parts are listed in
``otel_dist.worker.timing``) and ``otel_dist.task.time_to_output_done``, the nanoseconds from
its start until its output was complete (its span ends later, after its telemetry).
"""

from __future__ import annotations

SPAN_QUERY = "otel_dist.query"
SPAN_STAGE = "otel_dist.stage"
SPAN_TASK = "otel_dist.task"
SPAN_READ = "otel_dist.read"

QUERY_ID = "otel_dist.query.id"
DB_QUERY_TEXT = "db.query.text"
DB_OPERATION_NAME = "db.operation.name"
QUERY_STRATEGY = "otel_dist.query.strategy"
QUERY_ROWS = "otel_dist.query.output_rows"

STAGE_ID = "otel_dist.stage.id"
STAGE_TASK_COUNT = "otel_dist.stage.task_count"
STAGE_PARTITIONING = "otel_dist.stage.partitioning"
STAGE_KIND = "otel_dist.stage.kind"
STAGE_FALLBACK = "otel_dist.stage.fallback_reason"
STAGE_STRATEGY = "otel_dist.stage.strategy"  # how the stage is partitioned and why
STAGE_INPUTS = "otel_dist.stage.inputs"
STAGE_SQL = "otel_dist.stage.sql"
# Stage state changes are span events on the stage span, named after the state entered
# (scheduled, running, then finished or failed), each with this attribute, as Trino does.
STAGE_STATE = "otel_dist.stage.state"

TASK_INDEX = "otel_dist.task.index"
TASK_PARTITIONS = "otel_dist.task.partitions"
TASK_STATUS = "otel_dist.task.status"
TASK_OUTPUT_ROWS = "otel_dist.task.output_rows"
TASK_OUTPUT_BYTES = "otel_dist.task.output_bytes"
TASK_ERROR = "otel_dist.task.error"
TASK_TIME_PREFIX = "otel_dist.task.time."
TASK_OUTPUT_DONE = "otel_dist.task.time_to_output_done"
WORKER_URL = "otel_dist.worker.url"

OPERATOR_NAME = "otel_dist.operator.name"
OPERATOR_DISPLAY = "otel_dist.operator.display"
OPERATOR_PATH = "otel_dist.operator.path"
METRIC_PREFIX = "otel_dist.metrics."
PARTITIONS_SUFFIX = ".partitions"

READ_ENDPOINT = "otel_dist.read.endpoint"
READ_STAGE_ID = "otel_dist.read.stage.id"
READ_TASK_INDEX = "otel_dist.read.task.index"
READ_BUCKET = "otel_dist.read.bucket"
READ_ROWS = "otel_dist.read.rows"
READ_BATCHES = "otel_dist.read.batches"
READ_BYTES = "otel_dist.read.bytes"
READ_FIRST_BATCH_NS = "otel_dist.read.time_to_first_batch"
READ_BLOCKED_NS = "otel_dist.read.blocked_time"
READ_TELEMETRY_BYTES = "otel_dist.read.telemetry_bytes"

TASK_STATUSES = ("finished", "failed", "cancelled")
