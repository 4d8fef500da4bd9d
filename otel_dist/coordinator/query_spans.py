"""The coordinator's side of each query's trace: a span per stage under the query span
(linked to the stages it reads), the trace context each stage's tasks carry, and at the query's
end the telemetry of every task (in-band, else fetched from the worker that ran it), the
coordinator's own spans ended and the query's metrics recorded."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_dist.coordinator.query import QueryError, QueryRun, QueryTelemetry
from otel_dist.errors import one_line
from otel_dist.exchange.reader import read_record
from otel_dist.planner.model import DistributedPlan
from otel_dist.protocol import ACTION_GET_TASK_TELEMETRY, encode_json
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.envelope import TaskRef
from otel_dist.telemetry.metrics import CoordinatorMetrics, QueryOutcome, add_stage_baggage
from otel_dist.telemetry.otlp import span_records
from otel_dist.telemetry.otlp_encode import encode_spans
from otel_dist.telemetry.redaction import redact_sql
from otel_dist.telemetry.relay import SpanRelay
from otel_dist.telemetry.setup import Telemetry
from otel_dist.telemetry.task_spans import record_read_span

log = logging.getLogger(__name__)

RpcAction = Callable[[trace.Span | None, str, str, bytes, float | None], bytes]


class QuerySpans:
    """Builds and completes the coordinator's spans of each query it runs."""

    def __init__(
        self,
        telemetry: Telemetry,
        query_metrics: CoordinatorMetrics,
        relay: SpanRelay | None,
        fetch_timeout_s: float,
        worker_is_up: Callable[[str], bool],
        rpc_action: RpcAction,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.telemetry = telemetry
        self.query_metrics = query_metrics
        self.relay = relay
        self.fetch_timeout_s = fetch_timeout_s
        self.worker_is_up = worker_is_up
        self.rpc_action = rpc_action
        self.pool = pool

    def start_stage_spans(self, run: QueryRun) -> None:
        """One span per stage, every one a child of the query span (a trace a few levels deep
        rather than one level per stage), linked to the spans of the stages it reads
        (``otel_dist.stage.inputs`` lists them too)."""
        assert run.plan is not None
        parent = trace.set_span_in_context(run.query_span)
        for stage in run.plan.stages:  # dependency order: a stage's inputs come first
            links = [
                trace.Link(run.stage_spans[i.stage_id].get_span_context())
                for i in stage.inputs
                if i.stage_id in run.stage_spans
            ]
            attributes: dict[str, object] = {
                c.QUERY_ID: run.query_id,
                c.STAGE_ID: stage.stage_id,
                c.STAGE_TASK_COUNT: stage.task_count,
                c.STAGE_PARTITIONING: stage.output.describe(),
                c.STAGE_KIND: stage.kind,
                c.STAGE_INPUTS: [i.stage_id for i in stage.inputs],
                c.STAGE_SQL: redact_sql(stage.sql)
                if self.telemetry.config.redact_sql
                else stage.sql,
            }
            if stage.fallback_reason:
                attributes[c.STAGE_FALLBACK] = stage.fallback_reason
            if stage.strategy:
                attributes[c.STAGE_STRATEGY] = stage.strategy
            run.stage_spans[stage.stage_id] = self.telemetry.tracer.start_span(
                c.SPAN_STAGE,
                context=parent,
                attributes=attributes,  # type: ignore[arg-type]
                links=links,
            )

    def stage_contexts(self, run: QueryRun) -> dict[int, dict[str, str]]:
        contexts: dict[int, dict[str, str]] = {}
        for stage_id, span in run.stage_spans.items():
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
            if run.plan is not None:  # lets workers label task metrics by stage kind
                add_stage_baggage(carrier, run.plan.stage(stage_id).kind)
            contexts[stage_id] = carrier
        return contexts

    def finish(self, run: QueryRun, failure: BaseException | None) -> QueryTelemetry | None:
        """Fetch what did not arrive in-band, end the coordinator's spans, gather everything."""
        if not self.telemetry.enabled:
            run.query_span.end()
            return None
        deadline = time.monotonic() + self.fetch_timeout_s
        for stats in run.read_stats:
            stats.wait_for_telemetry(max(0.0, deadline - time.monotonic()))
        planned = planned_tasks(run.plan)
        worker_request = run.collector.request()  # first: a damaged task's spans are missing
        in_band = run.collector.tasks()
        fetched, lost = self._fetch_missing(run, planned - in_band)
        if fetched:
            worker_request = run.collector.request()
        worker_spans = span_records([worker_request])
        if self.relay is not None:
            self.relay.submit(worker_request)
        task_ends: dict[int, int] = {}
        task_starts: dict[int, int] = {}
        failed_stages: dict[int, str] = {}  # stage -> its first failed task's error
        for record in worker_spans:
            if record.name == c.SPAN_TASK:
                stage_id = int(str(record.attributes.get(c.STAGE_ID, -1)))
                task_ends[stage_id] = max(task_ends.get(stage_id, 0), record.end_ns)
                task_starts[stage_id] = min(
                    task_starts.get(stage_id, record.start_ns), record.start_ns
                )
                if record.status_code == StatusCode.ERROR.value:
                    failed_stages.setdefault(stage_id, record.status_message)
        own: list[ReadableSpan] = []
        root_span = run.stage_spans.get(run.plan.root.stage_id) if run.plan else None
        common: dict[str, object] = {c.QUERY_ID: run.query_id}
        parent = (root_span or run.query_span).get_span_context()
        with run.lock:  # reads still going end here, as far as the trace is concerned
            now = time.time_ns()
            for span_id, (source, stats, started) in run.open_reads.items():
                run.reads.append(read_record(source, stats, started, now, span_id))
            run.open_reads.clear()
        for read in run.reads:
            read_span = record_read_span(self.telemetry, parent, read, common)
            if read_span is not None:
                own.append(read_span)
        for read in run.reads:  # the stage lasts until its output is read
            task_ends[read.stage_id] = max(task_ends.get(read.stage_id, 0), read.ended_ns)
        ended = time.time_ns()
        for stage_id, span in run.stage_spans.items():
            if stage_id in task_starts:
                stage_event(run, "running", stage_id, task_starts[stage_id])
            end = min(task_ends.get(stage_id) or ended, ended)
            stage_event(
                run, "finished" if stage_id not in failed_stages else "failed", stage_id, end
            )
            if stage_id in failed_stages:  # ERROR only on the stage whose task failed
                span.set_status(Status(StatusCode.ERROR, failed_stages[stage_id]))
            span.end(end_time=end)
            own.append(span)  # type: ignore[arg-type]
        if failure is not None:
            run.query_span.set_status(Status(StatusCode.ERROR, one_line(failure)))
            error_type = type(failure).__name__
            run.query_span.set_attribute(c.ERROR_TYPE, error_type)
            run.query_span.add_event(
                "exception",
                {"exception.type": error_type, "exception.message": one_line(failure)},
            )
        run.query_span.end(end_time=ended)
        own.append(run.query_span)  # type: ignore[arg-type]
        own_request = encode_spans(own)
        return QueryTelemetry(
            query_id=run.query_id,
            trace_id=format(run.query_span.get_span_context().trace_id, "032x"),
            spans=worker_spans + span_records([own_request]),
            planned_tasks=planned,
            in_band_tasks=in_band,
            fetched_tasks=fetched,
            lost_tasks=lost,
            malformed_messages=run.collector.malformed,
            truncated_messages=run.collector.truncated,
            final_message_bytes=run.collector.message_bytes,
            otlp=ExportTraceServiceRequest(
                resource_spans=[*worker_request.resource_spans, *own_request.resource_spans]
            ),
        )

    def record_metrics(
        self,
        run: QueryRun,
        telemetry: QueryTelemetry | None,
        failure: BaseException | None,
        started_ns: int,
    ) -> None:
        """The query's metrics, once at its end (the duration's exemplar is its trace)."""
        if not self.query_metrics.enabled:
            return
        status = "ok" if failure is None else "cancelled" if run.cancelled.is_set() else "error"
        self.query_metrics.record_query(
            QueryOutcome(
                status=status,
                duration_s=(time.time_ns() - started_ns) / 1e9,
                span=run.query_span,
                stage_kinds={s.stage_id: s.kind for s in run.plan.stages} if run.plan else {},
                spans=telemetry.spans if telemetry else (),
                fetched_tasks=len(telemetry.fetched_tasks) if telemetry else 0,
                lost_tasks=len(telemetry.lost_tasks) if telemetry else 0,
                malformed_messages=telemetry.malformed_messages if telemetry else 0,
                truncated_messages=telemetry.truncated_messages if telemetry else 0,
            )
        )

    def _fetch_missing(
        self, run: QueryRun, missing: set[TaskRef]
    ) -> tuple[set[TaskRef], set[TaskRef]]:
        """Ask the workers that ran them for the telemetry of tasks not received in-band."""
        if not missing:
            return set(), set()

        def fetch(task: TaskRef) -> bool:
            url = run.placement[(task.stage_id, task.task_index)]
            if not self.worker_is_up(url):
                return False  # its spans went down with it
            body = encode_json(
                {"query_id": run.query_id, "stage_id": task.stage_id, "task_index": task.task_index}
            )
            try:
                payload = self.rpc_action(
                    run.query_span,
                    url,
                    ACTION_GET_TASK_TELEMETRY,
                    body,
                    self.fetch_timeout_s,
                )
            except QueryError as error:
                log.info("telemetry of task %s of %s not fetched: %s", task, run.query_id, error)
                return False
            run.collector.add_message(payload, in_band=False)
            return task in run.collector.tasks()

        futures = {task: self.pool.submit(fetch, task) for task in missing}
        fetched: set[TaskRef] = set()
        for task, future in futures.items():
            try:
                if future.result(timeout=self.fetch_timeout_s + 5):
                    fetched.add(task)
            except Exception:
                log.info("telemetry fetch of task %s failed", task, exc_info=True)
        return fetched, missing - fetched


def stage_event(
    run: QueryRun, state: str, stage_id: int | None = None, at_ns: int | None = None
) -> None:
    """A stage state change as an event on its span (every stage's when ``stage_id`` is None);
    ``at_ns`` dates it (the first task's start, the last task's end) when it is known later."""
    spans = run.stage_spans if stage_id is None else {stage_id: run.stage_spans[stage_id]}
    for span in spans.values():
        span.add_event(state, {c.STAGE_STATE: state}, timestamp=at_ns)


def planned_tasks(plan: DistributedPlan | None) -> set[TaskRef]:
    if plan is None:
        return set()
    return {TaskRef(s.stage_id, t) for s in plan.stages for t in range(s.task_count)}
