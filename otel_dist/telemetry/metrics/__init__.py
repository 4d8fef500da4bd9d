"""Metrics of the coordinator and the workers, through the OpenTelemetry metrics SDK.

Set-up, read once when a process starts from the same environment mapping as its spans
(``start_process_telemetry``; nothing happens at import time):

* Metrics are off whenever telemetry is off (``OTEL_DIST_TELEMETRY=off``, ``OTEL_SDK_DISABLED``).
* ``OTEL_METRICS_EXPORTER``: ``otlp``, ``prometheus``, ``console``, a comma-separated list of
  them (``otlp,prometheus``) or ``none``. Unset, it is ``otlp`` when an OTLP endpoint is
  configured and ``none`` otherwise (as for traces). A metrics port given on the command line
  (``--metrics-port``, ``LocalCluster(metrics_ports=...)``) adds ``prometheus``.
* OTLP: ``OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT``, ``_PROTOCOL``, ``_HEADERS``, ``_TIMEOUT``;
  ``OTEL_METRIC_EXPORT_INTERVAL`` and ``OTEL_METRIC_EXPORT_TIMEOUT`` (milliseconds).
* Prometheus: ``/metrics`` on ``OTEL_EXPORTER_PROMETHEUS_HOST`` (default: the process's own
  ``--host``) and the command line's port, else ``OTEL_EXPORTER_PROMETHEUS_PORT`` (9464).
* ``OTEL_METRICS_EXEMPLAR_FILTER``: ``trace_based`` (default), ``always_on``, ``always_off``.

Exporters never raise into the caller: an unreachable collector is retried and logged by the
SDK, a port that cannot be bound is logged and leaves that process without ``/metrics``.

Metrics are recorded when a query or a task ends, never per batch. Attributes are bounded:
status, stage kind, operator name, locality; never query ids. Names (OpenTelemetry, then as
Prometheus shows them, see ``prometheus.py``):

* coordinator: ``otel_dist.query.duration`` (s, histogram by ``otel_dist.query.status``, with
  exemplars carrying the query's trace id) -> ``otel_dist_query_duration_seconds``;
  ``otel_dist.query.active`` -> ``otel_dist_query_active``; ``otel_dist.stage.task_skew``
  (max over median task duration of a stage of two tasks or more, by stage kind) ->
  ``otel_dist_stage_task_skew``; ``otel_dist.telemetry.fallback_fetches`` (by
  ``otel_dist.telemetry.fetch.result``: fetched, lost), ``otel_dist.telemetry.truncated_messages``.
* workers: ``otel_dist.task.duration`` (s, by stage kind and task status) ->
  ``otel_dist_task_duration_seconds``; ``otel_dist.task.active`` and ``otel_dist.task.queued``
  (tasks running, and not started or waiting for their first upstream row, as ``otel-dist top``
  shows them); ``otel_dist.task.queue_time`` (s, histogram: how long tasks waited for a turn
  to execute, the worker's admission control) -> ``otel_dist_task_queue_time_seconds``;
  ``otel_dist.task.output.rows``
  and ``.size`` (by stage kind); ``otel_dist.operator.output.rows`` and ``.size`` (by
  ``otel_dist.operator.name``) -> ``otel_dist_operator_output_rows_total``,
  ``otel_dist_operator_output_size_bytes_total``; ``otel_dist.shuffle.io`` (bytes a task read
  from upstream tasks, by stage kind and ``otel_dist.shuffle.locality``: local, remote) ->
  ``otel_dist_shuffle_io_bytes_total``; ``otel_dist.worker.memory.usage`` / ``.limit`` (bucket
  memory budget), ``otel_dist.worker.spilled``; ``otel_dist.telemetry.final_message.size``.
* both: ``process.memory.usage`` (resident set size) -> ``process_memory_usage_bytes``;
  ``otel_dist.telemetry.malformed_messages``; ``otel_dist.telemetry.spans.submitted``,
  ``.exported`` (by ``otel_dist.telemetry.export.result``: success, failure) and ``.dropped``
  (see ``span_export.py`` for what is measured).

Workers learn a task's stage kind from W3C baggage (``otel_dist.stage.kind``) that the
coordinator adds next to the trace context of each stage.

One module per job: ``names`` (names and labels), ``config`` (settings and exporters),
``process`` (a process's spans and metrics started together), ``provider`` (the meter provider
and what every process records), ``coordinator`` and ``worker`` (the two recorders),
``baggage`` (stage kind next to the trace context), ``instruments`` (helpers).
"""

from otel_dist.telemetry.metrics.baggage import add_stage_baggage, stage_kind_of
from otel_dist.telemetry.metrics.config import MetricsConfig
from otel_dist.telemetry.metrics.coordinator import CoordinatorMetrics, QueryOutcome, stage_skews
from otel_dist.telemetry.metrics.names import (
    DURATION_BUCKETS,
    EXPORT_RESULT,
    EXPORTERS,
    FALLBACK_FETCHES,
    FETCH_RESULT,
    FINAL_MESSAGE_SIZE,
    MALFORMED_MESSAGES,
    MAX_LABEL,
    MESSAGE_BUCKETS,
    OPERATOR_NAME,
    OPERATOR_OUTPUT_ROWS,
    OPERATOR_OUTPUT_SIZE,
    PROCESS_MEMORY_USAGE,
    QUERY_ACTIVE,
    QUERY_DURATION,
    QUERY_STATUS,
    QUERY_STATUSES,
    SHUFFLE_IO,
    SHUFFLE_LOCALITY,
    SKEW_BUCKETS,
    SPANS_DROPPED,
    SPANS_EXPORTED,
    SPANS_SUBMITTED,
    STAGE_KIND_LABELS,
    STAGE_TASK_SKEW,
    TASK_ACTIVE,
    TASK_DURATION,
    TASK_OUTPUT_ROWS,
    TASK_OUTPUT_SIZE,
    TASK_QUEUE_TIME,
    TASK_QUEUED,
    TRUNCATED_MESSAGES,
    UNKNOWN_KIND,
    WORKER_MEMORY_LIMIT,
    WORKER_MEMORY_USAGE,
    WORKER_SPILLED,
    stage_kind_label,
)
from otel_dist.telemetry.metrics.process import start_process_telemetry
from otel_dist.telemetry.metrics.provider import Metrics
from otel_dist.telemetry.metrics.worker import TaskOutcome, WorkerMetrics, WorkerObservers

__all__ = [
    "DURATION_BUCKETS",
    "EXPORTERS",
    "EXPORT_RESULT",
    "FALLBACK_FETCHES",
    "FETCH_RESULT",
    "FINAL_MESSAGE_SIZE",
    "MALFORMED_MESSAGES",
    "MAX_LABEL",
    "MESSAGE_BUCKETS",
    "OPERATOR_NAME",
    "OPERATOR_OUTPUT_ROWS",
    "OPERATOR_OUTPUT_SIZE",
    "PROCESS_MEMORY_USAGE",
    "QUERY_ACTIVE",
    "QUERY_DURATION",
    "QUERY_STATUS",
    "QUERY_STATUSES",
    "SHUFFLE_IO",
    "SHUFFLE_LOCALITY",
    "SKEW_BUCKETS",
    "SPANS_DROPPED",
    "SPANS_EXPORTED",
    "SPANS_SUBMITTED",
    "STAGE_KIND_LABELS",
    "STAGE_TASK_SKEW",
    "TASK_ACTIVE",
    "TASK_DURATION",
    "TASK_OUTPUT_ROWS",
    "TASK_OUTPUT_SIZE",
    "TASK_QUEUED",
    "TASK_QUEUE_TIME",
    "TRUNCATED_MESSAGES",
    "UNKNOWN_KIND",
    "WORKER_MEMORY_LIMIT",
    "WORKER_MEMORY_USAGE",
    "WORKER_SPILLED",
    "CoordinatorMetrics",
    "Metrics",
    "MetricsConfig",
    "QueryOutcome",
    "TaskOutcome",
    "WorkerMetrics",
    "WorkerObservers",
    "add_stage_baggage",
    "stage_kind_label",
    "stage_kind_of",
    "stage_skews",
    "start_process_telemetry",
]
