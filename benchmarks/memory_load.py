"""Resident memory of a coordinator and its workers before, during and after a load of
concurrent clients, and whether the workers hand their memory back once idle.

16 clients run TPC-H queries (one after the other each, cycling through the 22) against a
3-worker local cluster for ``--seconds``; RSS is sampled every half second. "idle" is after
start-up and one warm-up round of the 22 queries (``--warm-up``), "during" the peak under load, "after" at each of
``--after`` seconds past the last query. The coordinator runs in this process (its RSS is
this process's, clients included). From the repository root:

    python -m benchmarks.memory_load --data /work/data/tpch-sf0.1
    python -m benchmarks.memory_load --data DIR --env MIMALLOC_PURGE_DELAY=1000
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

from otel_dist import tpch
from otel_dist.frontend.local import LocalCluster
from otel_dist.tpch.datagen import default_cache_dir, generate
from otel_dist.worker.memory import release_memory
from tests.support import process_usage

MB = 1 << 20


def _rss(pids: list[int]) -> list[int]:
    return [process_usage(pid).rss_bytes // MB for pid in pids]


def _where(pid: int) -> dict[str, int]:
    """Resident MB by kind of mapping: the brk heap (glibc's main arena), anonymous
    mappings (mimalloc segments, glibc thread arenas, pyarrow's pool), files (libraries)."""
    kinds: dict[str, int] = {"heap": 0, "anonymous": 0, "files": 0, "other": 0}
    kind = "other"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                name = line.split()[5] if len(line.split()) > 5 else ""
                kind = (
                    "heap"
                    if name == "[heap]"
                    else "anonymous"
                    if not name
                    else "files"
                    if name.startswith("/")
                    else "other"
                )
            elif first == "Rss:":
                kinds[kind] += int(line.split()[1])
    return {k: v // 1024 for k, v in kinds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="TPC-H folder (default: generated SF 0.1)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--after", default="5,10,20,30", help="seconds after the load")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the workers")
    parser.add_argument("--worker-arg", action="append", default=[], help="worker option")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument(
        "--warm-up",
        choices=("q1", "all"),
        default="all",
        help="before measuring idle: Q1 only, or each of the 22 queries once (their code "
        "pages are then resident, as in any worker that has served queries)",
    )
    parser.add_argument("--idle-wait", type=float, default=10.0, help="seconds before idle")
    options = parser.parse_args()
    data = options.data or generate(0.1, default_cache_dir(0.1))
    env = {**os.environ, "OTEL_DIST_TELEMETRY": os.environ.get("OTEL_DIST_TELEMETRY", "on")}
    env.update(pair.split("=", 1) for pair in options.env)
    after = [float(s) for s in options.after.split(",")]
    with LocalCluster(
        workers=options.workers, data=data, env=env, worker_args=options.worker_arg
    ) as cluster:
        pids = [os.getpid()] + [p.pid for p in cluster.processes]
        for number in tpch.QUERY_NUMBERS if options.warm_up == "all" else [1]:
            cluster.sql(tpch.query(number))
        time.sleep(options.idle_wait)
        idle = _rss(pids)
        idle_where = [_where(pid) for pid in pids]
        peak = list(idle)
        stop = threading.Event()
        counts = {"ok": 0, "error": 0}
        lock = threading.Lock()

        def client(index: int) -> None:
            number = index
            while not stop.is_set():
                query = tpch.QUERY_NUMBERS[number % len(tpch.QUERY_NUMBERS)]
                number += 1
                try:
                    cluster.sql(tpch.query(query))
                    outcome = "ok"
                except Exception:
                    outcome = "error"
                with lock:
                    counts[outcome] += 1

        clients = [
            threading.Thread(target=client, args=(i,), daemon=True) for i in range(options.clients)
        ]
        started = time.monotonic()
        for thread in clients:
            thread.start()
        while time.monotonic() - started < options.seconds:
            peak = [max(a, b) for a, b in zip(peak, _rss(pids), strict=True)]
            time.sleep(0.5)
        stop.set()
        for thread in clients:
            thread.join(300)
        ended = time.monotonic()
        release_memory()  # the coordinator's own (this process)
        samples: dict[str, list[int]] = {}
        for seconds in after:
            time.sleep(max(0.0, ended + seconds - time.monotonic()))
            samples[f"{seconds:g}s"] = _rss(pids)
        where = [_where(pid) for pid in pids]
        figures = {
            "env": options.env,
            "worker_args": options.worker_arg,
            "queries": counts,
            "seconds": round(ended - started, 1),
            "rss_mb": {"idle": idle, "peak": peak, **{f"after {k}": v for k, v in samples.items()}},
            "rss_mb_by_mapping_idle": idle_where,
            "rss_mb_by_mapping_after": where,
            "order": "coordinator (with the clients), then each worker",
        }
    print(json.dumps(figures, indent=1))
    if options.json:
        options.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
