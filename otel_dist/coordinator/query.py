"""What a query is while the coordinator runs it, and what it leaves: the coordinator's
settings, the errors a query can end with, its collected telemetry, its result and outcome,
and the state of one running query (``QueryRun``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import pyarrow as pa
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_dist import settings
from otel_dist.coordinator.membership import (
    DEFAULT_DNS_INTERVAL_S,
    DEFAULT_HEARTBEAT_S,
    DnsName,
)
from otel_dist.exchange.router import StreamStats
from otel_dist.exchange.security import NO_SECURITY, SecurityConfig
from otel_dist.planner.model import DistributedPlan
from otel_dist.protocol import BucketSource
from otel_dist.telemetry.collector import SpanCollector
from otel_dist.telemetry.envelope import TaskRef
from otel_dist.telemetry.otlp import SpanRecord
from otel_dist.telemetry.task_spans import ReadRecord

DEFAULT_MAX_SQL_BYTES: int = settings.SETTINGS["OTEL_DIST_MAX_SQL_BYTES"].default
DEFAULT_MAX_RESULT_BYTES: int = settings.SETTINGS["OTEL_DIST_MAX_RESULT_BYTES"].default
# Result bytes all running queries together may hold in the coordinator (gathered results:
# LocalCluster.sql, explain runs; streamed results hold a few batches and are not counted).
DEFAULT_MAX_TOTAL_RESULT_BYTES: int = settings.SETTINGS["OTEL_DIST_MAX_TOTAL_RESULT_BYTES"].default
# How long reading a failed query's ``error.telemetry`` waits for its background completion.
TELEMETRY_COMPLETION_WAIT_S = 60.0


class QueryError(RuntimeError):
    """A query failed; the message names the cause (stage, task, worker, table...).

    A failed query's error reaches its caller at once; its telemetry (the spans of what ran,
    fetched from the workers that are left) is completed in the background, and reading
    ``telemetry`` waits for it (bounded). Front ends attach derived values the same way
    (``later``: e.g. the partial EXPLAIN ANALYZE as ``analysis``)."""

    def __init__(self, message: str, telemetry: QueryTelemetry | None = None) -> None:
        super().__init__(message)
        self._telemetry: QueryTelemetry | Future[QueryTelemetry | None] | None = telemetry
        self._later: dict[str, Callable[[], object]] = {}

    @property
    def telemetry(self) -> QueryTelemetry | None:
        pending = self._telemetry
        if isinstance(pending, Future):
            try:
                return pending.result(timeout=TELEMETRY_COMPLETION_WAIT_S)
            except Exception:  # not complete in time, or its collection failed
                return None
        return pending

    @telemetry.setter
    def telemetry(self, value: QueryTelemetry | Future[QueryTelemetry | None] | None) -> None:
        self._telemetry = value

    def later(self, name: str, compute: Callable[[], object]) -> None:
        """Attach ``name``, computed (once) when first read."""
        self._later[name] = compute

    def __getattr__(self, name: str) -> object:
        later = self.__dict__.get("_later", {})
        if name not in later:
            raise AttributeError(name)
        value = later.pop(name)()
        setattr(self, name, value)
        return value


class WorkerUnreachable(QueryError):
    """A worker did not answer: refused or reset (``timed_out`` False), or too slowly."""

    def __init__(self, message: str, url: str = "", timed_out: bool = False) -> None:
        super().__init__(message)
        self.url = url
        self.timed_out = timed_out


class QueryRejected(QueryError):
    """The statement is refused before it runs: too long, or not a query."""


@dataclass(frozen=True)
class CoordinatorConfig:
    """Settings of a coordinator."""

    workers: tuple[str, ...]
    data: str
    tasks_per_stage: int | None = None
    target_partitions: int = 2
    broadcast_threshold: int | None = None  # None: OTEL_DIST_BROADCAST_THRESHOLD or 64 MB
    min_task_bytes: int | None = None  # None: OTEL_DIST_MIN_TASK_BYTES or 64 MB
    rpc_timeout_s: float = 10.0
    query_timeout_s: float = 600.0
    telemetry_fetch_timeout_s: float = 15.0
    # Limits: the environment's settings (settings.py) unless given.
    max_sql_bytes: int = field(default_factory=lambda: settings.read("OTEL_DIST_MAX_SQL_BYTES"))
    max_result_bytes: int = field(
        default_factory=lambda: settings.read("OTEL_DIST_MAX_RESULT_BYTES")
    )
    max_total_result_bytes: int = field(
        default_factory=lambda: settings.read("OTEL_DIST_MAX_TOTAL_RESULT_BYTES")
    )
    max_sql_depth: int = field(default_factory=lambda: settings.read("OTEL_DIST_MAX_SQL_DEPTH"))
    max_sql_operators: int = field(
        default_factory=lambda: settings.read("OTEL_DIST_MAX_SQL_OPERATORS")
    )
    health_interval_s: float = 1.0  # 0: no background probes (calls still mark workers down)
    health_timeout_s: float = 2.0
    security: SecurityConfig = NO_SECURITY
    dns_names: tuple[DnsName, ...] = ()  # resolved to workers, again every dns_interval_s
    dns_interval_s: float = DEFAULT_DNS_INTERVAL_S
    heartbeat_s: float = DEFAULT_HEARTBEAT_S  # registered workers: dropped after 3 missed


@dataclass
class QueryTelemetry:
    """Every span collected for one query, and how complete the collection is."""

    query_id: str
    trace_id: str
    spans: list[SpanRecord]
    planned_tasks: set[TaskRef]
    in_band_tasks: set[TaskRef]
    fetched_tasks: set[TaskRef] = field(default_factory=set)
    lost_tasks: set[TaskRef] = field(default_factory=set)
    malformed_messages: int = 0
    truncated_messages: int = 0
    final_message_bytes: int = 0
    otlp: ExportTraceServiceRequest | None = None


@dataclass(frozen=True)
class FinishedQuery:
    """What listeners learn of every finished query, successful or not."""

    query_id: str
    sql: str
    duration_ns: int
    error: str | None
    telemetry: QueryTelemetry | None


@dataclass
class QueryResult:
    """A finished query: its data, its plan, and its telemetry."""

    query_id: str
    table: pa.Table
    plan: DistributedPlan
    started_ns: int
    ended_ns: int
    telemetry: QueryTelemetry | None = None

    @property
    def duration_ns(self) -> int:
        return self.ended_ns - self.started_ns


@dataclass
class QueryRun:
    """The state of one query while it runs."""

    query_id: str
    sql: str
    collector: SpanCollector
    query_span: trace.Span
    plan: DistributedPlan | None = None
    placement: dict[tuple[int, int], str] = field(default_factory=dict)
    stage_spans: dict[int, trace.Span] = field(default_factory=dict)
    reads: list[ReadRecord] = field(default_factory=list)
    # Reads still going (by span id): a failed query ends before them, and their spans must
    # still be recorded, being the parents of the workers' spans of those calls.
    open_reads: dict[int, tuple[BucketSource, StreamStats, int]] = field(default_factory=dict)
    read_stats: list[StreamStats] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    lost_workers: dict[str, str] = field(default_factory=dict)  # url -> why it went down
    result_bytes: int = 0
    result_rows: int = 0
    held_bytes: int = 0  # counted against max_total_result_bytes
    sink: Callable[[pa.RecordBatch], None] | None = None  # streamed result: batches go here
    lock: threading.Lock = field(default_factory=threading.Lock)
    started_ns: int = 0
    sink_lock: threading.Lock = field(default_factory=threading.Lock)

    def workers(self) -> set[str]:
        return set(self.placement.values())
