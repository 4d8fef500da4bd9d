"""Cluster membership with real processes: a coordinator started before its workers, workers
that join (heartbeats to ``--coordinator``) and leave a running cluster, and workers found by
a DNS name (``localhost`` resolves to 127.0.0.1 here)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_dist.coordinator.core import Coordinator, CoordinatorConfig, WorkerUnreachable
from otel_dist.coordinator.membership import DnsName
from otel_dist.telemetry.setup import Telemetry, TelemetryConfig
from tests.support import CLI, free_port, start_worker, stop, wait_until

COUNT = "select count(*) from nation"


def _start_coordinator(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*CLI, "coordinator", "--port", "0", "--heartbeat", "0.5", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        _, err = stop(process)
        raise AssertionError(f"coordinator did not start: {line}{err}")
    return process, line.split()[-1]


def _query(coordinator: str, sql: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "query", "--coordinator", coordinator, "-e", sql, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _workers_used(coordinator: str, sql: str, tmp_path: Path) -> set[str]:
    """The workers that ran the query's tasks, from its explain JSON."""
    tree_file = tmp_path / "tree.json"
    done = _query(coordinator, sql, "--explain-json", str(tree_file))
    assert done.returncode == 0, done.stderr
    text = tree_file.read_text()
    json.loads(text)
    return set(re.findall(r'"(grpc://[^"]+)"', text))


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        stop(process)


def test_coordinator_started_before_its_workers_uses_them_as_they_come_up(
    tpch_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    coordinator, url = _start_coordinator("--workers", f"127.0.0.1:{port}", "--data", str(tpch_dir))
    processes.append(coordinator)
    early = _query(url, COUNT)
    assert early.returncode == 1
    lines = early.stderr.strip().splitlines()
    assert len(lines) == 1 and "no worker is usable" in lines[0], early.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    worker, _ = start_worker("--port", str(port), "--data-root", str(tpch_dir))
    processes.append(worker)
    done = wait_until(
        lambda: (r := _query(url, COUNT)).returncode == 0 and r, 30, "a query to succeed"
    )
    assert "25" in done.stdout
    assert coordinator.poll() is None


def test_workers_join_and_leave_a_running_cluster(
    tpch_dir: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    coordinator, url = _start_coordinator("--data", str(tpch_dir), "--min-task-bytes", "0")
    processes.append(coordinator)
    joining = ("--port", "0", "--data-root", str(tpch_dir), "--coordinator", url)
    first, first_url = start_worker(*joining, "--heartbeat", "0.5")
    processes.append(first)
    wait_until(lambda: _query(url, COUNT).returncode == 0, 30, "the first worker to join")
    second, second_url = start_worker(*joining, "--heartbeat", "0.5")
    processes.append(second)
    sql = "select l_returnflag, count(*) from lineitem group by l_returnflag"
    wait_until(
        lambda: second_url in _workers_used(url, sql, tmp_path), 30, "a query on the new worker"
    )
    assert {first_url, second_url} <= _workers_used(url, sql, tmp_path)
    # A clean exit says goodbye: the next queries run on the first worker alone.
    stop(second)
    used = _workers_used(url, sql, tmp_path)
    assert used == {first_url}, used
    # A worker that vanishes without a word (SIGKILL) is dropped after missed heartbeats;
    # queries meanwhile still succeed (placed again when it refuses the tasks).
    third, third_url = start_worker(*joining, "--heartbeat", "0.5")
    processes.append(third)
    wait_until(lambda: third_url in _workers_used(url, sql, tmp_path), 30, "the third worker")
    third.kill()
    third.wait(10)
    for _ in range(3):
        done = _query(url, sql)
        assert done.returncode == 0, done.stderr
    wait_until(lambda: _workers_used(url, sql, tmp_path) == {first_url}, 30, "the third dropped")


def test_workers_found_by_dns_name(tpch_dir: Path, processes: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    worker, worker_url = start_worker("--port", str(port), "--data-root", str(tpch_dir))
    processes.append(worker)
    coordinator = Coordinator(
        CoordinatorConfig(workers=(), data=str(tpch_dir), dns_names=(DnsName("localhost", port),)),
        _quiet(),
    )
    try:
        assert worker_url in coordinator.workers
        wait_until(lambda: worker_url in coordinator.worker_health.healthy(), 10, "worker up")
        assert coordinator.sql(COUNT).column(0).to_pylist() == [25]
    finally:
        coordinator.close()
    # The same from the command line, as a Kubernetes headless service name would be given.
    process, url = _start_coordinator(
        "--workers", f"dns:///localhost:{port}", "--data", str(tpch_dir)
    )
    processes.append(process)
    done = wait_until(lambda: (r := _query(url, COUNT)).returncode == 0 and r, 30, "a query")
    assert "25" in done.stdout


def test_a_coordinator_without_workers_fails_queries_in_one_line(tpch_dir: Path) -> None:
    coordinator = Coordinator(CoordinatorConfig(workers=(), data=str(tpch_dir)), _quiet())
    try:
        with pytest.raises(WorkerUnreachable, match="no worker is usable"):
            coordinator.sql(COUNT)
    finally:
        coordinator.close()


def _quiet() -> Telemetry:
    return Telemetry(TelemetryConfig.from_env("otel-dist-coordinator", {}))
