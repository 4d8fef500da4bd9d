"""otel_dist's OTLP span encoder (``telemetry/otlp_encode.py``) writes the same bytes as the
OpenTelemetry SDK exporter's encoder, for spans made by the SDK's tracer and for the finished
``ReadableSpan``s that task telemetry builds directly (lists where the SDK keeps tuples)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from otel_dist.telemetry.otlp_encode import encode_spans

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SCALAR = st.one_of(st.text(max_size=20), INT64, st.booleans(), st.floats(allow_nan=False))
VALUE = st.one_of(
    SCALAR,
    st.lists(INT64, max_size=6),
    st.lists(st.text(max_size=5), max_size=4),
    st.tuples(INT64, INT64),
)
ATTRIBUTES = st.dictionaries(st.text(min_size=1, max_size=12), VALUE, max_size=8)


def _same_bytes(spans: list[Any]) -> None:
    assert encode_spans(spans).SerializeToString() == sdk_encode(spans).SerializeToString()


def test_sdk_spans_encode_as_the_sdk_does() -> None:
    provider = TracerProvider(resource=Resource({"service.name": "t", "n": 3}))
    tracer = provider.get_tracer("scope", "1.0")
    remote = SpanContext(
        0xABC, 0xDEF, True, TraceFlags(TraceFlags.SAMPLED), TraceState([("k", "v")])
    )
    parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    spans = []
    with tracer.start_as_current_span("root", context=parent, kind=SpanKind.SERVER) as root:
        root.set_attribute("partitions", [0, 1, 2])
        root.set_attribute("names", ["a", "b"])
        root.set_attribute("ratio", 0.5)
        root.set_attribute("flag", True)
        root.add_event("failed", {"reason": "x"}, timestamp=5)
        root.add_link(remote, {"why": "retry"})
        root.set_status(Status(StatusCode.ERROR, "boom"))
        spans.append(root)
    other = TracerProvider(resource=Resource({"service.name": "u"})).get_tracer("other")
    child = other.start_span("child", links=[Link(remote)], start_time=7)
    child.end(end_time=9)
    spans.append(child)
    _same_bytes(spans)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(attributes=st.lists(ATTRIBUTES, min_size=1, max_size=4), remote=st.booleans())
def test_finished_readable_spans_encode_as_the_sdk_does(
    attributes: list[dict[str, Any]], remote: bool
) -> None:
    resource = Resource({"service.name": "worker"})
    scope = InstrumentationScope("otel_dist")
    parent = SpanContext(1, 2, remote, TraceFlags(TraceFlags.SAMPLED))
    spans = [
        ReadableSpan(
            f"op{index}",
            context=SpanContext(1, 100 + index, False, TraceFlags(TraceFlags.SAMPLED)),
            parent=parent,
            resource=resource,
            attributes=values,
            kind=SpanKind.INTERNAL,
            start_time=10 + index,
            end_time=20 + index,
            instrumentation_scope=scope,
        )
        for index, values in enumerate(attributes)
    ]
    _same_bytes(spans)
