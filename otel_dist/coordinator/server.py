"""The coordinator as a Flight service, for ``otel-dist coordinator`` and ``otel-dist query``.

``do_get`` takes a JSON ticket ``{"sql": ..., "query_id": optional, "telemetry": bool}`` and
streams the statement's result (EXPLAIN statements return their plan text). With
``telemetry`` the stream ends, like a worker's, with a final message carrying every span of
the query, so the client can build the EXPLAIN ANALYZE tree. The action
``query_telemetry {query_id}`` returns the spans of a recent query, failed ones included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight

from otel_dist.coordinator.core import Coordinator, QueryError
from otel_dist.explain.recent import RecentQueries
from otel_dist.explain.statements import run_sql
from otel_dist.planner.catalog import CatalogError
from otel_dist.planner.distribute import PlanningError
from otel_dist.protocol import ProtocolError, decode_json_object
from otel_dist.telemetry import envelope
from otel_dist.telemetry.envelope import Envelope

log = logging.getLogger(__name__)

MAX_SQL_BYTES = 1 << 20
ACTION_QUERY_TELEMETRY = "query_telemetry"


class CoordinatorServer(flight.FlightServerBase):
    """Runs SQL for remote clients; keeps recent queries' spans for ``query_telemetry``."""

    def __init__(
        self,
        coordinator: Coordinator,
        host: str = "127.0.0.1",
        port: int = 0,
        recent: RecentQueries | None = None,
    ) -> None:
        super().__init__(location=f"grpc://{host}:{port}")
        self.coordinator = coordinator
        self.url = f"grpc://{host}:{self.port}"
        self.recent = recent or RecentQueries()
        if recent is None:
            coordinator.add_listener(self.recent)

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        try:
            if len(ticket.ticket) > MAX_SQL_BYTES:
                raise ProtocolError(f"query of {len(ticket.ticket)} bytes exceeds {MAX_SQL_BYTES}")
            request = decode_json_object(ticket.ticket, "query ticket")
            sql, query_id = request.get("sql"), request.get("query_id")
            if not isinstance(sql, str) or not sql.strip():
                raise ProtocolError("query ticket needs a non-empty 'sql' string")
            if query_id is not None and not isinstance(query_id, str):
                raise ProtocolError("query ticket's 'query_id' must be a string")
            if not request.get("telemetry"):
                return flight.RecordBatchStream(run_sql(self.coordinator, sql))
            result = self.coordinator.execute(sql, query_id)
        except (ProtocolError, PlanningError, CatalogError) as error:
            raise flight.FlightServerError(f"invalid argument: {error}") from None
        except QueryError as error:
            raise flight.FlightServerError(str(error)) from None
        final = (
            envelope.encode(Envelope(result.query_id, (), result.telemetry.otlp))
            if result.telemetry is not None and result.telemetry.otlp is not None
            else None
        )
        return flight.GeneratorStream(result.table.schema, _with_final(result.table, final))

    def do_action(
        self, context: flight.ServerCallContext, action: flight.Action
    ) -> Iterator[bytes]:
        if action.type != ACTION_QUERY_TELEMETRY:
            raise flight.FlightServerError(f"invalid argument: unknown action {action.type!r}")
        try:
            query_id = decode_json_object(action.body.to_pybytes(), "action body").get("query_id")
        except ProtocolError as error:
            raise flight.FlightServerError(f"invalid argument: {error}") from None
        query = self.recent.get(query_id) if isinstance(query_id, str) else None
        if query is None or query.otlp is None:
            raise flight.FlightServerError(f"not found: no telemetry for query {query_id}")
        return iter([envelope.encode(Envelope(query.query_id, (), query.otlp))])


def _with_final(table: pa.Table, final: bytes | None) -> Iterator[object]:
    yield from table.to_batches()
    if final is not None:
        yield pa.RecordBatch.from_pylist([], schema=table.schema), pa.py_buffer(final)
