"""``otel-dist worker``: one worker, a Flight server running tasks."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from otel_dist.cli.common import (
    METRICS_PORT_HELP,
    UserError,
    byte_count,
    ensure_port_free,
    flight_address,
    limits_from_args,
    security_from_args,
    valid_port,
)
from otel_dist.cli.options import logging_options, security_options, sql_limit_options
from otel_dist.errors import one_line


def add(commands: Any) -> None:
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
        "--spill-dir",
        metavar="DIR",
        help="where the worker's spill folder goes (default: the temporary folder); folders "
        "there of workers that no longer exist are removed at start",
    )
    worker.add_argument(
        "--max-running-tasks",
        type=int,
        metavar="N",
        help="tasks executing at once; more wait in a queue (default: 2 per core)",
    )
    worker.add_argument(
        "--execution-memory",
        type=byte_count,
        metavar="BYTES",
        help="DataFusion memory of all running tasks, shared out equally; operators past "
        "their share spill to disk, a hash join's build side cannot (default: half the "
        "memory of the machine or container, at least 1 GiB)",
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
    worker.add_argument("--metrics-port", type=int, help=METRICS_PORT_HELP)
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
        help="finished tasks' telemetry kept for the coordinator to fetch until it releases "
        "their query",
    )
    worker.add_argument(
        "--redact-sql",
        action="store_true",
        help="operator spans without literals (as OTEL_DIST_REDACT_SQL=true does)",
    )
    logging_options(worker)
    security_options(worker, server=True)
    sql_limit_options(worker)
    worker.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otel_dist.worker.allocator import (
        SERVER_ALLOCATOR_ENV,
        lacks_allocator_settings,
        with_allocator_settings,
    )
    from otel_dist.worker.process import run_worker
    from otel_dist.worker.server import WorkerConfig

    if lacks_allocator_settings(os.environ):  # read at library load: too late in this process
        command = [sys.executable, "-m", "otel_dist.cli", *args.argv]
        os.execve(
            sys.executable, command, with_allocator_settings(os.environ, SERVER_ALLOCATOR_ENV)
        )

    coordinator = (
        None if args.coordinator is None else flight_address(args.coordinator, "--coordinator")
    )
    advertise = (
        None
        if args.advertise_url is None
        else flight_address(args.advertise_url, "--advertise-url")
    )
    ensure_port_free(args.host, args.port, "worker port")
    ensure_port_free(args.host, args.metrics_port, "--metrics-port")
    config = WorkerConfig(
        host=args.host,
        port=args.port,
        memory_budget_bytes=args.memory_budget,
        target_partitions=args.target_partitions,
        spill_dir=args.spill_dir,
        max_running_tasks=args.max_running_tasks,
        execution_memory_bytes=args.execution_memory,
        metrics_port=valid_port(args.metrics_port),
        data_roots=tuple(str(Path(root).expanduser().resolve()) for root in args.data_root),
        allow_any_path=args.allow_any_path,
        telemetry_cache_entries=max(1, args.telemetry_cache_entries),
        redact_sql=args.redact_sql,
        security=security_from_args(args),
        **limits_from_args(args),
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
    except OSError as error:  # the spill folder cannot be made
        raise UserError(f"worker on {args.host}:{args.port}: {one_line(error)}") from None
    return 0
