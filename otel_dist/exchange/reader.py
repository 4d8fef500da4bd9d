"""Reading one bucket of a remote task over Flight, through the reactive router."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight

from otel_dist.exchange.clients import call_options, client_for
from otel_dist.exchange.router import StreamStats, TelemetrySink, route
from otel_dist.exchange.security import NO_SECURITY, SecurityConfig
from otel_dist.protocol import BucketSource, BucketTicket
from otel_dist.telemetry.task_spans import ReadRecord


def read_bucket(
    source: BucketSource,
    query_id: str,
    timeout_s: float,
    on_telemetry: TelemetrySink | None,
    stats: StreamStats,
    headers: dict[str, str] | None = None,
    security: SecurityConfig = NO_SECURITY,
) -> Iterator[pa.RecordBatch]:
    """Stream one upstream bucket through the router."""
    ticket = BucketTicket(
        query_id, source.stage_id, source.task_index, source.bucket, source.telemetry
    )
    client = client_for(source.worker_url, security)
    reader = client.do_get(
        flight.Ticket(ticket.to_bytes()), options=call_options(timeout_s, headers)
    )
    yield from route(reader, on_telemetry, stats)


def read_record(
    source: BucketSource, stats: StreamStats, started_ns: int, ended_ns: int, span_id: int = 0
) -> ReadRecord:
    return ReadRecord(
        endpoint=source.worker_url,
        stage_id=source.stage_id,
        task_index=source.task_index,
        bucket=source.bucket,
        started_ns=started_ns,
        ended_ns=ended_ns or time.time_ns(),
        rows=stats.rows,
        batches=stats.batches,
        bytes=stats.bytes,
        first_batch_ns=stats.first_batch_ns,
        blocked_ns=stats.blocked_ns,
        telemetry_bytes=stats.telemetry_bytes,
        span_id=span_id,
        grpc_status_code=stats.grpc_status_code,
    )
