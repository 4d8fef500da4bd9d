"""Each worker's resident memory while one TPC-H query runs, and what they hold after it.

``benchmarks.scale`` reports a query's peak; this shows when the peak comes and what the
workers give back afterwards: it samples every worker's RSS every 100 ms while the query runs
on a fresh local cluster (telemetry off), prints the summed peak and when it came, then the
workers' RSS 3 s and 12 s after the query (a worker's pooled threads leave the pool after 5 s
without work, and their allocator heaps go with them: ``otel_dist/background.py``). From the
repository root:

    python -m benchmarks.query_memory --data /work/data/tpch-sf10 --query 9 \\
        --env MIMALLOC_PURGE_DELAY=0
    python -m benchmarks.query_memory --data DIR --query 9 --workers 1 --target-partitions 3
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

from otel_dist import tpch
from otel_dist.frontend.local import LocalCluster
from tests.support import process_usage

GB = 1e9
SAMPLE_S = 0.1


def _rss_gb(pids: list[int]) -> list[float]:
    return [process_usage(pid).rss_bytes / GB for pid in pids]


def _row(values: list[float]) -> str:
    return " ".join(f"{value:5.2f}" for value in values) + f"  (sum {sum(values):5.2f} GB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a TPC-H folder (tpchgen)")
    parser.add_argument("--query", type=int, required=True, help="a TPC-H query number")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--target-partitions", type=int, default=2)
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the workers (repeatable)"
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    env = {**os.environ, "OTEL_DIST_TELEMETRY": "off", **extra}
    with LocalCluster(
        workers=args.workers,
        data=args.data,
        env=env,
        target_partitions=args.target_partitions,
    ) as cluster:
        pids = [process.pid for process in cluster.processes]
        time.sleep(1)
        print("idle          ", _row(_rss_gb(pids)))
        samples: list[tuple[float, list[float]]] = []
        done = threading.Event()
        started = time.perf_counter()

        def sample() -> None:
            while not done.is_set():
                samples.append((time.perf_counter() - started, _rss_gb(pids)))
                time.sleep(SAMPLE_S)

        sampler = threading.Thread(target=sample, name="rss-sampler")
        sampler.start()
        try:
            cluster.sql(tpch.query(args.query))
        finally:
            done.set()
            sampler.join()
        took = time.perf_counter() - started
        at, peak = max(samples, key=lambda item: sum(item[1]))
        print(f"query          {took:.2f} s")
        print(f"peak at {at:5.1f} s", _row(peak))
        time.sleep(3)
        print("3 s after     ", _row(_rss_gb(pids)))
        time.sleep(9)
        print("12 s after    ", _row(_rss_gb(pids)))


if __name__ == "__main__":
    main()
