"""Per-query span collection: telemetry messages in, deduplicated spans grouped by task out.

Workers use one per task (to forward what their upstream tasks sent), the coordinator one per
query (to build the explain tree and to know which tasks' telemetry never arrived).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otel_dist.telemetry import conventions as c
from otel_dist.telemetry import envelope as envelope_codec
from otel_dist.telemetry.envelope import Envelope, EnvelopeError, TaskRef
from otel_dist.telemetry.otlp import SpanRecord, span_records

log = logging.getLogger(__name__)

_NO_TASK = TaskRef(-1, -1)  # spans that belong to no task: the coordinator's own


class SpanCollector:
    """Telemetry of one query, deduplicated by span id. Thread-safe; never raises on input."""

    def __init__(self, query_id: str) -> None:
        self.query_id = query_id
        self._lock = threading.Lock()
        # task -> span id -> (serialized resource, serialized scope, span)
        self._spans: dict[TaskRef, dict[bytes, tuple[bytes, bytes, Span]]] = {}
        self.messages = 0
        self.message_bytes = 0
        self.malformed = 0
        self.truncated = 0

    # ---- input ---------------------------------------------------------------------------

    def add_message(self, data: bytes, in_band: bool = True) -> None:
        """Accept a telemetry envelope (a final Flight message, or a fetched one when not
        ``in_band``); malformed ones are counted and logged, never raised."""
        if in_band:
            with self._lock:
                self.messages += 1
                self.message_bytes += len(data)
        try:
            received = envelope_codec.decode(data)
            if received.query_id != self.query_id:
                raise EnvelopeError(f"telemetry for query {received.query_id}, not {self.query_id}")
        except EnvelopeError as error:
            with self._lock:
                self.malformed += 1
            log.warning("malformed telemetry message for query %s: %s", self.query_id, error)
            return
        self.add_envelope(received)

    def add_envelope(self, received: Envelope) -> None:
        if received.truncated:
            with self._lock:
                self.truncated += 1
        self._add_request(received.tasks, received.request)

    def add_own_request(self, request: ExportTraceServiceRequest) -> None:
        """Spans of the collecting process itself (the coordinator's query and stage spans)."""
        self._add_request((), request)

    def _add_request(self, tasks: tuple[TaskRef, ...], request: ExportTraceServiceRequest) -> None:
        sole_task = tasks[0] if len(tasks) == 1 else _NO_TASK
        with self._lock:
            for task in tasks:
                self._spans.setdefault(task, {})
            for resource_spans in request.resource_spans:
                resource = resource_spans.resource.SerializeToString()
                for scope_spans in resource_spans.scope_spans:
                    scope = scope_spans.scope.SerializeToString()
                    for span in scope_spans.spans:
                        task = _task_of(span, c.STAGE_ID, c.TASK_INDEX)
                        if task == _NO_TASK:
                            task = sole_task
                        spans = self._spans.setdefault(task, {})
                        if span.span_id not in spans:
                            spans[span.span_id] = (resource, scope, span)

    # ---- output --------------------------------------------------------------------------

    def tasks(self) -> set[TaskRef]:
        with self._lock:
            return {task for task, spans in self._spans.items() if task != _NO_TASK and spans}

    def task_request(self, task: TaskRef) -> ExportTraceServiceRequest:
        with self._lock:
            entries = list(self._spans.get(task, {}).values())
        return _request(entries)

    def request(self) -> ExportTraceServiceRequest:
        with self._lock:
            entries = [entry for spans in self._spans.values() for entry in spans.values()]
        return _request(entries)

    def spans(self) -> list[SpanRecord]:
        return span_records([self.request()])

    def span_count(self) -> int:
        with self._lock:
            return sum(len(spans) for spans in self._spans.values())

    def forwarding_envelope(
        self, own_task: TaskRef, own: ExportTraceServiceRequest, limit_bytes: int
    ) -> bytes:
        """The final message of a task: its own spans first, then what it received, to a limit.

        Tasks that do not fit are left out whole and the envelope is marked truncated; their
        telemetry stays fetchable from the workers that ran them.
        """
        chunks: list[tuple[TaskRef, ExportTraceServiceRequest]] = [(own_task, own)]
        chunks += [
            (task, self.task_request(task)) for task in sorted(self.tasks()) if task != own_task
        ]
        merged = ExportTraceServiceRequest()
        included: list[TaskRef] = []
        size = 0
        truncated = self.truncated > 0  # what arrived truncated is forwarded as truncated
        for task, request in chunks:
            chunk_size = request.ByteSize()
            if size + chunk_size > limit_bytes:
                truncated = True
                continue
            merged.resource_spans.extend(request.resource_spans)
            included.append(task)
            size += chunk_size
        return envelope_codec.encode(Envelope(self.query_id, tuple(included), merged, truncated))


def _task_of(span: Span, stage_key: str, task_key: str) -> TaskRef:
    stage = task = None
    for attribute in span.attributes:
        if attribute.key == stage_key:
            stage = attribute.value.int_value
        elif attribute.key == task_key:
            task = attribute.value.int_value
    if stage is None or task is None:
        return _NO_TASK
    return TaskRef(stage, task)


def _request(entries: Iterable[tuple[bytes, bytes, Span]]) -> ExportTraceServiceRequest:
    grouped: dict[bytes, dict[bytes, list[Span]]] = {}
    for resource, scope, span in entries:
        grouped.setdefault(resource, {}).setdefault(scope, []).append(span)
    request = ExportTraceServiceRequest()
    for resource, scopes in grouped.items():
        resource_spans = ResourceSpans()
        resource_spans.resource.ParseFromString(resource)
        for scope, spans in scopes.items():
            scope_spans = ScopeSpans(spans=spans)
            scope_spans.scope.ParseFromString(scope)
            resource_spans.scope_spans.append(scope_spans)
        request.resource_spans.append(resource_spans)
    return request
