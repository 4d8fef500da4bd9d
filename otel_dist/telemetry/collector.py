"""Per-query span collection: telemetry messages in, deduplicated spans grouped by task out.

Workers use one per task (to forward what their upstream tasks sent), the coordinator one per
query (to build the explain tree and to know which tasks' telemetry never arrived).

Received telemetry is kept as the bytes it arrived in wherever it can be: a ``ResourceSpans``
whose spans all belong to one task and are all new is stored as its serialized bytes, so
forwarding it (and building the query's request) joins bytes instead of copying spans one by
one and encoding them again. Spans that share a ``ResourceSpans`` with other tasks' spans or
with spans already held are kept one by one, as parsed. A message is split into its
``resource_spans`` fields before it is parsed, and a field taken in before (the same bytes,
forwarded again by another upstream task) is not parsed again.
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
_NO_TASK_KEY = (_NO_TASK.stage_id, _NO_TASK.task_index)
_STAGE_ID = c.STAGE_ID
_TASK_INDEX = c.TASK_INDEX
_RESOURCE_SPANS_TAG = 0x0A  # ExportTraceServiceRequest.resource_spans: field 1, length-delimited


class _TaskSpans:
    """The spans held for one task, in the order they arrived: whole serialized
    ``resource_spans`` fields as received, and single spans with their serialized resource
    and scope."""

    __slots__ = ("_chunk", "ids", "pieces")

    def __init__(self) -> None:
        self.ids: set[bytes] = set()
        # a resource_spans field of a request (tag, length, body), or (resource, scope, span)
        self.pieces: list[bytes | tuple[bytes, bytes, Span]] = []
        self._chunk: bytes | None = None

    def add_field(self, field: bytes, span_ids: list[bytes]) -> None:
        self.pieces.append(field)
        self.ids.update(span_ids)
        self._chunk = None

    def add_span(self, resource: bytes, scope: bytes, span: Span) -> None:
        if span.span_id not in self.ids:
            self.ids.add(span.span_id)
            self.pieces.append((resource, scope, span))
            self._chunk = None

    def chunk(self) -> bytes:
        """The task's spans as a serialized ``ExportTraceServiceRequest``: the field they
        arrived in when they arrived in one (the usual case), else regrouped by resource and
        scope."""
        if self._chunk is None:
            if len(self.pieces) == 1 and isinstance(self.pieces[0], bytes):
                self._chunk = self.pieces[0]
            else:
                self._chunk = _request(self._entries()).SerializeToString()
        return self._chunk

    def _entries(self) -> Iterable[tuple[bytes, bytes, Span]]:
        for piece in self.pieces:
            if not isinstance(piece, bytes):
                yield piece
                continue
            for resource_spans in ExportTraceServiceRequest.FromString(piece).resource_spans:
                resource = resource_spans.resource.SerializeToString()
                for scope_spans in resource_spans.scope_spans:
                    scope = scope_spans.scope.SerializeToString()
                    for span in scope_spans.spans:
                        yield resource, scope, span


class SpanCollector:
    """Telemetry of one query, deduplicated by span id. Thread-safe; never raises on input."""

    def __init__(self, query_id: str) -> None:
        self.query_id = query_id
        self._lock = threading.Lock()
        self._spans: dict[TaskRef, _TaskSpans] = {}
        # (sole task, resource_spans field) already taken in: the same bytes arrive again
        # when several upstream tasks forward what a common ancestor sent them
        self._seen: set[tuple[tuple[int, int], bytes]] = set()
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
            query_id, tasks, truncated, payload = envelope_codec.decode_header(data)
            sole = _sole(tasks)
            fields = _resource_spans_fields(payload)
            if fields is None:  # not laid out as expected: parse it whole
                received = envelope_codec.decode_payload(payload)
            else:  # parse only the fields not taken in before
                with self._lock:
                    fresh = [f for f in fields if (sole, f) not in self._seen]
                parsed = [(f, envelope_codec.decode_payload(f)) for f in fresh]
            if query_id != self.query_id:
                raise EnvelopeError(f"telemetry for query {query_id}, not {self.query_id}")
        except EnvelopeError as error:
            with self._lock:
                self.malformed += 1
            log.warning("malformed telemetry message for query %s: %s", self.query_id, error)
            return
        if fields is None:
            self.add_envelope(Envelope(query_id, tasks, received, truncated))
            return
        with self._lock:
            if truncated:
                self.truncated += 1
            for task in tasks:
                self._held(task)
            for field, request in parsed:
                if (sole, field) in self._seen:
                    continue  # taken in by another thread meanwhile
                self._seen.add((sole, field))
                for resource_spans in request.resource_spans:  # one
                    self._add_resource_spans(resource_spans, sole, field)

    def add_envelope(self, received: Envelope) -> None:
        if received.truncated:
            with self._lock:
                self.truncated += 1
        self._add_request(received.tasks, received.request, received.payload)

    def add_own_request(self, request: ExportTraceServiceRequest) -> None:
        """Spans of the collecting process itself (the coordinator's query and stage spans)."""
        self._add_request((), request)

    def _add_request(
        self,
        tasks: tuple[TaskRef, ...],
        request: ExportTraceServiceRequest,
        payload: bytes = b"",
    ) -> None:
        sole = _sole(tasks)
        fields = _resource_spans_fields(payload, len(request.resource_spans)) if payload else None
        with self._lock:
            for task in tasks:
                self._held(task)
            for position, resource_spans in enumerate(request.resource_spans):
                field = fields[position] if fields is not None else None
                self._add_resource_spans(resource_spans, sole, field)

    def _add_resource_spans(
        self, resource_spans: ResourceSpans, sole: tuple[int, int], field: bytes | None
    ) -> None:
        """Take in one ``ResourceSpans``, whole as ``field`` (its serialized field) when its
        spans all belong to one task and are all new. Called with the lock held."""
        if field is not None:
            owner, span_ids = _owner(resource_spans, sole)
            if not span_ids:
                return
            if owner is not None and len(set(span_ids)) == len(span_ids):
                held = self._held(TaskRef(*owner))
                if held.ids.isdisjoint(span_ids):
                    held.add_field(field, span_ids)
                    return
                if held.ids.issuperset(span_ids):
                    return  # all held already
        resource = resource_spans.resource.SerializeToString()
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.SerializeToString()
            for span in scope_spans.spans:
                task = _task_key(span) or sole
                if task == _NO_TASK_KEY:
                    task = sole
                self._held(TaskRef(*task)).add_span(resource, scope, span)

    def _held(self, task: TaskRef) -> _TaskSpans:
        held = self._spans.get(task)
        if held is None:
            held = self._spans[task] = _TaskSpans()
        return held

    # ---- output --------------------------------------------------------------------------

    def tasks(self) -> set[TaskRef]:
        with self._lock:
            return {task for task, held in self._spans.items() if task != _NO_TASK and held.ids}

    def task_request(self, task: TaskRef) -> ExportTraceServiceRequest:
        with self._lock:
            held = self._spans.get(task)
            chunk = held.chunk() if held is not None else b""
        return ExportTraceServiceRequest.FromString(chunk)

    def request(self) -> ExportTraceServiceRequest:
        with self._lock:
            payload = b"".join(held.chunk() for held in self._spans.values())
        return ExportTraceServiceRequest.FromString(payload)

    def spans(self) -> list[SpanRecord]:
        return span_records([self.request()])

    def span_count(self) -> int:
        with self._lock:
            return sum(len(held.ids) for held in self._spans.values())

    def forwarding_envelope(
        self, own_task: TaskRef, own: ExportTraceServiceRequest | bytes, limit_bytes: int
    ) -> bytes:
        """The final message of a task: its own spans first, then what it received, to a limit.

        ``own`` is the task's own spans, as a request or serialized. Tasks that do not fit are
        left out whole and the envelope is marked truncated; their telemetry stays fetchable
        from the workers that ran them.
        """
        own_bytes = own if isinstance(own, bytes) else own.SerializeToString()
        with self._lock:
            received = [
                (task, self._spans[task].chunk())
                for task in sorted(t for t, held in self._spans.items() if held.ids)
                if task != own_task and task != _NO_TASK
            ]
            truncated = self.truncated > 0  # what arrived truncated is forwarded as truncated
        included: list[TaskRef] = []
        parts: list[bytes] = []
        size = 0
        for task, chunk in [(own_task, own_bytes), *received]:
            # Serialized requests concatenate: their resource_spans fields add up to one request.
            if size + len(chunk) > limit_bytes:
                truncated = True
                continue
            parts.append(chunk)
            included.append(task)
            size += len(chunk)
        return envelope_codec.encode_payload(
            self.query_id, tuple(included), b"".join(parts), truncated
        )


def _sole(tasks: tuple[TaskRef, ...]) -> tuple[int, int]:
    """The task spans without task attributes belong to: the envelope's only task, if one."""
    sole_task = tasks[0] if len(tasks) == 1 else _NO_TASK
    return sole_task.stage_id, sole_task.task_index


def _resource_spans_fields(payload: bytes, expected: int | None = None) -> list[bytes] | None:
    """The top-level fields of a serialized ``ExportTraceServiceRequest``, each as its bytes,
    when they are all ``resource_spans`` fields (``expected`` of them, if given); None
    otherwise."""
    fields: list[bytes] = []
    position, end = 0, len(payload)
    while position < end:
        if payload[position] != _RESOURCE_SPANS_TAG:
            return None
        length, shift, cursor = 0, 0, position + 1
        while True:  # the field's length, a varint
            if cursor >= end or shift > 63:
                return None
            byte = payload[cursor]
            cursor += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        stop = cursor + length
        if stop > end:
            return None
        fields.append(payload[position:stop])
        position = stop
    return fields if expected is None or len(fields) == expected else None


def _owner(
    resource_spans: ResourceSpans, sole: tuple[int, int]
) -> tuple[tuple[int, int] | None, list[bytes]]:
    """The task all spans of ``resource_spans`` belong to (None when they belong to several,
    or when there are none) and their span ids."""
    owner: tuple[int, int] | None = None
    mixed = False
    span_ids: list[bytes] = []
    for scope_spans in resource_spans.scope_spans:
        for span in scope_spans.spans:
            task = _task_key(span) or sole
            if task == _NO_TASK_KEY:
                task = sole
            if owner is None:
                owner = task
            elif task != owner:
                mixed = True
            span_ids.append(span.span_id)
    return (None if mixed else owner), span_ids


def _task_key(span: Span) -> tuple[int, int] | None:
    """The span's (stage id, task index) from its attributes, None without them."""
    stage = task = None
    for attribute in span.attributes:
        key = attribute.key
        if key == _STAGE_ID:
            stage = attribute.value.int_value
            if task is not None:
                break
        elif key == _TASK_INDEX:
            task = attribute.value.int_value
            if stage is not None:
                break
    if stage is None or task is None:
        return None
    return stage, task


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
