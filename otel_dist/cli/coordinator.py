"""``otel-dist coordinator``: the coordinator's Flight server, its pages and its metrics."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from otel_dist.cli.common import (
    BROADCAST_HELP,
    METRICS_PORT_HELP,
    MIN_TASK_HELP,
    UserError,
    byte_count,
    ensure_port_free,
    limits_from_args,
    security_from_args,
    stdout,
    valid_port,
)
from otel_dist.cli.options import coordinator_options, logging_options, security_options
from otel_dist.errors import one_line


def add(commands: Any) -> None:
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
        "--broadcast-threshold", type=byte_count, metavar="BYTES", help=BROADCAST_HELP
    )
    coordinator.add_argument(
        "--min-task-bytes", type=byte_count, metavar="BYTES", help=MIN_TASK_HELP
    )
    coordinator.add_argument("--metrics-port", type=int, help=METRICS_PORT_HELP)
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
    logging_options(coordinator)
    security_options(coordinator, server=True)
    coordinator_options(coordinator)
    coordinator.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
    ensure_port_free(args.host, args.port, "coordinator port")
    ensure_port_free(args.host, args.http_port, "--http-port")
    ensure_port_free(args.host, args.metrics_port, "--metrics-port")
    log_config = QueryLogConfig.from_env("slow")
    if args.explain_log:
        log_config = QueryLogConfig(args.explain_log, log_config.slow_ms)
    security = security_from_args(args)
    env = {**os.environ, "OTEL_DIST_REDACT_SQL": "true"} if args.redact_sql else None
    telemetry, metrics = start_process_telemetry(
        "otel-dist-coordinator",
        env,
        prometheus_port=valid_port(args.metrics_port),
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
            **limits_from_args(args),
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
                    valid_port(args.http_port) or 0,
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
