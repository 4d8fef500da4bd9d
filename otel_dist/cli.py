"""The ``otel-dist`` command line: demo, tpchgen, local, worker, coordinator, query.

Errors a user can cause (bad SQL, unknown table, bad folder, unreachable worker) end with a
one-line message on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
from rich.console import Console
from rich.table import Table

from otel_dist.coordinator.core import QueryError
from otel_dist.planner.catalog import CatalogError
from otel_dist.planner.distribute import PlanningError

DEMO_SCALE = 0.1
DEMO_QUERY = 1
EXIT_USER_ERROR = 1
_METRICS_PORT_HELP = (
    "serve Prometheus /metrics on this port (0: a free one); OTEL_METRICS_EXPORTER also selects "
    "otlp, prometheus (port OTEL_EXPORTER_PROMETHEUS_PORT, default 9464) or none"
)

stderr = Console(stderr=True)
# Off a terminal (pipes, logs, CI) rich would wrap tables at 80 columns; keep rows whole.
stdout = Console(width=None if sys.stdout.isatty() else 400)


class UserError(Exception):
    """A problem with the user's input, reported in one line."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        stderr.print("otel-dist: interrupted")
        return 130
    except (UserError, QueryError, PlanningError, CatalogError, RuntimeError, OSError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        stderr.print(f"otel-dist: error: {message}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otel-dist", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate TPC-H SF 0.1, run a query on 3 local workers")
    demo.add_argument("--query", type=int, default=DEMO_QUERY, help="TPC-H query number")
    demo.add_argument("--workers", type=int, default=3)
    demo.set_defaults(run=_demo)

    gen = commands.add_parser("tpchgen", help="generate TPC-H parquet, one folder per table")
    gen.add_argument("--scale", type=float, required=True)
    gen.add_argument("--out", type=Path, required=True)
    gen.set_defaults(run=_tpchgen)

    local = commands.add_parser("local", help="run SQL on a local cluster of worker processes")
    local.add_argument("--workers", type=int, default=3)
    local.add_argument("--data", type=Path, required=True)
    local.add_argument("-e", "--execute", dest="sql", required=True, help="SQL to run")
    local.add_argument("--output", type=Path, help="write the result (.parquet, .csv, .json)")
    local.add_argument("--tasks-per-stage", type=int)
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
    worker.add_argument("--host", default="127.0.0.1")
    worker.add_argument("--port", type=int, default=50051)
    worker.add_argument("--memory-budget", type=int, default=1 << 30, help="bytes before spilling")
    worker.add_argument("--target-partitions", type=int, default=2)
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    worker.add_argument("--metrics-port", type=int, help=_METRICS_PORT_HELP)
    worker.set_defaults(run=_worker)

    coordinator = commands.add_parser("coordinator", help="run a coordinator (Flight server)")
    coordinator.add_argument("--host", default="127.0.0.1")
    coordinator.add_argument("--port", type=int, default=50050)
    coordinator.add_argument("--workers", required=True, help="comma-separated worker URLs")
    coordinator.add_argument("--data", type=Path, required=True)
    coordinator.add_argument("--tasks-per-stage", type=int)
    coordinator.add_argument("--metrics-port", type=int, help=_METRICS_PORT_HELP)
    coordinator.set_defaults(run=_coordinator)

    query = commands.add_parser("query", help="send SQL to a running coordinator")
    query.add_argument("--coordinator", required=True, help="coordinator URL, grpc://host:port")
    query.add_argument("-e", "--execute", dest="sql", required=True)
    query.add_argument("--output", type=Path)
    query.add_argument("--timeout", type=float, default=600.0)
    query.set_defaults(run=_query)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from otel_dist import tpch
    from otel_dist.coordinator.local import LocalCluster
    from otel_dist.tpch.datagen import default_cache_dir, generate

    data = generate(DEMO_SCALE, default_cache_dir(DEMO_SCALE))
    sql = tpch.query(args.query)
    stdout.print(f"[bold]TPC-H Q{args.query}[/bold] at SF {DEMO_SCALE} on {args.workers} workers")
    with LocalCluster(workers=args.workers, data=data) as cluster:
        result = cluster.execute(sql)
    _print_table(result.table)
    stdout.print(
        f"{result.table.num_rows} rows in {result.duration_ns / 1e9:.2f}s, "
        f"{len(result.plan.stages)} stages, query id {result.query_id}"
    )
    return 0


def _tpchgen(args: argparse.Namespace) -> int:
    from otel_dist.tpch.datagen import generate

    if args.scale <= 0:
        raise UserError(f"scale must be positive, got {args.scale}")
    path = generate(args.scale, args.out)
    stdout.print(f"TPC-H SF {args.scale:g} written to {path}")
    return 0


def _local(args: argparse.Namespace) -> int:
    from otel_dist.coordinator.local import LocalCluster

    _check_output(args.output)
    with LocalCluster(
        workers=args.workers,
        data=args.data,
        tasks_per_stage=args.tasks_per_stage,
        metrics_ports=_metrics_ports(args.metrics_ports),
    ) as cluster:
        for url in cluster.metrics_urls:
            stderr.print(f"metrics: {url}", markup=False, highlight=False)
        table = cluster.sql(args.sql)
    _emit(table, args.output)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from otel_dist.worker.process import run_worker
    from otel_dist.worker.server import WorkerConfig

    config = WorkerConfig(
        host=args.host,
        port=args.port,
        memory_budget_bytes=args.memory_budget,
        target_partitions=args.target_partitions,
        metrics_port=_port(args.metrics_port),
    )
    run_worker(config, parent_pid=args.parent_pid)
    return 0


def _coordinator(args: argparse.Namespace) -> int:
    from otel_dist.coordinator.core import Coordinator, CoordinatorConfig
    from otel_dist.coordinator.server import CoordinatorServer
    from otel_dist.telemetry.metrics import start_process_telemetry

    workers = tuple(url.strip() for url in args.workers.split(",") if url.strip())
    telemetry, metrics = start_process_telemetry(
        "otel-dist-coordinator", prometheus_port=_port(args.metrics_port), prometheus_host=args.host
    )
    coordinator = Coordinator(
        CoordinatorConfig(
            workers=workers, data=str(args.data), tasks_per_stage=args.tasks_per_stage
        ),
        telemetry,
        metrics,
    )
    try:
        coordinator.check_workers()
        server = CoordinatorServer(coordinator, args.host, args.port)
        stdout.print(f"otel-dist coordinator listening on {server.url}")
        if metrics.prometheus_url:
            stdout.print(f"otel-dist coordinator metrics on {metrics.prometheus_url}")
        server.serve()
    finally:
        coordinator.close()
    return 0


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
    _check_output(args.output)
    client = flight.FlightClient(args.coordinator)
    ticket = flight.Ticket(json.dumps({"sql": args.sql}).encode())
    try:
        table = client.do_get(
            ticket, options=flight.FlightCallOptions(timeout=args.timeout)
        ).read_all()
    except flight.FlightUnavailableError:
        raise UserError(f"coordinator {args.coordinator} is unreachable") from None
    except flight.FlightError as error:
        raise UserError(str(error).splitlines()[0].split(". Detail:")[0]) from None
    finally:
        client.close()
    _emit(table, args.output)
    return 0


_WRITERS = (".parquet", ".csv", ".json")


def _check_output(path: Path | None) -> None:
    if path is not None and path.suffix.lower() not in _WRITERS:
        raise UserError(f"output file {path} must end in .parquet, .csv or .json")


def _emit(table: pa.Table, output: Path | None) -> None:
    if output is None:
        _print_table(table)
        return
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, output)
    elif suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, output)
    else:
        output.write_text(json.dumps(table.to_pylist(), default=str, indent=1) + "\n")
    stderr.print(f"{table.num_rows} rows written to {output}")


def _print_table(table: pa.Table) -> None:
    view = Table(show_lines=False)
    for name in table.column_names:
        view.add_column(name, no_wrap=True)
    for row in table.to_pylist():
        view.add_row(*("NULL" if v is None else str(v) for v in row.values()))
    stdout.print(view)


if __name__ == "__main__":
    sys.exit(main())
