"""Resident memory of each worker of a local cluster over rounds of TPC-H queries.

Workers keep the memory they free (``MIMALLOC_PURGE_DELAY=-1``, see
``otel_dist/worker/allocator.py``); this shows how far their resident size grows, and how fast
the rounds run, under another setting passed through the environment (from the repository
root, which holds the tests' process helpers too):

    python -m benchmarks.worker_memory --scale 1 --rounds 25
    python -m benchmarks.worker_memory --scale 1 --rounds 25 --env MIMALLOC_PURGE_DELAY=1000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from otel_dist import tpch
from otel_dist.frontend.local import LocalCluster
from otel_dist.tpch.datagen import default_cache_dir, generate
from tests.support import process_usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--queries", default="all", help="comma-separated numbers, or all")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the workers")
    parser.add_argument(
        "--idle", default="", help="comma-separated seconds after the last round to sample again"
    )
    options = parser.parse_args()
    queries = (
        list(tpch.QUERY_NUMBERS)
        if options.queries == "all"
        else [int(number) for number in options.queries.split(",")]
    )
    env = {**os.environ, "OTEL_DIST_TELEMETRY": "off"}
    env.update(pair.split("=", 1) for pair in options.env)
    data = generate(options.scale, default_cache_dir(options.scale))
    with LocalCluster(workers=options.workers, data=data, target_partitions=1, env=env) as cluster:
        for number in range(1, options.rounds + 1):
            started = time.perf_counter()
            for query in queries:
                cluster.sql(tpch.query(query))
            print(
                f"round {number:3d}  {time.perf_counter() - started:6.2f} s  "
                f"{_memory(cluster.processes)}",
                flush=True,
            )
        idle_started = time.monotonic()
        for seconds in (float(s) for s in options.idle.split(",") if s):
            time.sleep(max(0.0, idle_started + seconds - time.monotonic()))
            print(f"idle {seconds:5.0f} s{'':9s}{_memory(cluster.processes)}", flush=True)


def _memory(processes: list[subprocess.Popen[bytes]]) -> str:
    """Each worker's RSS and, of it, the pages lazily freed (``MADV_FREE``): resident until
    the kernel needs memory, which takes them back without writing them anywhere (they sit on
    the inactive file list, outside a cgroup's working set)."""
    pids = [process.pid for process in processes]
    return (
        f"worker RSS (MB): {[process_usage(pid).rss_bytes >> 20 for pid in pids]}  "
        f"lazily freed: {[_lazy_free_bytes(pid) >> 20 for pid in pids]}"
    )


def _lazy_free_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("LazyFree:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
