"""The coordinator's metrics: each query's duration and status, stage skew, telemetry completeness."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.metrics import Meter, Observation

from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.metrics.instruments import guarded
from otel_dist.telemetry.metrics.names import (
    DURATION_BUCKETS,
    FALLBACK_FETCHES,
    FETCH_RESULT,
    MALFORMED_MESSAGES,
    QUERY_ACTIVE,
    QUERY_DURATION,
    QUERY_STATUS,
    QUERY_STATUSES,
    SKEW_BUCKETS,
    STAGE_TASK_SKEW,
    TRUNCATED_MESSAGES,
    UNKNOWN_KIND,
    stage_kind_label,
)
from otel_dist.telemetry.otlp import SpanRecord

log = logging.getLogger(__name__)


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
            [guarded(lambda: [Observation(active_queries())])],
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
