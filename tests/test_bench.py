"""``otel-dist bench`` runs the three systems side by side and writes the report the benchmark
issue names; the numbers themselves are reported, never asserted."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from otel_dist.bench_engines import process_tree


def test_bench_writes_the_report(tpch_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "otel_dist.cli", "bench", "--data", str(tpch_dir)),
            *("--scale", "0.01", "--workers", "2", "--runs", "2", "--queries", "1,6"),
            *("--warmup", "1", "--peers", "duckdb,spark"),
            *("--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "distributed_vs_datafusion=" in result.stdout and "q06" in result.stdout
    report = json.loads(out.read_text())
    assert {"machine", "scale", "queries", "totals", "ratios"} <= set(report)
    assert report["scale"] == 0.01 and report["machine"]["cpus"] >= 1
    assert report["runs"] == 2 and report["warmup"] == 1
    assert result.stdout.count("warm-up pass done") == 1
    systems = {"datafusion", "otel_dist", "otel_dist_traced", "duckdb"}
    spark_missing = importlib.util.find_spec("pyspark") is None or shutil.which("java") is None
    if spark_missing:
        assert not os.environ.get("CI"), "CI installs pyspark and Java (.ci/run)"
        assert "spark skipped: " in result.stdout
    else:
        systems.add("spark")
        # Spark's JVM logs and draws progress bars on the terminal it inherits: the report
        # must read alone, with the JVM's output in a log file of its own.
        for noise in ("WARN", "log4j", "[Stage", "setLogLevel"):
            assert noise not in result.stdout + result.stderr, noise
    assert set(report["systems"]) == systems
    assert set(report["queries"]) == {"q01", "q06"}
    # every system's peak resident memory, per query: a cluster's summed over its 2 workers
    # (each a Python process with DataFusion loaded: well over 50 MB)
    for name, peaks in report["peak_rss_bytes"].items():
        assert set(peaks) == systems, name
        assert all(peak > 20e6 for peak in peaks.values()), (name, peaks)
        assert peaks["otel_dist"] > 100e6, (name, peaks)
    assert report["max_peak_rss_bytes"]["datafusion"] == max(
        p["datafusion"] for p in report["peak_rss_bytes"].values()
    )
    assert "peak RSS over the queries" in result.stdout
    for medians in report["queries"].values():
        assert set(medians) == systems and all(v > 0 for v in medians.values())
    totals, ratios = report["totals"], report["ratios"]
    for system in systems:
        assert math.isclose(totals[system], sum(q[system] for q in report["queries"].values()))
    assert math.isclose(
        ratios["distributed_vs_datafusion"], totals["otel_dist"] / totals["datafusion"]
    )
    assert math.isclose(
        ratios["traced_vs_untraced"], totals["otel_dist_traced"] / totals["otel_dist"]
    )
    router = report["router"]
    assert math.isclose(ratios["router_vs_raw_flight"], router["router_mb_s"] / router["raw_mb_s"])
    assert report["explain_build_ms_10k_spans"] > 0
    runs = report["runs"]
    for system in systems:
        assert len(report["run_totals"][system]) == runs
        assert all(total > 0 for total in report["run_totals"][system])
    run_totals, run_ratios = report["run_totals"], report["run_ratios"]
    for run in range(runs):
        assert math.isclose(
            run_ratios["traced_vs_untraced"][run],
            run_totals["otel_dist_traced"][run] / run_totals["otel_dist"][run],
        )
        assert math.isclose(
            run_ratios["distributed_vs_datafusion"][run],
            run_totals["otel_dist"][run] / run_totals["datafusion"][run],
        )
    assert "run by run: distributed_vs_datafusion" in result.stdout


def test_a_peer_that_fails_is_left_out_and_the_run_goes_on(tpch_dir: Path, tmp_path: Path) -> None:
    """DuckDB's process dies after the warm-up (as an out-of-memory kill would end it): the
    bench says so in one line and reports the other systems, instead of losing the run."""
    out = tmp_path / "bench.json"
    bench = subprocess.Popen(
        [
            *(sys.executable, "-m", "otel_dist.cli", "bench", "--data", str(tpch_dir)),
            *("--scale", "0.01", "--workers", "2", "--runs", "2", "--queries", "1,6"),
            *("--warmup", "1", "--peers", "duckdb", "--json", str(out)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert bench.stdout is not None
        for line in bench.stdout:
            if "warm-up pass done" in line:
                break
        duckdb = [pid for pid in process_tree(bench.pid) if _has_loaded(pid, "duckdb")]
        assert len(duckdb) == 1, duckdb
        os.kill(duckdb[0], signal.SIGKILL)
        stdout, stderr = bench.communicate(timeout=300)
    finally:
        bench.kill()
    assert bench.returncode == 0, stderr
    assert "duckdb left out of the report: q01 failed: duckdb exited (killed by SIGKILL)" in stdout
    report = json.loads(out.read_text())
    assert report["systems"] == ["datafusion", "otel_dist", "otel_dist_traced"]
    assert report["left_out"] == {"duckdb": "q01 failed: duckdb exited (killed by SIGKILL)"}
    for medians in report["queries"].values():
        assert set(medians) == set(report["systems"])


def _has_loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
