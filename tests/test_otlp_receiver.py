"""Tests for otel_dist.testing.otlp_receiver using the real OpenTelemetry SDK and exporters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode

from otel_dist.testing.otlp_receiver import (
    OtlpReceiver,
    SpanRecord,
    read_otlp_json_lines,
)

SERVICE_NAME = "otlp-receiver-test"
RESOURCE = Resource.create({"service.name": SERVICE_NAME})


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver(stop_grace_seconds=0.5) as started:
        yield started


def _export_parent_and_child(endpoint: str) -> None:
    """Export a parent and child span through the real OTLP gRPC exporter."""
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=5))
    )
    try:
        tracer = provider.get_tracer("tests.otlp_receiver")
        with (
            tracer.start_as_current_span("parent", attributes={"role": "parent"}) as parent,
            tracer.start_as_current_span(
                "child",
                attributes={"n": 3, "ratio": 0.5, "ok": True, "tags": ["a", "b"]},
                links=[Link(parent.get_span_context(), {"why": "test"})],
            ) as child,
        ):
            child.add_event("step", {"i": 1})
            child.set_status(Status(StatusCode.ERROR, "boom"))
    finally:
        provider.shutdown()


def _finished_spans() -> tuple[ReadableSpan, ...]:
    """Create one finished span without exporting it anywhere."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("tests.otlp_receiver").start_as_current_span("lonely"):
        pass
    provider.shutdown()
    return memory.get_finished_spans()


def test_endpoint_format(receiver: OtlpReceiver) -> None:
    assert receiver.endpoint == f"http://127.0.0.1:{receiver.port}"
    assert receiver.port > 0


def test_receives_parent_and_child_spans(receiver: OtlpReceiver) -> None:
    _export_parent_and_child(receiver.endpoint)

    spans = receiver.wait_for_spans(lambda spans: len(spans) >= 2, timeout=5)
    by_name: dict[str, SpanRecord] = {span.name: span for span in spans}
    assert set(by_name) == {"parent", "child"}
    parent, child = by_name["parent"], by_name["child"]

    assert len(parent.trace_id) == 32 and len(parent.span_id) == 16
    assert parent.trace_id == parent.trace_id.lower()
    assert parent.parent_span_id == ""
    assert child.trace_id == parent.trace_id
    assert child.parent_span_id == parent.span_id
    assert child.span_id != parent.span_id

    assert parent.attributes == {"role": "parent"}
    assert child.attributes == {"n": 3, "ratio": 0.5, "ok": True, "tags": ("a", "b")}
    assert child.events == ("step",)
    assert child.status_code == 2
    assert parent.resource["service.name"] == SERVICE_NAME
    assert 0 < parent.start_ns <= child.start_ns <= child.end_ns <= parent.end_ns


def test_receives_metrics(receiver: OtlpReceiver) -> None:
    exporter = OTLPMetricExporter(endpoint=receiver.endpoint, insecure=True, timeout=5)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    try:
        counter = provider.get_meter("tests.otlp_receiver").create_counter("test.requests")
        counter.add(2, {"route": "/x"})
        assert provider.force_flush(timeout_millis=5_000)
        assert "test.requests" in receiver.metric_names()
    finally:
        provider.shutdown(timeout_millis=5_000)

    received = [m for m in receiver.metrics() if m.metric.name == "test.requests"]
    assert received
    assert received[0].resource["service.name"] == SERVICE_NAME
    assert received[0].scope_name == "tests.otlp_receiver"
    assert received[0].metric.sum.data_points[0].as_int == 2


def test_receives_logs_via_official_stub(receiver: OtlpReceiver) -> None:
    request = logs_service_pb2.ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add()
    record.body.string_value = "hello"
    with grpc.insecure_channel(receiver.endpoint.removeprefix("http://")) as channel:
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(request, timeout=5)
    stored = receiver.logs_requests()
    assert stored == [request]
    assert isinstance(stored[0].resource_logs[0].scope_logs[0].log_records[0], logs_pb2.LogRecord)


def test_otlp_json_round_trip(receiver: OtlpReceiver, tmp_path: Path) -> None:
    _export_parent_and_child(receiver.endpoint)
    _export_parent_and_child(receiver.endpoint)
    receiver.wait_for_spans(lambda spans: len(spans) >= 4, timeout=5)
    original = receiver.trace_requests()
    path = tmp_path / "traces.jsonl"

    receiver.write_otlp_json(path)

    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(original) == 4  # SimpleSpanProcessor: one request per span
    spans_by_name = {}
    for line in lines:
        decoded = json.loads(line)
        for span in decoded["resourceSpans"][0]["scopeSpans"][0]["spans"]:
            spans_by_name[span["name"]] = span
    child, parent = spans_by_name["child"], spans_by_name["parent"]
    assert len(child["traceId"]) == 32 and child["traceId"] == child["traceId"].lower()
    assert int(child["traceId"], 16) and int(child["spanId"], 16)
    assert child["parentSpanId"] == parent["spanId"]
    assert child["links"][0]["spanId"] == parent["spanId"]
    assert "parentSpanId" not in parent
    assert isinstance(child["kind"], int) and child["status"]["code"] == 2
    assert "startTimeUnixNano" in child

    assert read_otlp_json_lines(path) == original


def test_unavailable_mode_fails_and_stores_nothing(receiver: OtlpReceiver) -> None:
    spans = _finished_spans()
    # timeout < the exporter's first retry backoff (>= 0.8 s), so it fails without retrying.
    exporter = OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True, timeout=0.5)
    try:
        receiver.mode = "unavailable"
        assert exporter.export(spans) == SpanExportResult.FAILURE
        assert receiver.spans() == []
        assert receiver.trace_requests() == []
        assert receiver.rejected_exports == 1

        receiver.mode = "ok"
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        assert [span.name for span in receiver.spans()] == ["lonely"]
    finally:
        exporter.shutdown()


def test_slow_mode(receiver: OtlpReceiver) -> None:
    spans = _finished_spans()
    receiver.mode = "slow"

    receiver.slow_seconds = 0.2
    patient = OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True, timeout=5)
    try:
        assert patient.export(spans) == SpanExportResult.SUCCESS
    finally:
        patient.shutdown()
    assert len(receiver.spans()) == 1

    receiver.slow_seconds = 30.0  # released early by stop()
    hasty = OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True, timeout=0.3)
    try:
        assert hasty.export(spans) == SpanExportResult.FAILURE
    finally:
        hasty.shutdown()
    receiver.stop()
    assert len(receiver.spans()) == 1


def test_wait_for_spans_timeout(receiver: OtlpReceiver) -> None:
    with pytest.raises(TimeoutError) as excinfo:
        receiver.wait_for_spans(lambda spans: len(spans) > 0, timeout=0.1)
    assert "\n" not in str(excinfo.value)


def test_clear_and_mode_validation(receiver: OtlpReceiver) -> None:
    _export_parent_and_child(receiver.endpoint)
    assert len(receiver.spans()) == 2
    receiver.clear()
    assert receiver.spans() == [] and receiver.trace_requests() == []
    with pytest.raises(ValueError, match="mode must be one of"):
        receiver.mode = "broken"  # type: ignore[assignment]
