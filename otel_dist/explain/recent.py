"""What the coordinator does with each finished query's tree: keep the recent ones for the
query pages, and log the tree (off / queries slower than a threshold / all).

Both are listeners the front ends attach to a coordinator, so the engine never imports the
explain renderers. A listener receives a finished query's outcome: ``query_id``, ``sql``,
``duration_ns``, ``error`` (None when it succeeded) and ``telemetry`` (its spans, or None).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_dist.explain.build import build_tree
from otel_dist.explain.model import ExplainTree
from otel_dist.explain.text import render_text
from otel_dist.http_auth import printable
from otel_dist.settings import read
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.otlp import SpanRecord

log = logging.getLogger("otel_dist.explain.log")

LOG_MODES = ("off", "slow", "all")


@dataclass(frozen=True)
class RecentQuery:
    """A finished query as the query pages list it."""

    query_id: str
    sql: str
    finished_at: float
    duration_ns: int
    error: str | None
    trace_id: str
    spans: tuple[SpanRecord, ...]
    otlp: ExportTraceServiceRequest | None = None

    @property
    def status(self) -> str:
        return "ok" if self.error is None else "error"

    def tree(self) -> ExplainTree:
        return build_tree(self.spans, self.query_id)


class RecentQueries:
    """The last ``capacity`` finished queries, newest first. Thread-safe."""

    def __init__(self, capacity: int = 100) -> None:
        self.capacity = capacity
        self._queries: OrderedDict[str, RecentQuery] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, outcome: Any) -> None:
        telemetry = outcome.telemetry
        if telemetry is None:
            return
        entry = RecentQuery(
            # as its spans carry it: text UTF-8 cannot encode was escaped in the OTLP encoding
            query_id=printable(outcome.query_id),
            sql=outcome.sql,
            finished_at=time.time(),
            duration_ns=outcome.duration_ns,
            error=outcome.error,
            trace_id=telemetry.trace_id,
            spans=tuple(telemetry.spans),
            otlp=telemetry.otlp,
        )
        with self._lock:
            self._queries[entry.query_id] = entry
            self._queries.move_to_end(entry.query_id, last=False)
            while len(self._queries) > self.capacity:
                self._queries.popitem(last=True)

    def get(self, query_id: str) -> RecentQuery | None:
        with self._lock:
            return self._queries.get(query_id)

    def list(self) -> list[RecentQuery]:
        with self._lock:
            return list(self._queries.values())


@dataclass(frozen=True)
class QueryLogConfig:
    """``OTEL_DIST_EXPLAIN_LOG`` (off, slow, all) and ``OTEL_DIST_EXPLAIN_LOG_SLOW_MS``."""

    mode: str = "off"
    slow_ms: float = 1000.0

    @staticmethod
    def from_env(default_mode: str, env: Mapping[str, str] | None = None) -> QueryLogConfig:
        mode = read("OTEL_DIST_EXPLAIN_LOG", env, default=default_mode)
        return QueryLogConfig(mode, float(read("OTEL_DIST_EXPLAIN_LOG_SLOW_MS", env)))


class QueryLog:
    """Logs each finished query's explain tree, with trace and span ids on the record."""

    def __init__(self, config: QueryLogConfig, trace_url_template: str | None = None) -> None:
        self.config = config
        self.trace_url_template = trace_url_template

    def __call__(self, outcome: Any) -> None:
        if self.config.mode == "off" or outcome.telemetry is None:
            return
        slow = outcome.duration_ns >= self.config.slow_ms * 1e6
        if self.config.mode == "slow" and not slow and outcome.error is None:
            return
        query_id = printable(outcome.query_id)  # as its spans carry it
        try:
            tree = build_tree(outcome.telemetry.spans, query_id)
            text = render_text(tree, trace_url_template=self.trace_url_template)
        except Exception:
            log.warning("explain tree of query %s could not be built", query_id, exc_info=True)
            return
        root = next(
            (s for s in outcome.telemetry.spans if c.is_query_span(s.name, s.attributes)), None
        )
        level = logging.WARNING if outcome.error is not None else logging.INFO
        # Client text (ids, SQL, errors) may hold lone surrogates no log sink can encode.
        log.log(
            level,
            "query %s finished in %.0f ms%s\n%s",
            query_id,
            outcome.duration_ns / 1e6,
            f" with error: {printable(outcome.error)}" if outcome.error else "",
            printable(text),
            extra={
                "query_id": query_id,
                "trace_id": outcome.telemetry.trace_id,
                "span_id": root.span_id if root else "",
                "duration_ms": round(outcome.duration_ns / 1e6, 3),
            },
        )
