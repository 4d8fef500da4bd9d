"""Bad input on the CLI: one line on stderr naming the cause, exit code 1, no traceback,
no hang and no worker process left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import remote_cluster, stop

CLI = [sys.executable, "-m", "otel_dist.cli"]


def run_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def worker_processes_of(pid: int) -> list[str]:
    """Worker processes started by process ``pid`` that are still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and b"--parent-pid" in argv and str(pid).encode() in argv:
            found.append(entry.name)
    return found


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("otel-dist: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("selec 1", "SQL syntax error"),
        ("select * from no_such_table", "no_such_table"),
        ("select no_such_column from orders", "no_such_column"),
    ],
)
def test_local_rejects_bad_sql(tpch_dir: Path, sql: str, needle: str) -> None:
    process = subprocess.Popen(
        [*CLI, "local", "--workers", "2", "--data", str(tpch_dir), "-e", sql],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=90)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert_one_line_error(result, needle)
    assert worker_processes_of(process.pid) == []


def test_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert_one_line_error(run_cli("local", "--data", str(missing), "-e", "select 1"), str(missing))


def test_empty_data_folder(tmp_path: Path) -> None:
    assert_one_line_error(
        run_cli("local", "--data", str(tmp_path), "-e", "select 1"), str(tmp_path)
    )


def test_unreachable_worker(tpch_dir: Path) -> None:
    """The coordinator starts anyway (the worker may come up later); a query fails in one line
    naming the worker it tried."""
    url = "grpc://127.0.0.1:9"
    coordinator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otel_dist.cli",
            "coordinator",
            "--port",
            "0",
            "--workers",
            url,
            "--data",
            str(tpch_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert coordinator.stdout is not None
        address = coordinator.stdout.readline().split()[-1]
        result = run_cli("query", "--coordinator", address, "-e", "select 1 from nation")
        assert_one_line_error(result, "no worker is usable", url)
    finally:
        stop(coordinator)


def test_unreachable_coordinator() -> None:
    url = "grpc://127.0.0.1:9"
    assert_one_line_error(run_cli("query", "--coordinator", url, "-e", "select 1"), url)


def test_unknown_output_format(tpch_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.txt"
    result = run_cli("local", "--data", str(tpch_dir), "-e", "select 1", "--output", str(out))
    assert_one_line_error(result, "result.txt")


def test_local_writes_output_files(tpch_dir: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "nations.parquet"
    sql = "select n_name from nation order by n_name"
    result = run_cli(
        "local", "--workers", "2", "--data", str(tpch_dir), "-e", sql, "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.num_rows == 25
    assert table.column("n_name")[0].as_py() == "ALGERIA"


def test_local_prints_q1(tpch_dir: Path) -> None:
    from otel_dist import tpch

    result = run_cli("local", "--workers", "3", "--data", str(tpch_dir), "-e", tpch.query(1))
    assert result.returncode == 0, result.stderr
    assert "l_returnflag" in result.stdout and "count_order" in result.stdout
    assert (
        sum(1 for line in result.stdout.splitlines() if line.startswith(("│ A", "│ N", "│ R"))) == 4
    )


def test_worker_coordinator_query_across_processes(tpch_dir: Path) -> None:
    """The multi-host commands, here all on 127.0.0.1."""
    with remote_cluster(tpch_dir) as (coordinator_url, _):
        result = run_cli(
            "query", "--coordinator", coordinator_url, "-e", "select count(*) as n from region"
        )
        assert result.returncode == 0, result.stderr
        assert "5" in result.stdout
        bad = run_cli("query", "--coordinator", coordinator_url, "-e", "select * from nope")
        assert_one_line_error(bad, "nope")


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("OTEL_DIST_MIN_TASK_BYTES", "32MB", "whole number of bytes"),
        ("OTEL_DIST_BROADCAST_THRESHOLD", "-1", "0 or more"),
    ],
)
def test_bad_planner_setting_in_the_environment(
    tpch_dir: Path, variable: str, value: str, needle: str
) -> None:
    result = subprocess.run(
        [*CLI, "local", "--workers", "1", "--data", str(tpch_dir), "-e", "select 1"],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
        env={**os.environ, variable: value},
    )
    assert_one_line_error(result, variable, needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--warmup", "-1"), "--warmup must be 0 or more"),
        (("--runs", "0"), "--runs"),
        (("--queries", "23"), "no TPC-H query 23"),
    ],
)
def test_bench_rejects_bad_options(tpch_dir: Path, args: tuple[str, ...], needle: str) -> None:
    result = run_cli("bench", "--data", str(tpch_dir), "--scale", "0.01", *args)
    assert_one_line_error(result, needle)
