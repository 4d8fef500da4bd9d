"""TPC-H at a large scale (SF 10, SF 30): each query's time and peak resident memory on
single-node DataFusion and on a 3-worker otel_dist cluster (telemetry off), side by side.

``otel-dist bench`` runs two clusters at once (untraced and traced) and warm-up passes, which
at SF 10 neither fits this machine's memory nor its time. Here one cluster and DataFusion (in a
process of its own, with the cluster's thread budget) take turns query by query; before each
query the processes' peak RSS is reset (``/proc/<pid>/clear_refs``) and read after it, the
cluster's summed over its workers. A query that fails is reported with its one-line error
and the run goes on. From the repository root:

    python -m benchmarks.scale --data /work/data/tpch-sf10 --json benchmarks/results-sf10.json
    python -m benchmarks.scale --data DIR --env MIMALLOC_PURGE_DELAY=0   # workers' setting
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from otel_dist import tpch
from otel_dist.bench_engines import EngineProcess, peak_rss_bytes, reset_peak_rss, rss_bytes
from otel_dist.errors import one_line
from otel_dist.frontend.local import LocalCluster

GB = 1e9


def _timed(run: object, sql: str, pids: list[int]) -> tuple[float | None, int, str | None]:
    """The query's seconds (None if it failed), the processes' summed peak during it, the error."""
    reset_peak_rss(pids)
    started = time.perf_counter()
    try:
        run(sql)  # type: ignore[operator]
    except Exception as error:
        return None, peak_rss_bytes(pids), one_line(error, 200)
    return time.perf_counter() - started, peak_rss_bytes(pids), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a TPC-H folder (tpchgen)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes")
    parser.add_argument("--queries", default="", help="comma-separated numbers (default: all)")
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the workers (repeatable)"
    )
    parser.add_argument("--json", type=Path, help="write the report as JSON")
    args = parser.parse_args()
    numbers = [int(n) for n in args.queries.split(",") if n] or list(tpch.QUERY_NUMBERS)
    extra = dict(item.split("=", 1) for item in args.env)
    env = {**os.environ, "OTEL_DIST_TELEMETRY": "off", **extra}
    rows: dict[str, dict[str, object]] = {}
    datafusion = EngineProcess("datafusion", args.data, args.workers)
    try:
        with LocalCluster(workers=args.workers, data=args.data, env=env) as cluster:
            workers = [p.pid for p in cluster.processes]
            for number in numbers:
                sql = tpch.query(number)
                df_before, od_before = rss_bytes([datafusion.pid]), rss_bytes(workers)
                df_s, df_peak, df_error = _timed(datafusion.run, sql, [datafusion.pid])
                od_s, od_peak, od_error = _timed(cluster.sql, sql, workers)
                row: dict[str, object] = {
                    "datafusion_s": df_s,
                    "otel_dist_s": od_s,
                    "datafusion_peak_gb": round(df_peak / GB, 2),
                    "workers_peak_gb": round(od_peak / GB, 2),
                    "datafusion_rss_before_gb": round(df_before / GB, 2),
                    "workers_rss_before_gb": round(od_before / GB, 2),
                    "errors": [e for e in (df_error, od_error) if e],
                }
                rows[f"q{number:02d}"] = row
                ratio = f"{od_s / df_s:.2f}x" if df_s and od_s else "-"
                print(
                    f"q{number:02d}  datafusion {df_s or float('nan'):7.2f} s "
                    f"{df_peak / GB:5.2f} GB (from {df_before / GB:4.2f})   "
                    f"otel_dist {od_s or float('nan'):7.2f} s "
                    f"{od_peak / GB:5.2f} GB (from {od_before / GB:4.2f})  {ratio}  {'; '.join(e for e in (df_error, od_error) if e)}",
                    flush=True,
                )
    finally:
        datafusion.close()
    done = [r for r in rows.values() if r["datafusion_s"] and r["otel_dist_s"]]
    totals = {
        "datafusion_s": round(sum(r["datafusion_s"] for r in done), 2),  # type: ignore[misc]
        "otel_dist_s": round(sum(r["otel_dist_s"] for r in done), 2),  # type: ignore[misc]
        "datafusion_peak_gb": max(r["datafusion_peak_gb"] for r in rows.values()),  # type: ignore[type-var]
        "workers_peak_gb": max(r["workers_peak_gb"] for r in rows.values()),  # type: ignore[type-var]
        "completed_by_both": len(done),
    }
    report = {"data": str(args.data), "worker_env": extra, "queries": rows, "totals": totals}
    print(json.dumps(totals))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
