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
"""

from __future__ import annotations

import logging
import os
import resource
import statistics
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeter, Observation
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    MeterProvider,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.otlp import SpanRecord
from otel_dist.telemetry.setup import (
    Telemetry,
    TelemetryConfig,
    bounded,
    otel_number,
    parse_pairs,
    quiet_export_errors,
    shutdown_timeout_s,
)
from otel_dist.telemetry.span_export import SpanExportStats, instrumented_telemetry
from otel_dist.telemetry.task_spans import OperatorMetrics, ReadRecord

log = logging.getLogger(__name__)

# ---- names -------------------------------------------------------------------------------

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

_EXPORTERS = ("otlp", "prometheus", "console")
_MAX_LABEL = 64


# ---- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsConfig:
    """What one process does with its metrics."""

    enabled: bool = False
    exporters: tuple[str, ...] = ()
    protocol: str = "grpc"
    endpoint: str | None = None
    headers: str | None = None
    timeout_s: float = 10.0
    export_interval_ms: int = 60_000
    export_timeout_ms: int = 30_000
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = 9464
    exemplar_filter: str = "trace_based"
    prometheus_token: str | None = field(default=None, repr=False)  # /metrics needs it if set

    @staticmethod
    def from_env(
        env: Mapping[str, str] | None = None,
        *,
        prometheus_port: int | None = None,
        prometheus_host: str | None = None,
        prometheus_token: str | None = None,
    ) -> MetricsConfig:
        """Read the ``OTEL_*`` variables; an explicit ``prometheus_port`` adds ``prometheus``;
        ``prometheus_token`` is the bearer token ``/metrics`` requires (None: none)."""
        env = os.environ if env is None else env

        def get(*names: str, default: str = "") -> str:
            return next((env[n] for n in names if env.get(n)), default)

        if not TelemetryConfig.from_env("otel-dist", env).enabled:
            return MetricsConfig()
        endpoint = get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT") or None
        protocol = get(
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL", default="grpc"
        ).lower()
        if (
            endpoint
            and protocol.startswith("http")
            and not get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        ):
            endpoint = endpoint.rstrip("/") + "/v1/metrics"
        raw = get("OTEL_METRICS_EXPORTER", default="otlp" if endpoint else "none")
        exporters: list[str] = []
        for name in (part.strip().lower() for part in raw.split(",")):
            if name in _EXPORTERS and name not in exporters:
                exporters.append(name)
            elif name and name != "none":
                log.warning("OTEL_METRICS_EXPORTER: unknown exporter %r ignored", name)
        if prometheus_port is not None and "prometheus" not in exporters:
            exporters.append("prometheus")
        port = prometheus_port
        if port is None:
            port = int(otel_number(get("OTEL_EXPORTER_PROMETHEUS_PORT"), 9464))
        return MetricsConfig(
            enabled=bool(exporters),
            exporters=tuple(exporters),
            protocol=protocol,
            endpoint=endpoint,
            headers=get("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") or None,
            timeout_s=otel_number(
                get("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), 10_000
            )
            / 1000,
            export_interval_ms=int(otel_number(get("OTEL_METRIC_EXPORT_INTERVAL"), 60_000)),
            export_timeout_ms=int(otel_number(get("OTEL_METRIC_EXPORT_TIMEOUT"), 30_000)),
            prometheus_host=get("OTEL_EXPORTER_PROMETHEUS_HOST") or prometheus_host or "127.0.0.1",
            prometheus_port=port,
            exemplar_filter=get("OTEL_METRICS_EXEMPLAR_FILTER", default="trace_based").lower(),
            prometheus_token=prometheus_token,
        )


def start_process_telemetry(
    service_name: str,
    env: Mapping[str, str] | None = None,
    *,
    prometheus_port: int | None = None,
    prometheus_host: str | None = None,
    prometheus_token: str | None = None,
) -> tuple[Telemetry, Metrics]:
    """A process's spans and metrics from one environment mapping (default: ``os.environ``).
    ``prometheus_token``: the bearer token a ``/metrics`` endpoint, if served, requires.

    Spans are set up as ``Telemetry(TelemetryConfig.from_env(service_name, env))`` does, with
    the span exporter counted for the telemetry-health metrics; the metrics share the spans'
    resource (``service.name``, ``service.instance.id``...).
    """
    telemetry, stats = instrumented_telemetry(TelemetryConfig.from_env(service_name, env))
    config = MetricsConfig.from_env(
        env,
        prometheus_port=prometheus_port,
        prometheus_host=prometheus_host,
        prometheus_token=prometheus_token,
    )
    resource = telemetry.provider.resource if telemetry.provider is not None else None
    return telemetry, Metrics(config, resource, stats)


# ---- the meter provider ------------------------------------------------------------------


class Metrics:
    """A process's meter provider with its readers, or a no-op meter when metrics are off."""

    def __init__(
        self,
        config: MetricsConfig,
        resource: Resource | None = None,
        span_stats: SpanExportStats | None = None,
    ) -> None:
        self.config = config
        self.span_stats = span_stats  # the process's span export counters, if spans export
        self.provider: MeterProvider | None = None
        self.prometheus_url: str | None = None
        self.meter: Meter = NoOpMeter("otel_dist")
        if not config.enabled:
            return
        readers: list[MetricReader] = []
        for name in config.exporters:
            if name == "prometheus":
                continue
            quiet_export_errors()
            try:
                readers.append(
                    PeriodicExportingMetricReader(
                        _exporter(name, config),
                        export_interval_millis=config.export_interval_ms,
                        export_timeout_millis=config.export_timeout_ms,
                    )
                )
            except Exception:
                log.warning("metrics exporter %s could not be created", name, exc_info=True)
        prometheus = None
        if "prometheus" in config.exporters:
            from otel_dist.telemetry.prometheus import PrometheusReader

            prometheus = PrometheusReader()
            readers.append(prometheus)
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=resource or Resource.create({"service.name": "otel-dist"}),
            exemplar_filter=_exemplar_filter(config.exemplar_filter),
            shutdown_on_exit=False,
        )
        self.meter = self.provider.get_meter("otel_dist")
        if prometheus is not None:
            try:
                port = prometheus.serve(
                    config.prometheus_host, config.prometheus_port, config.prometheus_token
                )
                self.prometheus_url = f"http://{_url_host(config.prometheus_host)}:{port}/metrics"
            except OSError as error:
                log.warning(
                    "Prometheus /metrics not served on %s:%s: %s",
                    config.prometheus_host,
                    config.prometheus_port,
                    error,
                )
        self._process_instruments(span_stats)

    @staticmethod
    def off() -> Metrics:
        return Metrics(MetricsConfig())

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def coordinator(self, active_queries: Callable[[], int]) -> CoordinatorMetrics:
        return CoordinatorMetrics(self.meter, self.enabled, active_queries)

    def worker(self, observers: WorkerObservers) -> WorkerMetrics:
        return WorkerMetrics(self.meter, self.enabled, observers)

    def flush(self, timeout_ms: int = 5000) -> bool:
        if self.provider is None:
            return True
        try:
            return self.provider.force_flush(timeout_ms)
        except Exception:
            log.warning("metrics flush failed", exc_info=True)
            return False

    def shutdown(self, timeout_s: float | None = None) -> None:
        provider, self.provider = self.provider, None
        if provider is not None:
            if timeout_s is None:  # short when the collector is down (telemetry/setup.py)
                otlp = "otlp" in self.config.exporters
                endpoint = (self.config.endpoint or "http://localhost:4317") if otlp else None
                timeout_s = shutdown_timeout_s(endpoint)
            bounded(provider.shutdown, timeout_s, "metrics shutdown")

    def _process_instruments(self, span_stats: SpanExportStats | None) -> None:
        self.meter.create_observable_up_down_counter(
            PROCESS_MEMORY_USAGE,
            [_guarded(lambda: [Observation(_resident_bytes())])],
            "By",
            "Resident set size of the process",
        )
        if span_stats is None:
            return

        def stat(name: str, attributes: Mapping[str, str] | None = None) -> Callable[[], list]:
            return lambda: [Observation(span_stats.snapshot()[name], attributes)]

        self.meter.create_observable_counter(
            SPANS_SUBMITTED,
            [_guarded(stat("submitted"))],
            "{span}",
            "Sampled spans handed to the batch span processor for export",
        )
        self.meter.create_observable_counter(
            SPANS_EXPORTED,
            [
                _guarded(stat("exported", {EXPORT_RESULT: "success"})),
                _guarded(stat("failed", {EXPORT_RESULT: "failure"})),
            ],
            "{span}",
            "Spans the exporter sent (success) or failed to send (failure)",
        )
        self.meter.create_observable_counter(
            SPANS_DROPPED,
            [_guarded(stat("dropped"))],
            "{span}",
            "Spans dropped because the batch span processor's queue was full",
        )


# ---- coordinator -------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryOutcome:
    """What the coordinator knows when a query ends."""

    status: str
    duration_s: float
    span: trace.Span | None
    stage_kinds: Mapping[int, str]
    spans: Sequence[SpanRecord] = ()
    fetched_tasks: int = 0
    lost_tasks: int = 0
    malformed_messages: int = 0
    truncated_messages: int = 0


class CoordinatorMetrics:
    """The coordinator's instruments."""

    def __init__(self, meter: Meter, enabled: bool, active_queries: Callable[[], int]) -> None:
        self.enabled = enabled
        self.query_duration = meter.create_histogram(
            QUERY_DURATION,
            "s",
            "Duration of queries, from submission to the end of their telemetry collection",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        meter.create_observable_up_down_counter(
            QUERY_ACTIVE,
            [_guarded(lambda: [Observation(active_queries())])],
            "{query}",
            "Queries running on this coordinator",
        )
        self.task_skew = meter.create_histogram(
            STAGE_TASK_SKEW,
            "1",
            "Longest over median task duration of a stage with two tasks or more",
            explicit_bucket_boundaries_advisory=SKEW_BUCKETS,
        )
        self.fallback_fetches = meter.create_counter(
            FALLBACK_FETCHES,
            "{task}",
            "Tasks whose telemetry was fetched after the query (fetched) or never arrived (lost)",
        )
        self.malformed = meter.create_counter(
            MALFORMED_MESSAGES, "{message}", "Telemetry messages that could not be decoded"
        )
        self.truncated = meter.create_counter(
            TRUNCATED_MESSAGES,
            "{message}",
            "Final telemetry messages that left tasks out to stay under the size limit",
        )
        if enabled:  # known series start at zero, so rates and ratios exist before an event
            for result in ("fetched", "lost"):
                self.fallback_fetches.add(0, {FETCH_RESULT: result})
            self.malformed.add(0)
            self.truncated.add(0)

    def record_query(self, outcome: QueryOutcome) -> None:
        """Record a finished query; never raises."""
        if not self.enabled:
            return
        try:
            context = trace.set_span_in_context(outcome.span) if outcome.span else None
            status = outcome.status if outcome.status in QUERY_STATUSES else "error"
            self.query_duration.record(
                max(0.0, outcome.duration_s), {QUERY_STATUS: status}, context=context
            )
            for kind, skew in stage_skews(outcome.spans, outcome.stage_kinds):
                self.task_skew.record(skew, {c.STAGE_KIND: kind})
            self.fallback_fetches.add(outcome.fetched_tasks, {FETCH_RESULT: "fetched"})
            self.fallback_fetches.add(outcome.lost_tasks, {FETCH_RESULT: "lost"})
            self.malformed.add(outcome.malformed_messages)
            self.truncated.add(outcome.truncated_messages)
        except Exception:
            log.warning("query metrics not recorded", exc_info=True)


def stage_skews(
    spans: Iterable[SpanRecord], stage_kinds: Mapping[int, str]
) -> list[tuple[str, float]]:
    """(stage kind, max over median task duration) of each stage with two task spans or more."""
    durations: dict[int, list[int]] = {}
    for span in spans:
        if span.name != c.SPAN_TASK:
            continue
        stage_id = span.attributes.get(c.STAGE_ID)
        if isinstance(stage_id, int):
            durations.setdefault(stage_id, []).append(max(0, span.end_ns - span.start_ns))
    skews: list[tuple[str, float]] = []
    for stage_id, values in sorted(durations.items()):
        median = statistics.median(values)
        if len(values) >= 2 and median > 0:
            kind = stage_kind_label(stage_kinds.get(stage_id, UNKNOWN_KIND))
            skews.append((kind, max(values) / median))
    return skews


# ---- workers -----------------------------------------------------------------------------


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
        self.task_rows = _observed_sums(
            meter, TASK_OUTPUT_ROWS, "{row}", "Rows tasks wrote to their output buckets"
        )
        self.task_bytes = _observed_sums(
            meter, TASK_OUTPUT_SIZE, "By", "Arrow bytes tasks wrote to their output buckets"
        )
        self.operator_rows = _observed_sums(
            meter,
            OPERATOR_OUTPUT_ROWS,
            "{row}",
            "Rows produced by DataFusion operators, by operator",
        )
        self.operator_bytes = _observed_sums(
            meter,
            OPERATOR_OUTPUT_SIZE,
            "By",
            "Bytes produced by DataFusion operators, by operator",
        )
        self.shuffle = _observed_sums(
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
            [_guarded(lambda: [Observation(observers.active_tasks())])],
            "{task}",
            "Tasks running on this worker",
        )
        meter.create_observable_up_down_counter(
            TASK_QUEUED,
            [_guarded(lambda: [Observation(observers.queued_tasks())])],
            "{task}",
            "Tasks on this worker not started or waiting for their first upstream row",
        )
        meter.create_observable_up_down_counter(
            WORKER_MEMORY_USAGE,
            [_guarded(lambda: [Observation(observers.memory_used_bytes())])],
            "By",
            "Bucket data held in memory, within the worker's memory budget",
        )
        meter.create_observable_up_down_counter(
            WORKER_MEMORY_LIMIT,
            [_guarded(lambda: [Observation(observers.memory_limit_bytes())])],
            "By",
            "The worker's memory budget for bucket data",
        )
        meter.create_observable_counter(
            WORKER_SPILLED,
            [_guarded(lambda: [Observation(observers.spilled_bytes())])],
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
                for operator in _walk(task.operators):
                    series = ((OPERATOR_NAME, _bounded(operator.name)),)
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


# ---- stage kind as baggage -----------------------------------------------------------------


def add_stage_baggage(carrier: dict[str, str], stage_kind: str) -> None:
    """Add the stage kind to a stage's propagated context as W3C baggage."""
    context = baggage.set_baggage(c.STAGE_KIND, stage_kind)
    W3CBaggagePropagator().inject(carrier, context)


def stage_kind_of(carrier: Mapping[str, str]) -> str:
    """The stage kind a coordinator put in a task's context, or ``unknown``."""
    try:
        value = baggage.get_baggage(c.STAGE_KIND, W3CBaggagePropagator().extract(carrier))
    except Exception:
        return UNKNOWN_KIND
    return _bounded(str(value)) if value else UNKNOWN_KIND


# ---- helpers -------------------------------------------------------------------------------


def _exporter(name: str, config: MetricsConfig) -> MetricExporter:
    if name == "console":
        return ConsoleMetricExporter(out=sys.stderr)
    headers = parse_pairs(config.headers) if config.headers else None
    if config.protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        return HttpMetricExporter(
            endpoint=config.endpoint, headers=headers, timeout=config.timeout_s
        )
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    endpoint = config.endpoint or "http://localhost:4317"
    return OTLPMetricExporter(
        endpoint=endpoint,
        insecure=not endpoint.startswith("https://"),
        headers=headers,
        timeout=config.timeout_s,
    )


def _exemplar_filter(
    name: str,
) -> TraceBasedExemplarFilter | AlwaysOnExemplarFilter | AlwaysOffExemplarFilter:
    if name == "always_on":
        return AlwaysOnExemplarFilter()
    if name == "always_off":
        return AlwaysOffExemplarFilter()
    return TraceBasedExemplarFilter()


class _Sums:
    """Running totals by attribute set, which an observable counter reports when metrics are
    collected. A task's counters are added here, a dict update each, instead of through the
    SDK's synchronous counters, whose every call validates and hashes its attributes and walks
    the measurement pipeline (about 4 us a call, a dozen calls a task, with the GIL held at
    the moment the next stage's data needs it); the exported series are the same."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[tuple[tuple[str, str], ...], int] = {}

    def add(self, amount: int, attributes: tuple[tuple[str, str], ...]) -> None:
        with self._lock:
            self._totals[attributes] = self._totals.get(attributes, 0) + amount

    def observe(self) -> list[Observation]:
        with self._lock:
            totals = list(self._totals.items())
        return [Observation(total, dict(attributes)) for attributes, total in totals]


def _observed_sums(meter: Meter, name: str, unit: str, description: str) -> _Sums:
    """A monotonic counter ``name`` whose values are the returned ``_Sums``."""
    sums = _Sums()
    meter.create_observable_counter(name, [_guarded(sums.observe)], unit, description)
    return sums


def _guarded(
    observe: Callable[[], list[Observation]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """An observable callback that never raises into the SDK's collection."""

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        try:
            return observe()
        except Exception:
            log.debug("metric callback failed", exc_info=True)
            return []

    return callback


def _resident_bytes() -> int:
    """The process's resident set size (Linux: current; elsewhere: peak, as getrusage has it)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _walk(operator: OperatorMetrics) -> Iterable[OperatorMetrics]:
    stack = [operator]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)


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


def _bounded(value: str) -> str:
    return value[:_MAX_LABEL] if value else UNKNOWN_KIND


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1" if host != "::" else "[::1]"
    return f"[{host}]" if ":" in host else host
