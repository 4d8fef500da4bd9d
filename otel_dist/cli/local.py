"""``otel-dist local``: start workers and a coordinator on this machine, run SQL, stop."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from otel_dist.cli.common import (
    BROADCAST_HELP,
    MIN_TASK_HELP,
    byte_count,
    check_output_file,
    emit_batches,
    emit_table,
    explain_outputs,
    limits_from_args,
    metrics_ports_from,
    security_from_args,
    stderr,
    wants_explain,
)
from otel_dist.cli.options import (
    coordinator_options,
    explain_options,
    output_options,
    security_options,
)
from otel_dist.coordinator.core import QueryError
from otel_dist.progress_view import ProgressDisplay, add_progress_option, wanted


def add(commands: Any) -> None:
    local = commands.add_parser("local", help="run SQL on a local cluster of worker processes")
    local.add_argument("--workers", type=int, default=3, help="worker processes to start")
    local.add_argument(
        "--data", type=Path, required=True, help="data folder: every sub-folder is a table"
    )
    local.add_argument("-e", "--execute", dest="sql", required=True, help="SQL to run")
    output_options(local)
    local.add_argument(
        "--tasks-per-stage", type=int, help="tasks per stage (default: one per worker)"
    )
    local.add_argument(
        "--broadcast-threshold", type=byte_count, metavar="BYTES", help=BROADCAST_HELP
    )
    local.add_argument("--min-task-bytes", type=byte_count, metavar="BYTES", help=MIN_TASK_HELP)
    explain_options(local)
    security_options(local, server=True)
    coordinator_options(local)
    add_progress_option(local)
    local.add_argument(
        "--metrics-ports",
        nargs="?",
        const="auto",
        metavar="PORTS",
        help="serve Prometheus /metrics from the workers and the coordinator: free ports, or "
        "comma-separated ports (one per worker, then optionally the coordinator's)",
    )
    local.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otel_dist.explain.statements import parse_explain
    from otel_dist.frontend.local import LocalCluster
    from otel_dist.progress_view import local_poll

    check_output_file(args.output)
    with LocalCluster(
        workers=args.workers,
        data=args.data,
        tasks_per_stage=args.tasks_per_stage,
        broadcast_threshold=args.broadcast_threshold,
        min_task_bytes=args.min_task_bytes,
        metrics_ports=metrics_ports_from(args.metrics_ports),
        security=security_from_args(args),
        internal_secret=True,
        redact_sql=args.redact_sql,
        **limits_from_args(args),
    ) as cluster:
        for url in cluster.metrics_urls:
            stderr.print(f"metrics: {url}", markup=False, highlight=False)
        display = ProgressDisplay(local_poll(cluster.coordinator), stderr, wanted(args))
        if not wants_explain(args) and parse_explain(args.sql) is not None:
            with display:
                table = cluster.sql(args.sql)
            emit_table(table, args.output, args.max_rows)
            return 0
        if not wants_explain(args):  # streamed: any size, in bounded memory
            with display:
                schema, batches = cluster.stream(args.sql)
                emit_batches(batches, schema, args.output, args.max_rows, display)
            return 0
        try:
            with display:
                analysis = cluster.explain_analyze(args.sql)
        except QueryError as error:
            partial = getattr(error, "analysis", None)
            if partial is not None:
                explain_outputs(partial, args, show_tree=True)
            raise
    emit_table(analysis.table, args.output, args.max_rows)
    explain_outputs(analysis, args, show_tree=args.explain_analyze)
    return 0
