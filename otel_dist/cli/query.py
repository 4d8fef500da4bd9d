"""``otel-dist query``: send SQL to a coordinator; the result streams to the terminal or a file."""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from otel_dist.cli.common import (
    UserError,
    check_output_file,
    emit_batches,
    emit_table,
    explain_outputs,
    flight_address,
    security_from_args,
    stderr,
    wants_explain,
)
from otel_dist.cli.options import explain_options, output_options, security_options
from otel_dist.errors import one_line
from otel_dist.progress_view import ProgressDisplay, add_progress_option, wanted


def add(commands: Any) -> None:
    query = commands.add_parser("query", help="send SQL to a running coordinator")
    query.add_argument(
        "--coordinator",
        required=True,
        metavar="ADDRESS",
        help="the coordinator: host:port, grpc://host:port or grpc+tls://host:port",
    )
    query.add_argument("-e", "--execute", dest="sql", required=True, help="SQL to run")
    output_options(query)
    query.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up (and cancel the query on every worker) after this many seconds",
    )
    explain_options(query)
    security_options(query, server=False)
    add_progress_option(query)
    query.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uuid

    from otel_dist.exchange.clients import REMOTE_ERRORS, new_client
    from otel_dist.exchange.router import route
    from otel_dist.explain.statements import analysis_of
    from otel_dist.progress_view import remote_poll
    from otel_dist.protocol import ACTION_CANCEL_QUERY, ACTION_QUERY_TELEMETRY, NOT_A_COORDINATOR
    from otel_dist.telemetry.collector import SpanCollector

    check_output_file(args.output)
    address = flight_address(args.coordinator, "--coordinator")
    query_id = uuid.uuid4().hex
    explain = wants_explain(args)
    collector = SpanCollector(query_id)
    client = new_client(address, security_from_args(args))
    ticket = flight.Ticket(
        json.dumps({"sql": args.sql, "query_id": query_id, "telemetry": explain}).encode()
    )
    options = flight.FlightCallOptions(timeout=args.timeout)
    display = ProgressDisplay(remote_poll(client, query_id), stderr, wanted(args))

    def fetch() -> pa.Table | int:
        """Stream the result to its sink as it arrives; with explain, the table (it is part
        of the analysis), else the number of rows."""
        reader = client.do_get(ticket, options=options)
        batches = route(reader, collector.add_message)
        if explain:
            return pa.Table.from_batches(list(batches), reader.schema)
        if reader.schema.names == ["plan_type", "plan"]:  # EXPLAIN's text
            plan = pa.Table.from_batches(list(batches), reader.schema)
            display.finish()
            emit_table(plan, args.output)
            return 0
        return emit_batches(batches, reader.schema, args.output, args.max_rows, display)

    def cancel() -> None:
        """On Ctrl-C: ask the coordinator to cancel the query everywhere (bounded, quiet)."""
        body = json.dumps({"query_id": query_id}).encode()
        with contextlib.suppress(*REMOTE_ERRORS):
            list(
                client.do_action(
                    flight.Action(ACTION_CANCEL_QUERY, body),
                    options=flight.FlightCallOptions(timeout=5),
                )
            )

    interrupted = False
    try:
        with display:
            table = _interruptible(fetch, cancel)
    except KeyboardInterrupt:
        interrupted = True
        raise
    except flight.FlightUnavailableError:
        raise UserError(f"coordinator {address} is unreachable") from None
    except flight.FlightTimedOutError:
        raise UserError(
            f"query timed out after {args.timeout:g}s (--timeout); it was cancelled"
        ) from None
    except REMOTE_ERRORS as error:
        message = one_line(error)
        if NOT_A_COORDINATOR in message:
            raise UserError(f"{address}: {NOT_A_COORDINATOR}") from None
        if explain:
            _remote_partial_explain(client, query_id, collector, args, ACTION_QUERY_TELEMETRY)
        raise UserError(message) from None
    finally:
        if not interrupted:  # the interrupted call may still be in the client: leave it
            client.close()
    if not explain:
        return 0
    emit_table(table, args.output, args.max_rows)
    if explain:
        spans = collector.spans()
        telemetry = _RemoteTelemetry(query_id, spans)
        explain_outputs(analysis_of(query_id, telemetry, table), args, args.explain_analyze)
    return 0


def _interruptible(work: Callable[[], Any], on_interrupt: Callable[[], None]) -> Any:
    """Run blocking Flight calls on a helper thread so that Ctrl-C reaches this one (a call
    blocked inside gRPC would not see it until the query ended); ``on_interrupt`` runs before
    the ``KeyboardInterrupt`` goes on."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=run, name="query", daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        on_interrupt()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class _RemoteTelemetry:
    """The spans of a query run by a remote coordinator, as ``analysis_of`` reads them."""

    def __init__(self, query_id: str, spans: Sequence[object]) -> None:
        self.query_id = query_id
        self.spans = spans


def _remote_partial_explain(
    client: flight.FlightClient,
    query_id: str,
    collector: object,
    args: argparse.Namespace,
    action: str,
) -> None:
    """After a failed remote query, fetch and show what ran (best effort, bounded)."""
    from otel_dist.explain.statements import analysis_of

    try:
        results = client.do_action(
            flight.Action(action, json.dumps({"query_id": query_id}).encode()),
            options=flight.FlightCallOptions(timeout=10),
        )
        for result in results:
            collector.add_message(result.body.to_pybytes(), in_band=False)  # type: ignore[attr-defined]
        spans = collector.spans()  # type: ignore[attr-defined]
        if spans:
            telemetry = _RemoteTelemetry(query_id, spans)
            explain_outputs(analysis_of(query_id, telemetry, None), args, show_tree=True)
    except (flight.FlightError, ValueError):
        return
