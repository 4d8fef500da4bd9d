"""The telemetry envelope codec and the reactive router, on real Flight streams and fuzzed bytes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otel_dist.exchange.router import StreamStats, route
from otel_dist.telemetry import envelope
from otel_dist.telemetry.collector import SpanCollector
from otel_dist.telemetry.envelope import Envelope, EnvelopeError, TaskRef

SCHEMA = pa.schema([("x", pa.int64()), ("s", pa.string())])


def _request(span_ids: list[bytes]) -> ExportTraceServiceRequest:
    spans = [Span(trace_id=b"t" * 16, span_id=i, name="op") for i in span_ids]
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )


def _chunk(span_ids: list[bytes]) -> bytes:
    return _request(span_ids).SerializeToString()


def _message(query_id: str, task: TaskRef, span_ids: list[bytes]) -> bytes:
    return envelope.encode(query_id, [(task, _chunk(span_ids))])


class _Server(flight.FlightServerBase):
    """Streams fixed batches with telemetry messages in between and at the end."""

    def __init__(self, messages: list[bytes]) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.messages = messages

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        return flight.GeneratorStream(SCHEMA, self._items())

    def _items(self) -> Iterator[object]:
        empty = pa.RecordBatch.from_pylist([], schema=SCHEMA)
        for index in range(5):
            yield pa.record_batch(
                [pa.array([index] * 3), pa.array(["a", "b", None])], schema=SCHEMA
            )
        for message in self.messages:
            yield empty, pa.py_buffer(message)


@pytest.fixture
def server_factory() -> Iterator[object]:
    servers: list[_Server] = []

    def make(messages: list[bytes]) -> flight.FlightStreamReader:
        server = _Server(messages)
        servers.append(server)
        return flight.FlightClient(f"grpc://127.0.0.1:{server.port}").do_get(flight.Ticket(b"t"))

    yield make
    for server in servers:
        server.shutdown()


def test_router_passes_data_and_hands_telemetry_to_the_sink(server_factory) -> None:  # type: ignore[no-untyped-def]
    good = _message("q", TaskRef(1, 0), [b"12345678"])
    received: list[bytes] = []
    stats = StreamStats()
    batches = list(route(server_factory([good]), received.append, stats))
    assert [b.num_rows for b in batches] == [3] * 5
    assert received == [good]
    assert stats.rows == 15 and stats.telemetry_messages == 1 and stats.first_batch_ns is not None
    assert stats.batches == 5 and stats.telemetry_bytes == len(good)
    # the bytes received: each batch's buffers, its logical size up to the bitmaps' padding
    assert stats.bytes == sum(b.get_total_buffer_size() for b in batches)
    assert 0 < sum(b.nbytes for b in batches) <= stats.bytes <= sum(b.nbytes + 64 for b in batches)


def test_malformed_telemetry_never_alters_data(server_factory) -> None:  # type: ignore[no-untyped-def]
    collector = SpanCollector("q")
    reference = list(route(server_factory([]), None))
    routed = list(
        route(
            server_factory([b"garbage", envelope.MAGIC + b"\xff\xff\xff\xff"]),
            collector.add_message,
        )
    )
    assert pa.Table.from_batches(routed).equals(pa.Table.from_batches(reference))
    assert collector.malformed == 2 and collector.tasks() == set()


def test_failing_sink_is_counted_not_raised(server_factory) -> None:  # type: ignore[no-untyped-def]
    def explode(_: bytes) -> None:
        raise RuntimeError("sink down")

    stats = StreamStats()
    assert sum(b.num_rows for b in route(server_factory([b"x"]), explode, stats)) == 15
    assert stats.telemetry_failures == 1


def test_collector_keeps_each_tasks_spans_once_and_only_its_querys() -> None:
    collector = SpanCollector("q")
    first = _message("q", TaskRef(1, 0), [b"aaaaaaaa", b"bbbbbbbb"])
    collector.add_message(first)
    collector.add_message(first)  # the same task's spans forwarded again by another path
    collector.add_message(_message("q", TaskRef(1, 1), [b"cccccccc"]))
    assert sorted(span.span_id for span in collector.spans()) == [
        "6161616161616161",
        "6262626262626262",
        "6363636363636363",
    ]
    collector.add_message(_message("other", TaskRef(1, 2), [b"dddddddd"]))
    assert collector.malformed == 1 and collector.tasks() == {TaskRef(1, 0), TaskRef(1, 1)}


def test_a_task_whose_spans_do_not_parse_counts_as_not_received() -> None:
    collector = SpanCollector("q")
    collector.add_message(_message("q", TaskRef(1, 0), [b"aaaaaaaa"]))
    collector.add_message(envelope.encode("q", [(TaskRef(1, 1), b"\x0a\xff\xff")]))
    assert collector.tasks() == {TaskRef(1, 0), TaskRef(1, 1)}
    assert [span.span_id for span in collector.spans()] == ["6161616161616161"]
    assert collector.malformed == 1 and collector.tasks() == {TaskRef(1, 0)}


def test_forwarding_envelope_joins_chunks_to_its_limit() -> None:
    collector = SpanCollector("q")
    for task in range(5):
        collector.add_message(_message("q", TaskRef(1, task), [bytes([task]) * 8]))
    own = _chunk([b"ownspan!"])
    full = envelope.decode(collector.forwarding_envelope(TaskRef(2, 0), own, 1 << 20))
    assert not full.truncated and len(full.tasks) == 6
    assert len(full.request().resource_spans) == 6  # the chunks join into one valid request
    cut = envelope.decode(collector.forwarding_envelope(TaskRef(2, 0), own, len(own) * 3))
    assert cut.truncated and cut.tasks[0] == TaskRef(2, 0) and len(cut.tasks) == 3
    downstream = SpanCollector("q")
    downstream.add_message(collector.forwarding_envelope(TaskRef(2, 0), own, len(own) * 3))
    assert downstream.truncated == 1 and len(downstream.tasks()) == 3


_VALID = _message("q", TaskRef(1, 2), [b"12345678"])


@settings(max_examples=10_000, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=16).map(lambda noise: _VALID[:8] + noise),  # a header length
        st.builds(
            lambda noise, at: _VALID[:at] + noise + _VALID[at + len(noise) :],
            st.binary(min_size=1, max_size=8),
            st.integers(0, len(_VALID)),
        ),
    )
)
def test_decoding_random_bytes_only_raises_envelope_errors(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        envelope.decode(data)


@settings(max_examples=2000, deadline=None)
@given(
    st.text(max_size=40),
    st.lists(
        st.tuples(st.integers(-1, 1000), st.integers(-1, 1000), st.binary(max_size=40)),
        max_size=8,
    ),
    st.booleans(),
)
def test_envelope_round_trip(
    query_id: str, chunks: list[tuple[int, int, bytes]], truncated: bool
) -> None:
    original = Envelope(query_id, tuple((TaskRef(s, t), c) for s, t, c in chunks), truncated)
    assert envelope.decode(envelope.encode(query_id, original.chunks, truncated)) == original


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(0, 200))
def test_damaged_envelopes_are_rejected_or_decoded_never_crash(noise: bytes, position: int) -> None:
    position = min(position, len(_VALID))
    damaged = _VALID[:position] + noise + _VALID[position + len(noise) :]
    with contextlib.suppress(EnvelopeError):
        decoded = envelope.decode(damaged)
        assert sum(len(chunk) for _, chunk in decoded.chunks) <= len(damaged)
    collector = SpanCollector("q")  # nor does collecting it, or reading its spans
    collector.add_message(damaged)
    collector.spans()
