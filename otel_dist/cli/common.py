"""What the commands share: the consoles, the one-line user error, parsing of addresses,
ports, limits and security options, and where a result goes (terminal or file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console

from otel_dist.planner.distribute import parse_byte_count
from otel_dist.progress_view import ProgressDisplay

EXIT_USER_ERROR = 1
MAX_SQL_BYTES_ENV = "OTEL_DIST_MAX_SQL_BYTES"
MAX_RESULT_BYTES_ENV = "OTEL_DIST_MAX_RESULT_BYTES"
MAX_TOTAL_RESULT_BYTES_ENV = "OTEL_DIST_MAX_TOTAL_RESULT_BYTES"
MAX_SQL_DEPTH_ENV = "OTEL_DIST_MAX_SQL_DEPTH"
MAX_SQL_OPERATORS_ENV = "OTEL_DIST_MAX_SQL_OPERATORS"
METRICS_PORT_HELP = (
    "serve Prometheus /metrics on this port (0: a free one); OTEL_METRICS_EXPORTER also selects "
    "otlp, prometheus (port OTEL_EXPORTER_PROMETHEUS_PORT, default 9464) or none"
)
BROADCAST_HELP = (
    "broadcast a join side whose estimated size is at most this many bytes, else hash-shuffle "
    "both sides (default: OTEL_DIST_BROADCAST_THRESHOLD or 64000000)"
)
MIN_TASK_HELP = (
    "the least a scan task reads: smaller tables are read by fewer tasks, 0 splits every table "
    "(default: OTEL_DIST_MIN_TASK_BYTES or 64000000)"
)

stderr = Console(stderr=True)
# Off a terminal (pipes, logs, CI) rich would wrap tables at 80 columns; keep rows whole.
stdout = Console(width=None if sys.stdout.isatty() else 400)


class UserError(Exception):
    """A problem with the user's input, reported in one line."""


def security_from_args(args: argparse.Namespace) -> Any:
    from otel_dist.exchange.security import SecurityConfig

    return SecurityConfig.from_options(
        args.tls_cert,
        args.tls_key,
        args.tls_ca,
        args.auth_token_file,
        verify_client=getattr(args, "tls_verify_client", False),
        internal_secret_file=getattr(args, "internal_secret_file", None),
    )


def byte_count(raw: str) -> int:
    try:
        return parse_byte_count(raw)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def limits_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The coordinator limits given on the command line (or by environment variables)."""
    limits: dict[str, Any] = {}
    for name in (
        "max_sql_bytes",
        "max_result_bytes",
        "max_total_result_bytes",
        "max_sql_depth",
        "max_sql_operators",
    ):
        value = getattr(args, name, None)
        if value is not None:
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
            limits[name] = value
    return limits


def wants_explain(args: argparse.Namespace) -> bool:
    return bool(args.explain_analyze or args.explain_json or args.profile_html)


def explain_outputs(analysis: object, args: argparse.Namespace, show_tree: bool) -> None:
    """Print the tree and write the JSON and HTML files the options ask for."""
    if show_tree:
        stdout.print(analysis.text(verbose=args.verbose), markup=False, highlight=False)  # type: ignore[attr-defined]
    if args.explain_json:
        args.explain_json.write_text(json.dumps(analysis.to_dict(), indent=1) + "\n")  # type: ignore[attr-defined]
        stderr.print(f"explain tree written to {args.explain_json}", markup=False)
    if args.profile_html:
        args.profile_html.write_text(analysis.html())  # type: ignore[attr-defined]
        stderr.print(f"profile page written to {args.profile_html}", markup=False)


def flight_address(raw: str, what: str) -> str:
    from otel_dist.addresses import AddressError, flight_url

    try:
        return flight_url(raw, what)
    except AddressError as error:
        raise UserError(str(error)) from None


def ensure_port_free(host: str, port: int | None, what: str) -> None:
    from otel_dist.addresses import AddressError, check_port_free

    if port is None:
        return
    try:
        check_port_free(host, port, what)
    except AddressError as error:
        raise UserError(str(error)) from None


def valid_port(port: int | None) -> int | None:
    if port is not None and not 0 <= port <= 65535:
        raise UserError(f"metrics port must be in 0..65535, got {port}")
    return port


def metrics_ports_from(raw: str | None) -> bool | list[int]:
    if raw is None:
        return False
    if raw == "auto":
        return True
    try:
        return [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--metrics-ports takes comma-separated port numbers, got {raw}") from None


def check_output_file(path: Path | None) -> None:
    from otel_dist.output import check_output

    try:
        check_output(path)
    except ValueError as error:
        raise UserError(str(error)) from None


def emit_table(table: pa.Table, output: Path | None, max_rows: int | None = None) -> None:
    if output is None and table.column_names == ["plan_type", "plan"]:  # EXPLAIN: its text
        stdout.print("\n".join(table.column("plan").to_pylist()), markup=False, highlight=False)
        return
    emit_batches(table.to_batches(), table.schema, output, max_rows)


def emit_batches(
    batches: Any,
    schema: pa.Schema,
    output: Path | None,
    max_rows: int | None = None,
    display: ProgressDisplay | None = None,
) -> int:
    """Print (capped) or write (streaming) a result; the number of rows. A progress display
    shows the rows as they arrive and is removed before the result prints."""
    from otel_dist.output import DEFAULT_MAX_ROWS, emit

    rows = emit(batches, schema, output, stdout, max_rows or DEFAULT_MAX_ROWS, display)
    if output is not None:
        stderr.print(
            f"{rows} rows written to {output}", markup=False, highlight=False, soft_wrap=True
        )
    return rows


def print_table(table: pa.Table) -> None:
    emit_table(table, None)
