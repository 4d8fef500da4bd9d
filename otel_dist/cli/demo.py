"""``otel-dist demo``: TPC-H SF 0.1 generated once, one query on local workers, its tree."""

from __future__ import annotations

import argparse
from typing import Any

from otel_dist.cli.common import print_table, stdout

DEMO_SCALE = 0.1
DEMO_QUERY = 1


def add(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="generate TPC-H SF 0.1 (once, into ~/.cache/otel_dist/tpch-sf0.1 or "
        "$OTEL_DIST_CACHE_DIR), run a query on local workers",
    )
    demo.add_argument("--query", type=int, default=DEMO_QUERY, help="TPC-H query number, 1-22")
    demo.add_argument("--workers", type=int, default=3, help="worker processes to start")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
    print_table(analysis.table)
    stdout.print(analysis.text(), markup=False, highlight=False)
    tree = analysis.tree
    stdout.print(
        f"{analysis.table.num_rows} rows in {(tree.duration_ns or 0) / 1e9:.2f}s, "
        f"{len(tree.all_stages())} stages, query id {tree.query_id}"
    )
    return 0
