"""OTLP protobuf encoding of finished SDK spans, faster than the exporter's ``encode_spans``.

``encode_spans`` here returns the same ``ExportTraceServiceRequest`` as
``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`` (equal messages, equal
bytes): spans grouped by resource then instrumentation scope in order of first appearance,
every field set the same way, and an attribute whose value cannot be encoded logged and left
out. It builds the message in place instead of through one temporary Python object per field
and per attribute, takes the common attribute values (``int`` and ``str``) without type
dispatch, and groups by resource object identity before falling back to equality (the SDK
hashes a resource by dumping its attributes to JSON, once per span).

``GrpcSpanExporter`` is the OTLP/gRPC span exporter with this encoder. Once one exists in a
process, ``encode_spans`` keeps the encoding of each ended, sampled span it encodes (bounded)
and the exporter takes it instead of encoding the span a second time: a worker encodes each
task's spans for the task's final Flight message, and exports the same spans shortly after.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

from otel_dist.http_auth import printable

log = logging.getLogger(__name__)

_KINDS: Final = {
    SpanKind.INTERNAL: PbSpan.SpanKind.SPAN_KIND_INTERNAL,
    SpanKind.SERVER: PbSpan.SpanKind.SPAN_KIND_SERVER,
    SpanKind.CLIENT: PbSpan.SpanKind.SPAN_KIND_CLIENT,
    SpanKind.PRODUCER: PbSpan.SpanKind.SPAN_KIND_PRODUCER,
    SpanKind.CONSUMER: PbSpan.SpanKind.SPAN_KIND_CONSUMER,
}
_HAS_IS_REMOTE: Final = 0x100  # SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE: Final = 0x200  # SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_INT64_MIN: Final = -(1 << 63)
_INT64_END: Final = 1 << 63


class _EncodedSpans:
    """Spans already encoded for in-band telemetry, kept for the exporter (which gets the
    same spans a little later) by trace and span id: at most ``limit``, the oldest dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.enabled = False  # set when this process has an exporter that takes them
        self._lock = threading.Lock()
        self._spans: dict[tuple[int, int], bytes] = {}

    def put(self, key: tuple[int, int], data: bytes) -> None:
        with self._lock:
            self._spans[key] = data
            if len(self._spans) > self.limit:
                del self._spans[next(iter(self._spans))]

    def take(self, key: tuple[int, int]) -> bytes | None:
        with self._lock:
            return self._spans.pop(key, None)

    def __len__(self) -> int:
        return len(self._spans)


_ENCODED: Final = _EncodedSpans(limit=2048)  # the batch processor queues at most 2048 spans


def encode_spans(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The spans as one OTLP request, equal to the SDK exporter's ``encode_spans(spans)``."""
    return _encode(spans, keep=_ENCODED.enabled, reuse=False)


def _encode(spans: Sequence[ReadableSpan], keep: bool, reuse: bool) -> ExportTraceServiceRequest:
    """``keep``: remember each ended, sampled span's encoding for ``GrpcSpanExporter``;
    ``reuse``: take the encodings remembered (a span is encoded from the same data)."""
    request = ExportTraceServiceRequest()
    # Each span is built in place, in the ScopeSpans of its resource and scope (appending a
    # finished message would copy it). Groups are found by object identity first.
    groups: list[tuple[Resource, ResourceSpans, list[tuple[object, ScopeSpans]]]] = []
    by_resource: dict[int, tuple[Resource, ResourceSpans, list[tuple[object, ScopeSpans]]]] = {}
    by_scope: dict[tuple[int, int], ScopeSpans] = {}
    for sdk_span in spans:
        resource = sdk_span.resource
        scope = sdk_span.instrumentation_scope or None
        scope_spans = by_scope.get((id(resource), id(scope)))
        if scope_spans is None:
            group = by_resource.get(id(resource))
            if group is None:
                group = next((g for g in groups if g[0] == resource), None)
                if group is None:
                    group = (resource, _resource_spans(request, resource), [])
                    groups.append(group)
                by_resource[id(resource)] = group
            scope_spans = next((s for known, s in group[2] if known == scope), None)
            if scope_spans is None:
                scope_spans = _scope_spans(group[1], scope)
                group[2].append((scope, scope_spans))
            by_scope[(id(resource), id(scope))] = scope_spans
        pb = scope_spans.spans.add()
        if reuse:
            context = sdk_span.get_span_context()
            assert context is not None
            encoded = _ENCODED.take((context.trace_id, context.span_id))
            if encoded is not None:
                pb.MergeFromString(encoded)
                continue
        _add_span(pb, sdk_span)
        if keep and sdk_span.end_time is not None and sdk_span.context.trace_flags.sampled:
            _ENCODED.put(
                (sdk_span.context.trace_id, sdk_span.context.span_id), pb.SerializeToString()
            )
    return request


def _resource_spans(request: ExportTraceServiceRequest, resource: Resource) -> ResourceSpans:
    resource_spans = request.resource_spans.add()
    resource_spans.resource.SetInParent()
    _add_attributes(resource_spans.resource.attributes, resource.attributes)
    if resource.schema_url:
        resource_spans.schema_url = resource.schema_url
    return resource_spans


def _scope_spans(resource_spans: ResourceSpans, scope: InstrumentationScope | None) -> ScopeSpans:
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.SetInParent()
    if scope is not None:
        if scope.name:
            scope_spans.scope.name = scope.name
        if scope.version:
            scope_spans.scope.version = scope.version
        _add_attributes(scope_spans.scope.attributes, scope.attributes)
        if scope.schema_url:
            scope_spans.schema_url = scope.schema_url
    return scope_spans


def _add_span(pb: Any, sdk_span: ReadableSpan) -> None:
    context = sdk_span.get_span_context()
    assert context is not None
    pb.trace_id = context.trace_id.to_bytes(16, "big")
    pb.span_id = context.span_id.to_bytes(8, "big")
    trace_state = context.trace_state
    if trace_state:
        pb.trace_state = ",".join(f"{key}={value}" for key, value in trace_state.items())
    parent = sdk_span.parent
    if parent:
        pb.parent_span_id = parent.span_id.to_bytes(8, "big")
    pb.name = sdk_span.name
    pb.kind = _KINDS[sdk_span.kind]
    if sdk_span.start_time:
        pb.start_time_unix_nano = sdk_span.start_time
    if sdk_span.end_time:
        pb.end_time_unix_nano = sdk_span.end_time
    _add_attributes(pb.attributes, sdk_span.attributes)
    for event in sdk_span.events:
        pb_event = pb.events.add(name=event.name, time_unix_nano=event.timestamp)
        _add_attributes(pb_event.attributes, event.attributes)
        if event.dropped_attributes:
            pb_event.dropped_attributes_count = event.dropped_attributes
    for link in sdk_span.links:
        pb_link = pb.links.add(
            trace_id=link.context.trace_id.to_bytes(16, "big"),
            span_id=link.context.span_id.to_bytes(8, "big"),
            flags=_flags(link.context),
        )
        _add_attributes(pb_link.attributes, link.attributes)
        if link.dropped_attributes:
            pb_link.dropped_attributes_count = link.dropped_attributes
    status = sdk_span.status
    if status is not None:
        pb.status.SetInParent()
        if status.status_code.value:
            pb.status.code = status.status_code.value
        if status.description:
            pb.status.message = status.description
    if sdk_span.dropped_attributes:
        pb.dropped_attributes_count = sdk_span.dropped_attributes
    if sdk_span.dropped_events:
        pb.dropped_events_count = sdk_span.dropped_events
    if sdk_span.dropped_links:
        pb.dropped_links_count = sdk_span.dropped_links
    pb.flags = _flags(parent)


def _flags(context: SpanContext | None) -> int:
    return _HAS_IS_REMOTE | _IS_REMOTE if context and context.is_remote else _HAS_IS_REMOTE


def _add_attributes(target: Any, attributes: Mapping[str, object] | None) -> None:
    """Append ``KeyValue``s for ``attributes`` to the repeated field ``target``."""
    if not attributes:
        return
    add = target.add
    count = len(target)
    for key, value in attributes.items():
        try:
            kind = type(value)
            if kind is str:
                add(key=key).value.string_value = value
            elif kind is int and _INT64_MIN <= value < _INT64_END:  # type: ignore[operator]
                add(key=key).value.int_value = value
            elif kind is tuple or kind is list:  # the SDK keeps sequences as tuples
                _add_array(add(key=key).value.array_value, value)  # type: ignore[arg-type]
            else:
                add(key=key, value=_any_value(value))
            count += 1
        except Exception as error:
            if len(target) > count:  # added before the value failed: take it out again
                del target[count:]
            if isinstance(error, UnicodeEncodeError) and isinstance(value, str):
                # Text as a client sent it (lone surrogates from invalid UTF-8): kept, escaped.
                add(key=key).value.string_value = printable(value)
                count += 1
                continue
            log.exception("Failed to encode key %s: %s", key, error)


def _add_array(target: Any, items: Sequence[object]) -> None:
    target.SetInParent()
    add = target.values.add
    for item in items:
        kind = type(item)
        if kind is int and _INT64_MIN <= item < _INT64_END:  # type: ignore[operator]
            add(int_value=item)
        elif kind is str:
            add(string_value=item)
        else:
            target.values.append(_any_value(item))


def _any_value(value: object) -> AnyValue:
    """An attribute value as the SDK's OTLP encoder encodes it (raises on other types)."""
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, Sequence):
        return AnyValue(array_value=ArrayValue(values=[_any_value(item) for item in value]))
    if isinstance(value, Mapping):
        return AnyValue(
            kvlist_value=KeyValueList(
                values=[KeyValue(key=str(k), value=_any_value(v)) for k, v in value.items()]
            )
        )
    raise TypeError(f"Invalid type {type(value)} of value {value}")


class GrpcSpanExporter(OTLPSpanExporter):
    """The OTLP/gRPC span exporter, encoding with ``encode_spans`` above and reusing what
    ``encode_spans`` already encoded in this process (a task's spans, for its final message)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _ENCODED.enabled = True

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        return _encode(data, keep=False, reuse=True)
