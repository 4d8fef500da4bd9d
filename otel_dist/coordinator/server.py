"""The coordinator as a Flight service, for ``otel-dist coordinator`` and ``otel-dist query``."""

from __future__ import annotations

import logging

import pyarrow.flight as flight

from otel_dist.coordinator.core import Coordinator, QueryError
from otel_dist.planner.catalog import CatalogError
from otel_dist.planner.distribute import PlanningError
from otel_dist.protocol import ProtocolError, decode_json_object

log = logging.getLogger(__name__)

MAX_SQL_BYTES = 1 << 20


class CoordinatorServer(flight.FlightServerBase):
    """``do_get`` with a JSON ticket ``{"sql": ...}`` runs the query and streams its result."""

    def __init__(self, coordinator: Coordinator, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(location=f"grpc://{host}:{port}")
        self.coordinator = coordinator
        self.url = f"grpc://{host}:{self.port}"

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        try:
            if len(ticket.ticket) > MAX_SQL_BYTES:
                raise ProtocolError(f"query of {len(ticket.ticket)} bytes exceeds {MAX_SQL_BYTES}")
            sql = decode_json_object(ticket.ticket, "query ticket").get("sql")
            if not isinstance(sql, str) or not sql.strip():
                raise ProtocolError("query ticket needs a non-empty 'sql' string")
            result = self.coordinator.execute(sql)
        except (ProtocolError, PlanningError, CatalogError) as error:
            raise flight.FlightServerError(f"invalid argument: {error}") from None
        except QueryError as error:
            raise flight.FlightServerError(str(error)) from None
        return flight.RecordBatchStream(result.table)
