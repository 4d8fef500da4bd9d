"""The coordinator as a Flight service, for ``otel-dist coordinator`` and ``otel-dist query``.

``do_get`` takes a JSON ticket ``{"sql": ..., "query_id": optional, "telemetry": bool}`` and
streams the statement's result (EXPLAIN statements return their plan text). With
``telemetry`` the stream ends, like a worker's, with a final message carrying every span of
the query, so the client can build the EXPLAIN ANALYZE tree. A ticket's ``query_id`` (a name the client
chooses, e.g. to cancel the query) must not be in use by a running or recent query: such a
ticket is refused and the other query left alone; without one the coordinator assigns an id. The action
``query_telemetry {query_id}`` returns the spans of a recent query, failed ones included;
``cancel_query {query_id}`` cancels a running one. Workers announce themselves with
``register_worker {url}`` (a heartbeat, see ``membership.py``) and leave with
``unregister_worker {url}``; ``query_progress {query_id}`` gives a
running query's progress per stage (tasks done, running, queued; rows so far), and
``cluster_status`` every worker's state and load with every query in flight (for
``otel-dist top``), both as JSON.

A client that goes away (disconnects, hits its deadline, is interrupted) cancels its query on
every worker: the statement runs on a separate thread while the call's handler watches
``context.is_cancelled()``. Malformed tickets and refused statements are INVALID_ARGUMENT;
with a token configured, calls without it are UNAUTHENTICATED. Clients get one-line errors,
tracebacks stay in the log (``exchange/server_errors.py``).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_dist.coordinator.core import Coordinator, QueryError, QueryRejected
from otel_dist.coordinator.streaming import cancel_until_done, stream_result
from otel_dist.errors import one_line
from otel_dist.exchange.security import SecurityConfig, server_location, server_options
from otel_dist.exchange.server_errors import (
    UnsupportedCalls,
    failed_stream,
    for_client,
)
from otel_dist.explain.recent import RecentQueries
from otel_dist.explain.statements import parse_explain, run_sql
from otel_dist.planner.catalog import CatalogError
from otel_dist.planner.distribute import PlanningError
from otel_dist.protocol import (
    ACTION_CANCEL_QUERY,
    ACTION_CLUSTER_STATUS,
    ACTION_QUERY_PROGRESS,
    ACTION_QUERY_TELEMETRY,
    ACTION_REGISTER_WORKER,
    ACTION_UNREGISTER_WORKER,
    ProtocolError,
    decode_json_object,
    decode_query_id,
    decode_worker_url,
    invalid_argument,
    not_found,
)
from otel_dist.session import plain_schema
from otel_dist.telemetry import envelope
from otel_dist.telemetry.envelope import NO_TASK

log = logging.getLogger(__name__)

__all__ = ["ACTION_QUERY_TELEMETRY", "CoordinatorServer"]

WATCH_INTERVAL_S = 0.1
_TICKET_OVERHEAD = 4096  # the JSON around the SQL text


class CoordinatorServer(UnsupportedCalls, flight.FlightServerBase):
    """Runs SQL for remote clients; keeps recent queries' spans for ``query_telemetry``."""

    def __init__(
        self,
        coordinator: Coordinator,
        host: str = "127.0.0.1",
        port: int = 0,
        recent: RecentQueries | None = None,
        security: SecurityConfig | None = None,
    ) -> None:
        """``security`` defaults to the coordinator's own (same certificate, its client token:
        clients never need the internal secret)."""
        security = coordinator.config.security if security is None else security
        super().__init__(location=server_location(host, port, security), **server_options(security))
        self.coordinator = coordinator
        self.url = server_location(host, self.port, security)
        self.recent = recent or RecentQueries()
        if recent is None:
            coordinator.add_listener(self.recent)

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        query_id = ""
        try:
            sql, query_id, telemetry = self._decode_ticket(ticket.ticket)
            if not telemetry and parse_explain(sql) is None:
                plan = self.coordinator.plan(sql)  # refused SQL: an error before any data
                schema = plain_schema(plan.output_schema)
                self.coordinator.claim(query_id)  # a reused id too, before the stream opens
                return flight.GeneratorStream(schema, self._streamed(context, sql, query_id))
            result = self._run_watched(context, sql, query_id, telemetry)
        except (ProtocolError, PlanningError, CatalogError, QueryRejected) as error:
            return failed_stream(invalid_argument(one_line(error)))
        except QueryError as error:
            raise flight.FlightServerError(str(error)) from None
        except Exception as error:  # never a Python traceback to the client
            raise for_client(error, f"query {query_id}") from None
        if isinstance(result, pa.Table):
            return flight.GeneratorStream(result.schema, _stream(context, result, None))
        final = (
            _query_envelope(result.query_id, result.telemetry.otlp)
            if result.telemetry is not None and result.telemetry.otlp is not None
            else None
        )
        return flight.GeneratorStream(result.table.schema, _stream(context, result.table, final))

    def _streamed(
        self, context: flight.ServerCallContext, sql: str, query_id: str
    ) -> Iterator[pa.RecordBatch]:
        """A plain query's result as the root stage's tasks produce it (``stream_result``):
        a client that goes away cancels the query everywhere."""
        try:
            yield from stream_result(
                self.coordinator, sql, query_id, context.is_cancelled, claimed=True
            )
        except Exception as error:
            raise _mid_stream(_flight_error(query_id, error)) from None

    def _decode_ticket(self, data: bytes) -> tuple[str, str, bool]:
        limit = self.coordinator.config.max_sql_bytes * 6 + _TICKET_OVERHEAD  # JSON escapes
        if len(data) > limit:
            raise QueryRejected(
                f"query ticket of {len(data)} bytes exceeds the SQL limit of "
                f"{self.coordinator.config.max_sql_bytes} bytes (max_sql_bytes)"
            )
        request = decode_json_object(data, "query ticket")
        sql, query_id = request.get("sql"), request.get("query_id")
        if not isinstance(sql, str) or not sql.strip():
            raise ProtocolError("query ticket needs a non-empty 'sql' string")
        if query_id is not None and (not isinstance(query_id, str) or not query_id):
            raise ProtocolError("query ticket's 'query_id' must be a non-empty string")
        return sql, query_id or uuid.uuid4().hex, bool(request.get("telemetry"))

    def _run_watched(
        self, context: flight.ServerCallContext, sql: str, query_id: str, telemetry: bool
    ) -> Any:
        """Run the statement on its own thread; cancel it if the client goes away. The id is
        claimed first, so that a ticket reusing another query's id is refused before anything
        (its client going away included) can touch that query."""
        self.coordinator.claim(query_id)
        outcome: dict[str, Any] = {}
        done = threading.Event()
        runner = _Named(self.coordinator, query_id)

        def run() -> None:
            try:
                outcome["value"] = (
                    self.coordinator.execute(sql, query_id, claimed=True)
                    if telemetry
                    else run_sql(runner, sql)
                )
            except BaseException as error:
                outcome["error"] = error
            finally:
                done.set()

        threading.Thread(target=run, name=f"query-{query_id[:12]}", daemon=True).start()
        while not done.wait(WATCH_INTERVAL_S):
            if context.is_cancelled():
                log.info("client of query %s went away: cancelling it", query_id)
                threading.Thread(
                    target=cancel_until_done, args=(self.coordinator, query_id, done), daemon=True
                ).start()
                raise flight.FlightCancelledError(f"query {query_id} was cancelled by its client")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def do_action(
        self, context: flight.ServerCallContext, action: flight.Action
    ) -> Iterator[bytes]:
        body = action.body.to_pybytes() if action.body is not None else b""
        try:
            if action.type == ACTION_CANCEL_QUERY:
                cancelled = self.coordinator.cancel(decode_query_id(body))
                return iter([json.dumps({"cancelled": cancelled}).encode()])
            if action.type == ACTION_CLUSTER_STATUS:
                return iter([json.dumps(self.coordinator.progress.cluster_status()).encode()])
            if action.type == ACTION_QUERY_PROGRESS:
                return iter([json.dumps(self._progress(decode_query_id(body))).encode()])
            if action.type == ACTION_REGISTER_WORKER:
                new = self.coordinator.register_worker(decode_worker_url(body))
                return iter([json.dumps({"new": new}).encode()])
            if action.type == ACTION_UNREGISTER_WORKER:
                known = self.coordinator.unregister_worker(decode_worker_url(body))
                return iter([json.dumps({"known": known}).encode()])
            if action.type != ACTION_QUERY_TELEMETRY:
                raise ProtocolError(f"unknown action {action.type[:100]!r}")
            query_id = decode_query_id(body)
        except ProtocolError as error:
            raise for_client(invalid_argument(str(error)), "action") from None
        except Exception as error:  # never a Python traceback to the client
            raise for_client(error, f"action {action.type[:40]!r}") from None
        query = self.recent.get(query_id)
        if query is None or query.otlp is None:
            raise not_found(f"no telemetry for query {query_id[:100]}")
        return iter([_query_envelope(query.query_id, query.otlp)])

    def _progress(self, query_id: str) -> dict[str, Any]:
        """A running query's progress summary; a finished one's status (``ok``, ``error``),
        or ``unknown``."""
        live = self.coordinator.progress.query(query_id)
        if live is not None:
            return live.summary()
        recent = self.recent.get(query_id)
        return {"query_id": query_id, "status": recent.status if recent else "unknown"}


class _Named:
    """The coordinator, running every statement under one given query id."""

    def __init__(self, coordinator: Coordinator, query_id: str) -> None:
        self.coordinator = coordinator
        self.query_id = query_id

    def execute(self, sql: str, query_id: str | None = None) -> Any:
        if query_id is None or query_id == self.query_id:  # claimed by the server
            return self.coordinator.execute(sql, self.query_id, claimed=True)
        return self.coordinator.execute(sql, query_id)

    def plan(self, sql: str) -> Any:
        return self.coordinator.plan(sql)


def _flight_error(query_id: str, error: BaseException) -> flight.FlightError:
    """The Flight error a client sees for a failed query (never a Python traceback)."""
    if isinstance(error, (ProtocolError, PlanningError, CatalogError, QueryRejected)):
        return invalid_argument(one_line(error))
    if isinstance(error, QueryError):
        return flight.FlightServerError(str(error))
    if isinstance(error, flight.FlightError):
        return error
    log.warning("query %s failed", query_id, exc_info=error)
    return flight.FlightServerError(one_line(error))


def _mid_stream(error: pa.ArrowException) -> flight.FlightError:
    """``error`` as raised from inside a data stream: pyarrow appends the Python traceback to
    any other error raised there, so an invalid argument found after the stream opened goes to
    the client as a Flight server error carrying the same one line."""
    if isinstance(error, flight.FlightError):
        return error
    return flight.FlightServerError(one_line(error))


def _stream(
    context: flight.ServerCallContext, table: pa.Table, final: bytes | None
) -> Iterator[object]:
    for batch in table.to_batches():
        if context.is_cancelled():
            return
        yield batch
    if final is not None:
        yield pa.RecordBatch.from_pylist([], schema=table.schema), pa.py_buffer(final)


def _query_envelope(query_id: str, spans: ExportTraceServiceRequest) -> bytes:
    """A whole query's spans as one telemetry message, for a client's explain."""
    return envelope.encode(query_id, [(NO_TASK, spans.SerializeToString())])
