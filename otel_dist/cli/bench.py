"""``otel-dist bench``: single-node DataFusion against otel_dist, untraced and traced."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from otel_dist.cli.common import UserError, stderr, stdout
from otel_dist.errors import one_line


def add(commands: Any) -> None:
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
    bench.add_argument(
        "--peers",
        default="",
        help="comma-separated engines installed here to run beside: duckdb, spark (skipped, "
        "with a line saying why, when missing)",
    )
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
    from otel_dist.bench_engines import PEERS

    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    unknown_peers = [p for p in peers if p not in PEERS]
    if unknown_peers:
        raise UserError(f"no peer {unknown_peers[0]!r}: --peers takes {', '.join(PEERS)}")
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
        peers=peers,
    )
    try:
        report = run_bench(options, stdout)
    except RuntimeError as error:  # the data cannot be generated (e.g. the tpcds extra)
        raise UserError(one_line(error)) from None
    if args.json:
        write_report(report, args.json)
        stderr.print(f"report written to {args.json}", markup=False)
    return 0
