"""OTLP trace data as otel_dist reads it: flat span records, attribute decoding, OTLP/JSON.

OTLP/JSON here is the format of the OpenTelemetry Collector's ``file`` exporter: one
``ExportTraceServiceRequest`` per line, trace and span ids as lowercase hex.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

# Fields of Span and Span.Link that OTLP/JSON encodes as lowercase hex instead of base64.
_SPAN_ID_KEYS: Final = ("traceId", "spanId", "parentSpanId")
_LINK_ID_KEYS: Final = ("traceId", "spanId")


@dataclass(frozen=True)
class SpanRecord:
    """One span as received, decoded from OTLP into plain Python values.

    Ids are lowercase hex (``trace_id`` 32 chars, ``span_id`` 16 chars); ``parent_span_id``
    is ``""`` for a root span. ``attributes`` and ``resource`` hold decoded ``AnyValue``s
    (see ``decode_any_value``). ``status_code`` is the ``Status.StatusCode`` integer
    (0 unset, 1 ok, 2 error); ``events`` are the event names in order. ``kind`` is the OTLP
    ``SpanKind`` integer (1 internal, 2 server, 3 client); ``links`` the linked span ids.
    """

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, object]
    resource: dict[str, object]
    status_code: int
    events: tuple[str, ...]
    status_message: str = ""
    kind: int = 0
    links: tuple[str, ...] = ()


def span_records(requests: Iterable[ExportTraceServiceRequest]) -> list[SpanRecord]:
    """Every span of the requests, flattened (resource_spans -> scope_spans -> spans)."""
    result: list[SpanRecord] = []
    for request in requests:
        for resource_spans in request.resource_spans:
            resource = decode_attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    result.append(
                        SpanRecord(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes=decode_attributes(span.attributes),
                            resource=resource,
                            status_code=int(span.status.code),
                            events=tuple(event.name for event in span.events),
                            status_message=span.status.message,
                            kind=int(span.kind),
                            links=tuple(link.span_id.hex() for link in span.links),
                        )
                    )
    return result


# --------------------------------------------------------------------------------------------
# AnyValue decoding
# --------------------------------------------------------------------------------------------


def decode_any_value(value: AnyValue) -> object:
    """Decode an OTLP ``AnyValue`` to Python.

    string/bool/int/double map to ``str``/``bool``/``int``/``float``, arrays to tuples,
    key-value lists to dicts, bytes to ``bytes`` and an empty value to ``None``.
    """
    kind = value.WhichOneof("value")
    if kind == "int_value":
        return value.int_value
    if kind == "string_value":
        return value.string_value
    if kind == "array_value":
        return _decode_array(value.array_value.values)
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        return value.double_value
    if kind == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value
    return None


def _decode_array(values: Iterable[AnyValue]) -> tuple[object, ...]:
    return tuple(
        [
            item.int_value if item.WhichOneof("value") == "int_value" else decode_any_value(item)
            for item in values
        ]
    )


def decode_attributes(attributes: Iterable[KeyValue]) -> dict[str, object]:
    """Decode repeated OTLP ``KeyValue``s to a dict (a later duplicate key wins)."""
    result: dict[str, object] = {}
    for attribute in attributes:
        value = attribute.value
        kind = value.WhichOneof("value")  # the common kinds inline, the others as above
        if kind == "int_value":
            result[attribute.key] = value.int_value
        elif kind == "string_value":
            result[attribute.key] = value.string_value
        elif kind == "array_value":
            result[attribute.key] = _decode_array(value.array_value.values)
        else:
            result[attribute.key] = decode_any_value(value)
    return result


# --------------------------------------------------------------------------------------------
# OTLP/JSON (file exporter format)
# --------------------------------------------------------------------------------------------


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _hex_to_b64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def _convert_ids(request_dict: dict[str, Any], convert: Callable[[str], str]) -> None:
    """Apply ``convert`` in place to every span/link id in a camelCase trace request dict."""
    for resource_spans in request_dict.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                for key in _SPAN_ID_KEYS:
                    if key in span:
                        span[key] = convert(span[key])
                for link in span.get("links", ()):
                    for key in _LINK_ID_KEYS:
                        if key in link:
                            link[key] = convert(link[key])


def trace_request_to_otlp_json(request: ExportTraceServiceRequest) -> str:
    """Encode one trace request as a single line of OTLP/JSON (no trailing newline).

    Differences from plain proto3 JSON, per the OTLP/JSON spec: trace and span ids are
    lowercase hex strings instead of base64, and enums are integers. Keys are lowerCamelCase
    and 64-bit integers are strings (both as proto3 JSON does it, both allowed by OTLP).
    """
    request_dict = json_format.MessageToDict(request, use_integers_for_enums=True)
    _convert_ids(request_dict, _b64_to_hex)
    return json.dumps(request_dict, separators=(",", ":"), ensure_ascii=False)


def trace_request_from_otlp_json(line: str) -> ExportTraceServiceRequest:
    """Parse one line of OTLP/JSON (hex ids) back into an ``ExportTraceServiceRequest``.

    Unknown fields are ignored, as the OTLP/JSON spec requires of receivers. Raises
    ``ValueError`` for malformed JSON, ids that are not hex, or invalid field values.
    """
    request_dict = json.loads(line)
    if not isinstance(request_dict, dict):
        raise ValueError(f"expected a JSON object, got {type(request_dict).__name__}")
    _convert_ids(request_dict, _hex_to_b64)
    request = ExportTraceServiceRequest()
    json_format.ParseDict(request_dict, request, ignore_unknown_fields=True)
    return request


def read_otlp_json_lines(path: str | os.PathLike[str]) -> list[ExportTraceServiceRequest]:
    """Read a file written by ``OtlpReceiver.write_otlp_json`` (or a Collector ``file``
    exporter for traces): one ``ExportTraceServiceRequest`` per non-blank line."""
    requests: list[ExportTraceServiceRequest] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                requests.append(trace_request_from_otlp_json(line))
            except (ValueError, json_format.ParseError) as error:
                raise ValueError(f"{path}:{line_number}: invalid OTLP/JSON: {error}") from error
    return requests
