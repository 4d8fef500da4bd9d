"""The two places otel_dist reaches into the OpenTelemetry SDK's private parts, held against the
installed SDK: a new SDK release that moves them fails here, not silently in production.

* ``GrpcSpanExporter`` overrides the OTLP exporter's ``_translate_data`` to encode with
  otel_dist's faster encoder (measured in ``benchmarks/RESULTS.md``): the exporter must still
  call it, and what arrives must be the spans sent.
* ``CountingBatchSpanProcessor`` swaps the batch processor's private queue for one that counts
  drops (the SDK's own ``otel.sdk.processor.span.processed`` counter is only there when
  ``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED`` is set): the queue must be found, and every
  span handed to it is either exported or counted as dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_dist.telemetry import otlp_encode
from otel_dist.telemetry.otlp_encode import GrpcSpanExporter
from otel_dist.telemetry.span_export import (
    CountingBatchSpanProcessor,
    CountingSpanExporter,
    SpanExportStats,
)
from otel_dist.testing.otlp_receiver import OtlpReceiver


def _spans(count: int) -> list[ReadableSpan]:
    tracer = TracerProvider().get_tracer("otel_dist.tests")
    spans = []
    for index in range(count):
        span = tracer.start_span(f"span-{index}")
        span.end()
        spans.append(span)
    return spans  # type: ignore[return-value]


def test_the_grpc_exporter_still_encodes_through_otel_dists_encoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    encode = otlp_encode._encode

    def counting(data: Sequence[ReadableSpan], **kwargs: bool) -> object:
        calls.append(len(data))
        return encode(data, **kwargs)

    monkeypatch.setattr(otlp_encode, "_encode", counting)
    with OtlpReceiver() as receiver:
        exporter = GrpcSpanExporter(endpoint=receiver.endpoint, insecure=True)
        try:
            assert exporter.export(_spans(3)) == SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        received = receiver.wait_for_spans(lambda spans: len(spans) >= 3, timeout=10)
    assert calls == [3], "the SDK's exporter no longer calls _translate_data"
    assert sorted(s.name for s in received) == ["span-0", "span-1", "span-2"]


class _HeldExporter(SpanExporter):
    """Exports nothing until released, so that the processor's queue fills."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.released.wait(30)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.released.set()


def test_a_full_queue_counts_every_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    stats = SpanExportStats()
    held = _HeldExporter()
    processor = CountingBatchSpanProcessor(CountingSpanExporter(held, stats), stats)
    assert processor.counts_drops, "the SDK keeps its span queue elsewhere now"
    try:
        for span in _spans(50):
            processor.on_end(span)
        assert stats.snapshot()["dropped"] >= 50 - 8 - 4  # the queue, and one batch in flight
    finally:
        held.released.set()
        processor.force_flush(10_000)
        processor.shutdown()
    counts = stats.snapshot()
    assert counts["submitted"] == 50
    assert counts["exported"] + counts["dropped"] == 50, counts
