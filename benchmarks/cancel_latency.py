"""How soon a worker stops computing after Ctrl-C on ``otel-dist query``: the distribution
over repeated interrupts, measured by the worker's CPU time (``/proc/<pid>/stat``).

One worker (one partition per task) and a coordinator run a scan-heavy aggregate at TPC-H
SF 0.1 (the cancellation tests' query); each run starts the query with the CLI, waits until
the worker computes, then a random 0-2 s longer (so the interrupt lands anywhere within a
Parquet row group's work), sends SIGINT to the client and measures the seconds until the
worker's CPU falls to idle (the end of the last 0.1 s sample in which it computed). From the
repository root:

    python -m benchmarks.cancel_latency --runs 15
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import time
from pathlib import Path

from otel_dist.tpch.datagen import default_cache_dir, generate
from tests.support import (
    CLI,
    computing,
    seconds_until_idle,
    start_worker,
    stop,
    wait_until,
    worker_health,
)
from tests.test_cancellation import SLOW


def measure(data: Path, runs: int, seed: int) -> list[float]:
    worker, worker_url = start_worker(
        "--port", "0", "--data-root", str(data), "--target-partitions", "1"
    )
    coordinator = subprocess.Popen(
        [*CLI, "coordinator", "--port", "0", "--workers", worker_url, "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert coordinator.stdout is not None
    address = coordinator.stdout.readline().split()[-1]
    rng = random.Random(seed)
    latencies: list[float] = []
    try:
        for run in range(runs):
            client = subprocess.Popen(
                [*CLI, "query", "--coordinator", address, "-e", SLOW],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            wait_until(lambda: worker_health(worker_url)["running_tasks"], 30, "the query")
            wait_until(lambda: computing(worker.pid), 30, "the worker to compute")
            time.sleep(rng.uniform(0, 2))
            interrupted = time.monotonic()
            client.send_signal(signal.SIGINT)
            client.wait(10)
            latency = seconds_until_idle([worker.pid], interrupted)
            latencies.append(latency)
            print(f"run {run + 1}: worker idle {latency:.2f} s after Ctrl-C", flush=True)
            wait_until(lambda: not worker_health(worker_url)["tasks"], 30, "the release")
    finally:
        stop(coordinator)
        stop(worker)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="interrupts to measure")
    parser.add_argument("--data", type=Path, help="TPC-H SF 0.1 (default: the demo's cache)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random extra waits")
    parser.add_argument("--json", type=Path, help="write the latencies as JSON")
    args = parser.parse_args()
    data = args.data or generate(0.1, default_cache_dir(0.1), show_progress=False)
    latencies = measure(data, args.runs, args.seed)
    ordered = sorted(latencies)
    summary = {
        "runs": len(latencies),
        "median_s": round(statistics.median(latencies), 2),
        "p90_s": round(ordered[max(0, int(len(ordered) * 0.9) - 1)], 2),
        "max_s": round(ordered[-1], 2),
        "within_1s": sum(latency <= 1.0 for latency in latencies),
        "latencies_s": [round(latency, 2) for latency in latencies],
    }
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
