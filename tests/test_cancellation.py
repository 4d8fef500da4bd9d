"""Ctrl-C stops the query's DataFusion execution on the workers, measured by their CPU time
(``/proc/<pid>/stat``): a scan-heavy aggregate (no batch comes out before its input is done)
is interrupted on ``otel-dist query`` and on ``otel-dist local``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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

# A scan-heavy aggregate: about 1/3 s of CPU per input batch and half a minute or more in all
# at SF 0.1, and the partial aggregate emits nothing until its input is read, so only a cancel
# reaching DataFusion (or the task's files going away) stops it. What this cannot show: an
# operator over in-memory stage inputs that never yields to tokio (an exploding join feeding
# an aggregate) runs on until its current poll returns (see otel_dist/worker/streams.py).
SLOW = (
    "select count(*), max(regexp_replace(repeat(l_comment, 60), '(a|e|i)+', 'x', 'g')) "
    "from lineitem"
)


@pytest.fixture(scope="module")
def sf01() -> Path:
    """TPC-H SF 0.1 (slow enough to interrupt), generated once into the demo's cache folder
    (about 10 s) unless ``OTEL_DIST_TEST_DATA_SF01`` names one."""
    given = os.environ.get("OTEL_DIST_TEST_DATA_SF01")
    folder = Path(given) if given else default_cache_dir(0.1)
    return generate(0.1, folder, show_progress=False)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        stop(process)


@pytest.fixture
def slow_cluster(
    sf01: Path, processes: list[subprocess.Popen[str]]
) -> tuple[subprocess.Popen[str], str, str]:
    """A worker (one partition per task: the whole stage runs in the one stream the task
    pulls) and a coordinator over it; the worker process, its URL and the coordinator's."""
    worker, worker_url = start_worker(
        "--port", "0", "--data-root", str(sf01), "--target-partitions", "1"
    )
    processes.append(worker)
    coordinator = subprocess.Popen(
        [*CLI, "coordinator", "--port", "0", "--workers", worker_url, "--data", str(sf01)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    processes.append(coordinator)
    assert coordinator.stdout is not None
    return worker, worker_url, coordinator.stdout.readline().split()[-1]


def _query(address: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "query", "--coordinator", address, "-e", SLOW, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def test_ctrl_c_on_query_stops_the_workers_computing(
    slow_cluster: tuple[subprocess.Popen[str], str, str], processes: list[subprocess.Popen[str]]
) -> None:
    worker, worker_url, address = slow_cluster
    client = _query(address)
    processes.append(client)
    wait_until(lambda: worker_health(worker_url)["running_tasks"], 30, "the query to run")
    wait_until(lambda: computing(worker.pid), 30, "the worker to compute")
    interrupted = time.monotonic()
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=10)
    idle_after = seconds_until_idle([worker.pid], interrupted)
    print(f"worker idle {idle_after:.2f}s after Ctrl-C")
    assert client.returncode == 130
    assert err.strip().splitlines() == ["otel-dist: interrupted"], err
    # Bound with room for a loaded machine: the last batch in DataFusion's hands finishes.
    assert idle_after < 5, idle_after


def test_query_timeout_stops_the_workers_computing(
    slow_cluster: tuple[subprocess.Popen[str], str, str], processes: list[subprocess.Popen[str]]
) -> None:
    worker, _, address = slow_cluster
    started = time.monotonic()
    client = _query(address, "--timeout", "4")
    processes.append(client)
    _, err = client.communicate(timeout=30)
    timed_out = time.monotonic()
    idle_after = seconds_until_idle([worker.pid], timed_out)
    print(f"client gave up after {timed_out - started:.1f}s, worker idle {idle_after:.2f}s later")
    assert client.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "timed out after 4s (--timeout)" in lines[0], err
    assert idle_after < 5, idle_after


def test_ctrl_c_on_local_stops_everything_with_one_line(sf01: Path) -> None:
    local = subprocess.Popen(
        [*CLI, "local", "--workers", "1", "--data", str(sf01), "-e", SLOW],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        workers = wait_until(lambda: _children(local.pid), 30, "the worker process")
        wait_until(lambda: computing(workers[0]), 60, "the worker to compute")
        interrupted = time.monotonic()
        # As a terminal's Ctrl-C does: SIGINT to the whole foreground process group.
        os.killpg(local.pid, signal.SIGINT)
        _, err = local.communicate(timeout=10)
        exited = time.monotonic() - interrupted
    finally:
        stop(local)
    print(f"otel-dist local exited {exited:.2f}s after Ctrl-C")
    assert local.returncode == 130, err
    assert err.strip().splitlines() == ["otel-dist: interrupted"], err
    assert not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in workers)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found.extend(int(child) for child in children)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
