"""otel_dist's span conventions: names and attribute keys that tests and dashboards rely on.

* the query span: one per query, on the coordinator; child of the caller's span if any. Named
  as the database conventions name a span, after ``db.query.summary`` (``SELECT lineitem
  orders``: the operation, then the tables in the order the SQL names them), or
  ``otel_dist.query`` before the query is planned. It is the span with ``db.query.text``
  (``is_query_span``).
* ``otel_dist.stage``: one per stage, on the coordinator; child of the query span, with a span
  link to each stage it reads (``otel_dist.stage.inputs`` lists them).
* ``otel_dist.task``: one per task, on the worker that ran it; child of its stage span.
* one span per DataFusion operator of a task, named after the operator (``AggregateExec``...),
  nested like the physical plan under the task span, with every metric as
  ``otel_dist.metrics.<name>`` (times in integer nanoseconds) and per-partition values as
  ``otel_dist.metrics.<name>.partitions``.
* ``otel_dist.read``: one per upstream bucket a task (or the coordinator) read; a CLIENT span
  of the Flight ``DoGet`` whose SERVER span, on the worker serving the bucket, is its child.
* ``arrow.flight.protocol.FlightService/DoAction``: the coordinator's CLIENT spans of
  ``submit_tasks`` and ``get_task_telemetry`` and the workers' SERVER spans of them
  (``otel_dist.telemetry.rpc``).

Every span lies inside its parent's time. Only the spans EXPLAIN is built from carry
``otel_dist.query.id``.

A task span carries where its wall time went as ``otel_dist.task.time.<part>`` (integer
nanoseconds adding up to the span's duration; the parts are listed in
``otel_dist.worker.timing``) and ``otel_dist.task.time_to_output_done``, the nanoseconds from
its start until its output was complete (its span ends later, after its telemetry).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

SPAN_QUERY = "otel_dist.query"
SPAN_STAGE = "otel_dist.stage"
SPAN_TASK = "otel_dist.task"
SPAN_READ = "otel_dist.read"

QUERY_ID = "otel_dist.query.id"
DB_QUERY_TEXT = "db.query.text"
DB_OPERATION_NAME = "db.operation.name"
DB_SYSTEM_NAME = "db.system.name"
DB_SYSTEM = "other_sql"  # the registry's value for a SQL engine it does not list
DB_QUERY_SUMMARY = "db.query.summary"
DB_COLLECTION_NAME = "db.collection.name"
DB_RETURNED_ROWS = "db.response.returned_rows"
ERROR_TYPE = "error.type"
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
TASK_UPSTREAM_FAILED = "otel_dist.task.upstream_failed"
# Nanoseconds the task waited for its turn to execute (the worker's admission control).
TASK_QUEUED_TIME = "otel_dist.task.queued_time"
# True when the task ran out of its share of execution memory (or its plan stalled under that
# limit) before sending a row and ran again alone on its worker, with all of its memory.
TASK_RAN_AGAIN_ALONE = "otel_dist.task.ran_again_alone"
WORKER_URL = "otel_dist.worker.url"

OPERATOR_NAME = "otel_dist.operator.name"
OPERATOR_DISPLAY = "otel_dist.operator.display"
OPERATOR_PATH = "otel_dist.operator.path"
METRIC_PREFIX = "otel_dist.metrics."
PARTITIONS_SUFFIX = ".partitions"
# DataFusion's memory gauges end so (a hash join's ``build_mem_used``); their values are bytes.
MEMORY_GAUGE_SUFFIX = "mem_used"

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


def is_query_span(name: str, attributes: Mapping[str, object]) -> bool:
    """Whether a span is a query span: the one that carries ``db.query.text`` (its name
    follows the query)."""
    return name == SPAN_QUERY or (DB_QUERY_TEXT in attributes and QUERY_ID in attributes)


def query_summary(operation: str, tables: Iterable[str], sql: str) -> str:
    """``db.query.summary``: the operation and the tables it reads, in the order the SQL
    (without its comments) first names them; low cardinality: no literals, no columns."""
    text = _COMMENTS.sub(" ", sql).lower()

    def first_mention(table: str) -> tuple[int, str]:
        found = re.search(rf"\b{re.escape(table.lower())}\b", text)
        return (found.start() if found else len(text)), table

    names = sorted(set(tables), key=first_mention)
    return " ".join([operation or "SELECT", *names]).strip()


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
