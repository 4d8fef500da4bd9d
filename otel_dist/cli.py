"""The ``otel-dist`` command line: demo, tpchgen, tpcdsgen, local, worker, coordinator, query, top,
explain, bench.

Errors a user can cause (bad SQL, unknown table, bad folder, unreachable worker) end with a
one-line message on stderr and exit code 1, never a traceback; Ctrl-C ends with exit code 130
(and ``query`` first cancels its query on the coordinator).

Security options (TLS, token) are the same on every command that talks over Flight; the token
is read from ``OTEL_DIST_AUTH_TOKEN`` or ``--auth-token-file``, never from the command line.
Servers also take the cluster-internal secret (``--internal-secret-file``,
``OTEL_DIST_INTERNAL_SECRET_FILE`` or ``OTEL_DIST_INTERNAL_SECRET``), which clients never hold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
from rich.console import Console

from otel_dist.coordinator.core import QueryError
from otel_dist.errors import one_line
from otel_dist.logs import configure_logging
from otel_dist.planner.catalog import CatalogError
from otel_dist.planner.distribute import PlanningError, parse_byte_count
from otel_dist.progress_view import ProgressDisplay, add_progress_option, wanted

DEMO_SCALE = 0.1
DEMO_QUERY = 1
EXIT_USER_ERROR = 1
MAX_SQL_BYTES_ENV = "OTEL_DIST_MAX_SQL_BYTES"
MAX_RESULT_BYTES_ENV = "OTEL_DIST_MAX_RESULT_BYTES"
MAX_SQL_DEPTH_ENV = "OTEL_DIST_MAX_SQL_DEPTH"
MAX_SQL_OPERATORS_ENV = "OTEL_DIST_MAX_SQL_OPERATORS"
_METRICS_PORT_HELP = (
    "serve Prometheus /metrics on this port (0: a free one); OTEL_METRICS_EXPORTER also selects "
    "otlp, prometheus (port OTEL_EXPORTER_PROMETHEUS_PORT, default 9464) or none"
)
_BROADCAST_HELP = (
    "broadcast a join side whose estimated size is at most this many bytes, else hash-shuffle "
    "both sides (default: OTEL_DIST_BROADCAST_THRESHOLD or 64000000)"
)
_MIN_TASK_HELP = (
    "the least a scan task reads: smaller tables are read by fewer tasks, 0 splits every table "
    "(default: OTEL_DIST_MIN_TASK_BYTES or 64000000)"
)

stderr = Console(stderr=True)
# Off a terminal (pipes, logs, CI) rich would wrap tables at 80 columns; keep rows whole.
stdout = Console(width=None if sys.stdout.isatty() else 400)


DESCRIPTION = (
    "Distributed SQL over Arrow Flight with DataFusion, observable end to end with "
    "OpenTelemetry: run SQL on worker processes, see where its time went (EXPLAIN ANALYZE "
    "tree, traces, metrics)."
)


class UserError(Exception):
    """A problem with the user's input, reported in one line."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds "(default: X)" to every option whose help does not already say its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)"


def _describe_subcommands(commands: Any) -> None:
    """Every subcommand's parser gets its help line as its description and the formatter
    that shows defaults (subcommands added later included)."""
    add_parser = commands.add_parser

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        if "help" in kwargs:
            kwargs.setdefault("description", kwargs["help"][:1].upper() + kwargs["help"][1:] + ".")
        return add_parser(name, **kwargs)

    commands.add_parser = add


def main(argv: list[str] | None = None) -> int:
    try:
        parser = _parser()
    except UserError as error:  # a bad default from an environment variable
        stderr.print(f"otel-dist: error: {error}", markup=False, highlight=False)
        return EXIT_USER_ERROR
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging(
        getattr(args, "log_format", "text"), getattr(args, "log_level", "warning").upper()
    )
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        stderr.print("otel-dist: interrupted")
        return 130
    except (
        UserError,
        QueryError,
        PlanningError,
        CatalogError,
        RuntimeError,
        OSError,
        ValueError,
    ) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        stderr.print(f"otel-dist: error: {message}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-dist", description=DESCRIPTION, formatter_class=_HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _describe_subcommands(commands)

    demo = commands.add_parser(
        "demo",
        help="generate TPC-H SF 0.1 (once, into ~/.cache/otel_dist/tpch-sf0.1 or "
        "$OTEL_DIST_CACHE_DIR), run a query on local workers",
    )
    demo.add_argument("--query", type=int, default=DEMO_QUERY, help="TPC-H query number, 1-22")
    demo.add_argument("--workers", type=int, default=3, help="worker processes to start")
    demo.set_defaults(run=_demo)

    gen = commands.add_parser("tpchgen", help="generate TPC-H parquet, one folder per table")
    gen.add_argument(
        "--scale", type=float, required=True, help="scale factor (1 is about 1 GB of CSV)"
    )
    gen.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write; a folder holding another scale is refused (remove it first)",
    )
    gen.set_defaults(run=_tpchgen)

    dsgen = commands.add_parser(
        "tpcdsgen",
        help="generate TPC-DS parquet, one folder per table (needs the tpcds extra: "
        "pip install 'otel_dist[tpcds]')",
    )
    dsgen.add_argument("--scale", type=float, required=True, help="scale factor (1 is about 1 GB)")
    dsgen.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write; a folder holding another scale is refused (remove it first)",
    )
    dsgen.set_defaults(run=_tpcdsgen)

    local = commands.add_parser("local", help="run SQL on a local cluster of worker processes")
    local.add_argument("--workers", type=int, default=3, help="worker processes to start")
    local.add_argument(
        "--data", type=Path, required=True, help="data folder: every sub-folder is a table"
    )
    local.add_argument("-e", "--execute", dest="sql", required=True, help="SQL to run")
    _output_options(local)
    local.add_argument(
        "--tasks-per-stage", type=int, help="tasks per stage (default: one per worker)"
    )
    local.add_argument(
        "--broadcast-threshold", type=_byte_count, metavar="BYTES", help=_BROADCAST_HELP
    )
    local.add_argument("--min-task-bytes", type=_byte_count, metavar="BYTES", help=_MIN_TASK_HELP)
    _explain_options(local)
    _security_options(local, server=True)
    _coordinator_options(local)
    add_progress_option(local)
    local.add_argument(
        "--metrics-ports",
        nargs="?",
        const="auto",
        metavar="PORTS",
        help="serve Prometheus /metrics from the workers and the coordinator: free ports, or "
        "comma-separated ports (one per worker, then optionally the coordinator's)",
    )
    local.set_defaults(run=_local)

    worker = commands.add_parser("worker", help="run a worker (Flight server)")
    worker.add_argument("--host", default="127.0.0.1", help="address to listen on")
    worker.add_argument("--port", type=int, default=50051, help="port to listen on (0: a free one)")
    worker.add_argument(
        "--memory-budget", type=int, default=1 << 30, help="bytes of task output before spilling"
    )
    worker.add_argument(
        "--target-partitions", type=int, default=2, help="DataFusion partitions per task"
    )
    worker.add_argument(
        "--coordinator",
        metavar="URL",
        help="announce this worker to a coordinator (heartbeats; host:port or grpc://host:port)",
    )
    worker.add_argument(
        "--advertise-url",
        metavar="URL",
        help="the URL the coordinator and other workers reach this worker at (default: "
        "grpc://HOST:PORT, this host's address when HOST is 0.0.0.0)",
    )
    worker.add_argument(
        "--heartbeat",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between heartbeats to --coordinator",
    )
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    worker.add_argument("--metrics-port", type=int, help=_METRICS_PORT_HELP)
    worker.add_argument(
        "--data-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder tasks may read files from (repeatable); without any, the worker reads "
        "no files (tasks naming one are refused)",
    )
    worker.add_argument(
        "--allow-any-path",
        action="store_true",
        help="let tasks read any file this process can read, inside the data roots or not "
        "(unsafe: whoever can submit tasks can read it)",
    )
    worker.add_argument(
        "--telemetry-cache-entries",
        type=int,
        default=10_000,
        help="finished tasks' telemetry kept for the coordinator to fetch",
    )
    worker.add_argument(
        "--redact-sql",
        action="store_true",
        help="operator spans without literals (as OTEL_DIST_REDACT_SQL=true does)",
    )
    _logging_options(worker)
    _security_options(worker, server=True)
    _sql_limit_options(worker)
    worker.set_defaults(run=_worker)

    coordinator = commands.add_parser("coordinator", help="run a coordinator (Flight server)")
    coordinator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    coordinator.add_argument(
        "--port", type=int, default=50050, help="port to listen on (0: a free one)"
    )
    coordinator.add_argument(
        "--workers",
        default="",
        metavar="ADDRESSES",
        help="comma-separated workers (host:port, grpc://host:port, grpc+tls://host:port) "
        "and DNS names (dns:///NAME:PORT, resolved to all addresses, again every "
        "--dns-interval); none need be up at start. Workers started with --coordinator join "
        "by themselves (default: none)",
    )
    coordinator.add_argument(
        "--workers-dns",
        action="append",
        default=[],
        metavar="NAME:PORT",
        help="a DNS name whose every address is a worker, e.g. a Kubernetes headless service "
        "(repeatable; same as --workers dns:///NAME:PORT)",
    )
    coordinator.add_argument(
        "--dns-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between resolutions of the DNS names",
    )
    coordinator.add_argument(
        "--heartbeat",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="heartbeat interval the workers use: one silent for 3 intervals is dropped",
    )
    coordinator.add_argument(
        "--data", type=Path, required=True, help="data folder: every sub-folder is a table"
    )
    coordinator.add_argument(
        "--tasks-per-stage", type=int, help="tasks per stage (default: one per worker up)"
    )
    coordinator.add_argument(
        "--broadcast-threshold", type=_byte_count, metavar="BYTES", help=_BROADCAST_HELP
    )
    coordinator.add_argument(
        "--min-task-bytes", type=_byte_count, metavar="BYTES", help=_MIN_TASK_HELP
    )
    coordinator.add_argument("--metrics-port", type=int, help=_METRICS_PORT_HELP)
    coordinator.add_argument(
        "--http-port",
        type=int,
        help="serve recent queries' profile pages (/queries/<id>) on this port (default: off)",
    )
    coordinator.add_argument(
        "--explain-log",
        choices=("off", "slow", "all"),
        help="log each query's explain tree: never, queries slower than "
        "OTEL_DIST_EXPLAIN_LOG_SLOW_MS (1000 ms), or all (default: OTEL_DIST_EXPLAIN_LOG, "
        "else slow)",
    )
    _logging_options(coordinator)
    _security_options(coordinator, server=True)
    _coordinator_options(coordinator)
    coordinator.set_defaults(run=_coordinator)

    query = commands.add_parser("query", help="send SQL to a running coordinator")
    query.add_argument(
        "--coordinator",
        required=True,
        metavar="ADDRESS",
        help="the coordinator: host:port, grpc://host:port or grpc+tls://host:port",
    )
    query.add_argument("-e", "--execute", dest="sql", required=True, help="SQL to run")
    _output_options(query)
    query.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up (and cancel the query on every worker) after this many seconds",
    )
    _explain_options(query)
    _security_options(query, server=False)
    add_progress_option(query)
    query.set_defaults(run=_query)

    top = commands.add_parser("top", help="a live view of a cluster's workers and queries")
    top.add_argument("--coordinator", required=True, help="coordinator URL, grpc://host:port")
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    _security_options(top, server=False)
    top.set_defaults(run=_top)

    explain = commands.add_parser(
        "explain", help="the EXPLAIN ANALYZE tree of a query in an OTLP/JSON trace file"
    )
    explain.add_argument("--trace", type=Path, required=True, help="OTLP/JSON, one request a line")
    explain.add_argument("--query-id", help="which query, when the file holds several")
    explain.add_argument("--json", action="store_true", help="print the tree as JSON")
    explain.add_argument("--verbose", action="store_true", help="every task's operator tree")
    explain.add_argument("--html", type=Path, help="also write the profile page to this file")
    explain.set_defaults(run=_explain)

    bench = commands.add_parser(
        "bench", help="single node vs distributed vs traced, TPC-H or TPC-DS"
    )
    bench.add_argument(
        "--suite",
        choices=("tpch", "tpcds"),
        default="tpch",
        help="the benchmark's queries and data (default: tpch; tpcds needs the tpcds extra)",
    )
    bench.add_argument("--scale", type=float, default=1.0, help="scale factor")
    bench.add_argument("--workers", type=int, default=3, help="worker processes to start")
    bench.add_argument("--runs", type=int, default=3, help="measured runs of each query")
    bench.add_argument(
        "--warmup",
        type=int,
        default=8,
        help="unmeasured passes over the queries first: workers keep freed memory, and their "
        "heaps take several passes to grow to what the queries need (default: 8)",
    )
    bench.add_argument(
        "--target-partitions",
        type=int,
        default=1,
        help="DataFusion partitions per worker task; single-node DataFusion gets workers times "
        "this many (default: 1)",
    )
    bench.add_argument("--json", type=Path, help="write the report as JSON")
    bench.add_argument(
        "--queries", help="comma-separated query numbers (default: all 22, or all 99 for tpcds)"
    )
    bench.add_argument(
        "--data", type=Path, help="an existing folder of the suite's data (default: generated)"
    )
    bench.set_defaults(run=_bench)
    return parser


def _logging_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="the least severe log lines written to stderr (default: warning)",
    )


def _security_options(parser: argparse.ArgumentParser, server: bool) -> None:
    what = "this server's" if server else "the client's (for servers that verify clients)"
    parser.add_argument("--tls-cert", type=Path, help=f"TLS: {what} certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help=f"TLS: {what} private key (PEM)")
    parser.add_argument(
        "--tls-ca", type=Path, help="TLS: CA certificate(s) to verify servers by (PEM)"
    )
    if server:
        parser.add_argument(
            "--tls-verify-client",
            action="store_true",
            help="TLS: require client certificates signed by --tls-ca",
        )
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        help="file holding the client token (default: OTEL_DIST_AUTH_TOKEN): clients present "
        "it to the coordinator, every HTTP endpoint (/queries, /metrics) requires it"
        + (
            "; a worker without --internal-secret-file also takes it as the internal secret"
            if server
            else ""
        ),
    )
    if server:
        parser.add_argument(
            "--internal-secret-file",
            type=Path,
            help="file holding the cluster-internal secret that coordinator-to-worker and "
            "worker-to-worker calls carry and workers require (default: "
            "OTEL_DIST_INTERNAL_SECRET_FILE, OTEL_DIST_INTERNAL_SECRET; else the client token); "
            "otel-dist local generates one",
        )


def _security(args: argparse.Namespace) -> Any:
    from otel_dist.exchange.security import SecurityConfig

    return SecurityConfig.from_options(
        args.tls_cert,
        args.tls_key,
        args.tls_ca,
        args.auth_token_file,
        verify_client=getattr(args, "tls_verify_client", False),
        internal_secret_file=getattr(args, "internal_secret_file", None),
    )


def _coordinator_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-sql-bytes",
        type=int,
        default=_env_int(MAX_SQL_BYTES_ENV),
        help=f"refuse longer SQL (default: {MAX_SQL_BYTES_ENV}, else 1 MiB)",
    )
    parser.add_argument(
        "--max-result-bytes",
        type=int,
        default=_env_int(MAX_RESULT_BYTES_ENV),
        help=f"fail queries with larger results (default: {MAX_RESULT_BYTES_ENV}, else 2 GiB)",
    )
    parser.add_argument(
        "--redact-sql",
        action="store_true",
        help="replace literals in db.query.text by ? (as OTEL_DIST_REDACT_SQL=true does)",
    )
    _sql_limit_options(parser)


def _sql_limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-sql-depth",
        type=int,
        default=_env_int(MAX_SQL_DEPTH_ENV, "a positive whole number"),
        help=f"refuse SQL chaining or nesting operators deeper (default: {MAX_SQL_DEPTH_ENV}, "
        "else 500)",
    )
    parser.add_argument(
        "--max-sql-operators",
        type=int,
        default=_env_int(MAX_SQL_OPERATORS_ENV, "a positive whole number"),
        help=f"refuse SQL with more operators (default: {MAX_SQL_OPERATORS_ENV}, else 5000)",
    )


def _byte_count(raw: str) -> int:
    try:
        return parse_byte_count(raw)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _env_int(name: str, what: str = "a number of bytes") -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{name} must be {what}, got {raw!r}") from None


def _limits(args: argparse.Namespace) -> dict[str, int]:
    """The coordinator limits given on the command line (or by environment variables)."""
    limits: dict[str, int] = {}
    for name in ("max_sql_bytes", "max_result_bytes", "max_sql_depth", "max_sql_operators"):
        value = getattr(args, name, None)
        if value is not None:
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
            limits[name] = value
    return limits


def _explain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--explain-analyze", action="store_true", help="print the distributed EXPLAIN ANALYZE tree"
    )
    parser.add_argument("--explain-json", type=Path, help="write the explain tree as JSON")
    parser.add_argument("--profile-html", type=Path, help="write the query profile page")
    parser.add_argument("--verbose", action="store_true", help="explain every task's operators")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format"
    )


def _demo(args: argparse.Namespace) -> int:
    from otel_dist import tpch
    from otel_dist.frontend.local import LocalCluster
    from otel_dist.tpch.datagen import default_cache_dir, generate

    data = generate(DEMO_SCALE, default_cache_dir(DEMO_SCALE))
    sql = tpch.query(args.query)
    stdout.print(f"[bold]TPC-H Q{args.query}[/bold] at SF {DEMO_SCALE} on {args.workers} workers")
    stdout.print(f"data: {data} (cached; OTEL_DIST_CACHE_DIR moves it)", markup=False)
    # The demo's tables are far under the default bytes a scan task reads: split every table
    # anyway, so that the tree shows a scan spread over the workers.
    with LocalCluster(
        workers=args.workers, data=data, min_task_bytes=0, internal_secret=True
    ) as cluster:
        analysis = cluster.explain_analyze(sql)
    assert analysis.table is not None
    _print_table(analysis.table)
    stdout.print(analysis.text(), markup=False, highlight=False)
    tree = analysis.tree
    stdout.print(
        f"{analysis.table.num_rows} rows in {(tree.duration_ns or 0) / 1e9:.2f}s, "
        f"{len(tree.all_stages())} stages, query id {tree.query_id}"
    )
    return 0


def _tpchgen(args: argparse.Namespace) -> int:
    from otel_dist.tpch.datagen import generate

    if args.scale <= 0:
        raise UserError(f"scale must be positive, got {args.scale}")
    existed = (args.out / "lineitem").is_dir()
    path = generate(args.scale, args.out)
    done = "is already in" if existed else "written to"
    stdout.print(f"TPC-H SF {args.scale:g} {done} {path}", markup=False, highlight=False)
    return 0


def _tpcdsgen(args: argparse.Namespace) -> int:
    from otel_dist.tpcds.datagen import SCALE_FILE, generate

    if args.scale <= 0:
        raise UserError(f"scale must be positive, got {args.scale}")
    existed = (args.out / SCALE_FILE).is_file()
    try:
        path = generate(args.scale, args.out)
    except RuntimeError as error:
        raise UserError(str(error)) from None
    done = "is already in" if existed else "written to"
    stdout.print(f"TPC-DS SF {args.scale:g} {done} {path}", markup=False, highlight=False)
    return 0


def _local(args: argparse.Namespace) -> int:
    from otel_dist.explain.statements import parse_explain
    from otel_dist.frontend.local import LocalCluster
    from otel_dist.progress_view import local_poll

    _check_output(args.output)
    with LocalCluster(
        workers=args.workers,
        data=args.data,
        tasks_per_stage=args.tasks_per_stage,
        broadcast_threshold=args.broadcast_threshold,
        min_task_bytes=args.min_task_bytes,
        metrics_ports=_metrics_ports(args.metrics_ports),
        security=_security(args),
        internal_secret=True,
        redact_sql=args.redact_sql,
        **_limits(args),
    ) as cluster:
        for url in cluster.metrics_urls:
            stderr.print(f"metrics: {url}", markup=False, highlight=False)
        display = ProgressDisplay(local_poll(cluster.coordinator), stderr, wanted(args))
        if not _wants_explain(args) and parse_explain(args.sql) is not None:
            with display:
                table = cluster.sql(args.sql)
            _emit(table, args.output, args.max_rows)
            return 0
        if not _wants_explain(args):  # streamed: any size, in bounded memory
            with display:
                schema, batches = cluster.stream(args.sql)
                _emit_batches(batches, schema, args.output, args.max_rows, display)
            return 0
        try:
            with display:
                analysis = cluster.explain_analyze(args.sql)
        except QueryError as error:
            partial = getattr(error, "analysis", None)
            if partial is not None:
                _explain_outputs(partial, args, show_tree=True)
            raise
    _emit(analysis.table, args.output, args.max_rows)
    _explain_outputs(analysis, args, show_tree=args.explain_analyze)
    return 0


def _wants_explain(args: argparse.Namespace) -> bool:
    return bool(args.explain_analyze or args.explain_json or args.profile_html)


def _explain_outputs(analysis: object, args: argparse.Namespace, show_tree: bool) -> None:
    """Print the tree and write the JSON and HTML files the options ask for."""
    if show_tree:
        stdout.print(analysis.text(verbose=args.verbose), markup=False, highlight=False)  # type: ignore[attr-defined]
    if args.explain_json:
        args.explain_json.write_text(json.dumps(analysis.to_dict(), indent=1) + "\n")  # type: ignore[attr-defined]
        stderr.print(f"explain tree written to {args.explain_json}", markup=False)
    if args.profile_html:
        args.profile_html.write_text(analysis.html())  # type: ignore[attr-defined]
        stderr.print(f"profile page written to {args.profile_html}", markup=False)


def _worker(args: argparse.Namespace) -> int:
    from otel_dist.worker.allocator import lacks_allocator_settings, worker_environment
    from otel_dist.worker.process import run_worker
    from otel_dist.worker.server import WorkerConfig

    if lacks_allocator_settings(os.environ):  # read at library load: too late in this process
        command = [sys.executable, "-m", "otel_dist.cli", *args.argv]
        os.execve(sys.executable, command, worker_environment(os.environ))

    if args.redact_sql:  # read by the worker's telemetry set-up, in this process only
        os.environ["OTEL_DIST_REDACT_SQL"] = "true"

    coordinator = None if args.coordinator is None else _address(args.coordinator, "--coordinator")
    advertise = (
        None if args.advertise_url is None else _address(args.advertise_url, "--advertise-url")
    )
    _check_port(args.host, args.port, "worker port")
    _check_port(args.host, args.metrics_port, "--metrics-port")
    config = WorkerConfig(
        host=args.host,
        port=args.port,
        memory_budget_bytes=args.memory_budget,
        target_partitions=args.target_partitions,
        metrics_port=_port(args.metrics_port),
        data_roots=tuple(str(Path(root).expanduser().resolve()) for root in args.data_root),
        allow_any_path=args.allow_any_path,
        telemetry_cache_entries=max(1, args.telemetry_cache_entries),
        security=_security(args),
        **_limits(args),
    )
    try:
        run_worker(
            config,
            parent_pid=args.parent_pid,
            coordinator=coordinator,
            advertise=advertise,
            heartbeat_s=max(0.1, args.heartbeat),
        )
    except pa.ArrowException as error:  # e.g. the port taken between the check and the bind
        raise UserError(f"worker on {args.host}:{args.port}: {one_line(error)}") from None
    return 0


def _coordinator(args: argparse.Namespace) -> int:
    from otel_dist.addresses import AddressError, parse_dns_name, parse_workers
    from otel_dist.coordinator.core import Coordinator, CoordinatorConfig
    from otel_dist.explain.live import LiveQueries
    from otel_dist.explain.recent import QueryLog, QueryLogConfig, RecentQueries
    from otel_dist.explain.statements import trace_url_template
    from otel_dist.explain.web import QueryPagesServer
    from otel_dist.frontend.server import CoordinatorServer
    from otel_dist.telemetry.metrics import start_process_telemetry

    try:
        workers, dns_names = parse_workers(args.workers)
        dns_names += tuple(parse_dns_name(name, "--workers-dns") for name in args.workers_dns)
    except AddressError as error:
        raise UserError(str(error)) from None
    _check_port(args.host, args.port, "coordinator port")
    _check_port(args.host, args.http_port, "--http-port")
    _check_port(args.host, args.metrics_port, "--metrics-port")
    log_config = QueryLogConfig.from_env("slow")
    if args.explain_log:
        log_config = QueryLogConfig(args.explain_log, log_config.slow_ms)
    security = _security(args)
    env = {**os.environ, "OTEL_DIST_REDACT_SQL": "true"} if args.redact_sql else None
    telemetry, metrics = start_process_telemetry(
        "otel-dist-coordinator",
        env,
        prometheus_port=_port(args.metrics_port),
        prometheus_host=args.host,
        prometheus_token=security.token,
    )
    coordinator = Coordinator(
        CoordinatorConfig(
            workers=workers,
            data=str(args.data),
            tasks_per_stage=args.tasks_per_stage,
            broadcast_threshold=args.broadcast_threshold,
            min_task_bytes=args.min_task_bytes,
            security=security,
            dns_names=dns_names,
            dns_interval_s=max(0.1, args.dns_interval),
            heartbeat_s=max(0.1, args.heartbeat),
            **_limits(args),
        ),
        telemetry,
        metrics,
    )
    recent = RecentQueries()
    coordinator.add_listener(recent)
    coordinator.add_listener(QueryLog(log_config, trace_url_template()))
    pages: QueryPagesServer | None = None
    try:
        try:
            server = CoordinatorServer(coordinator, args.host, args.port, recent)
        except pa.ArrowException as error:  # the port taken between the check and the bind
            raise UserError(f"coordinator on {args.host}:{args.port}: {one_line(error)}") from None
        stdout.print(f"otel-dist coordinator listening on {server.url}")
        stdout.print(f"otel-dist coordinator workers: {coordinator.membership.describe()}")
        if metrics.prometheus_url:
            stdout.print(f"otel-dist coordinator metrics on {metrics.prometheus_url}")
        if args.http_port is not None:
            try:
                pages = QueryPagesServer(
                    recent,
                    args.host,
                    _port(args.http_port) or 0,
                    trace_url_template(),
                    LiveQueries(coordinator.progress),
                    token=security.token,
                ).start()
            except OSError as error:
                raise UserError(
                    f"--http-port {args.http_port} on {args.host}: {error.strerror or error}"
                ) from None
            stdout.print(f"otel-dist coordinator query pages on {pages.url}/queries")
        server.serve()
    finally:
        if pages is not None:
            pages.stop()
        coordinator.close()
    return 0


def _address(raw: str, what: str) -> str:
    from otel_dist.addresses import AddressError, flight_url

    try:
        return flight_url(raw, what)
    except AddressError as error:
        raise UserError(str(error)) from None


def _check_port(host: str, port: int | None, what: str) -> None:
    from otel_dist.addresses import AddressError, check_port_free

    if port is None:
        return
    try:
        check_port_free(host, port, what)
    except AddressError as error:
        raise UserError(str(error)) from None


def _port(port: int | None) -> int | None:
    if port is not None and not 0 <= port <= 65535:
        raise UserError(f"metrics port must be in 0..65535, got {port}")
    return port


def _metrics_ports(raw: str | None) -> bool | list[int]:
    if raw is None:
        return False
    if raw == "auto":
        return True
    try:
        return [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--metrics-ports takes comma-separated port numbers, got {raw}") from None


def _query(args: argparse.Namespace) -> int:
    import uuid

    from otel_dist.exchange.clients import REMOTE_ERRORS, new_client
    from otel_dist.exchange.router import route
    from otel_dist.explain.statements import analysis_of
    from otel_dist.progress_view import remote_poll
    from otel_dist.protocol import ACTION_CANCEL_QUERY, ACTION_QUERY_TELEMETRY, NOT_A_COORDINATOR
    from otel_dist.telemetry.collector import SpanCollector

    _check_output(args.output)
    address = _address(args.coordinator, "--coordinator")
    query_id = uuid.uuid4().hex
    explain = _wants_explain(args)
    collector = SpanCollector(query_id)
    client = new_client(address, _security(args))
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
            _emit(plan, args.output)
            return 0
        return _emit_batches(batches, reader.schema, args.output, args.max_rows, display)

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
    _emit(table, args.output, args.max_rows)
    if explain:
        spans = collector.spans()
        telemetry = _RemoteTelemetry(query_id, spans)
        _explain_outputs(analysis_of(query_id, telemetry, table), args, args.explain_analyze)
    return 0


def _top(args: argparse.Namespace) -> int:
    from otel_dist.top import TopError, run_top

    if args.interval <= 0:
        raise UserError(f"--interval must be positive, got {args.interval}")
    try:
        return run_top(args.coordinator, _security(args), stdout, args.once, args.interval)
    except TopError as error:
        raise UserError(str(error)) from None


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

    def __init__(self, query_id: str, spans: list[object]) -> None:
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
            _explain_outputs(analysis_of(query_id, telemetry, None), args, show_tree=True)
    except (flight.FlightError, ValueError):
        return


def _explain(args: argparse.Namespace) -> int:
    from otel_dist.explain.build import build_tree, load_trace_file
    from otel_dist.explain.html import render_html
    from otel_dist.explain.json_tree import tree_to_dict
    from otel_dist.explain.statements import trace_url_template
    from otel_dist.explain.text import render_text

    tree = build_tree(load_trace_file(args.trace), args.query_id)
    if args.json:
        print(json.dumps(tree_to_dict(tree), indent=1))
    else:
        text = render_text(tree, verbose=args.verbose, trace_url_template=trace_url_template())
        stdout.print(text, markup=False, highlight=False)
    if args.html:
        args.html.write_text(render_html(tree, trace_url_template()))
        stderr.print(f"profile page written to {args.html}", markup=False)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from otel_dist.bench import SUITES, BenchOptions, run_bench, write_report

    suite = SUITES[args.suite]
    queries = suite.query_numbers
    if args.queries:
        try:
            queries = tuple(int(q) for q in args.queries.split(",") if q.strip())
        except ValueError:
            raise UserError(
                f"--queries takes comma-separated numbers, got {args.queries}"
            ) from None
        unknown = [q for q in queries if q not in suite.query_numbers]
        if unknown:
            raise UserError(
                f"no {suite.title} query {unknown[0]}: queries are 1 to {suite.query_numbers[-1]}"
            )
    if args.scale <= 0 or min(args.workers, args.runs, args.target_partitions) < 1:
        raise UserError(
            "--scale must be positive, --workers, --runs and --target-partitions at least 1"
        )
    if args.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {args.warmup}")
    options = BenchOptions(
        args.scale,
        args.workers,
        args.runs,
        queries,
        target_partitions=args.target_partitions,
        warmup=args.warmup,
        data=args.data,
        suite=args.suite,
    )
    try:
        report = run_bench(options, stdout)
    except RuntimeError as error:  # the data cannot be generated (e.g. the tpcds extra)
        raise UserError(one_line(error)) from None
    if args.json:
        write_report(report, args.json)
        stderr.print(f"report written to {args.json}", markup=False)
    return 0


def _output_options(parser: argparse.ArgumentParser) -> None:
    from otel_dist.output import DEFAULT_MAX_ROWS

    parser.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="write the result, batch by batch, to a .parquet, .csv or JSON Lines file "
        "(.jsonl, .ndjson; .json is JSON Lines too) instead of printing it",
    )
    parser.add_argument(
        "--max-rows",
        type=int,
        default=DEFAULT_MAX_ROWS,
        metavar="N",
        help="rows printed at most: the first and the last half, with the total count",
    )


def _check_output(path: Path | None) -> None:
    from otel_dist.output import check_output

    try:
        check_output(path)
    except ValueError as error:
        raise UserError(str(error)) from None


def _emit(table: pa.Table, output: Path | None, max_rows: int | None = None) -> None:
    if output is None and table.column_names == ["plan_type", "plan"]:  # EXPLAIN: its text
        stdout.print("\n".join(table.column("plan").to_pylist()), markup=False, highlight=False)
        return
    _emit_batches(table.to_batches(), table.schema, output, max_rows)


def _emit_batches(
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


def _print_table(table: pa.Table) -> None:
    _emit(table, None)


if __name__ == "__main__":
    sys.exit(main())
