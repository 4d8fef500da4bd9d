"""Load: 32 concurrent queries on a 3-worker local cluster, every result checked against
single-node DataFusion and every query's telemetry complete; afterwards the workers' memory,
threads and open files are back near their baseline and the telemetry cache is within its
bound. A longer soak (``-m slow``) repeats the rounds with a small cache that must evict."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

from otel_dist import tpch
from otel_dist.coordinator.core import QueryResult
from otel_dist.frontend.local import LocalCluster
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.envelope import TaskRef
from otel_dist.worker.allocator import SERVER_ALLOCATOR_ENV
from tests.oracle import assert_same_rows, has_order_by, single_node
from tests.support import ProcessUsage, process_usage, wait_until, worker_health

CONCURRENT = 32
CACHE_ENTRIES = 300
QUERIES = [
    tpch.query(1),
    tpch.query(6),
    tpch.query(3),
    tpch.query(12),
    "select l_returnflag, count(*) as n, sum(l_quantity) as q from lineitem group by l_returnflag",
    "select o_orderpriority, count(*) as n from orders group by o_orderpriority order by 1",
    "select l_orderkey, l_comment from lineitem limit 5",
    "select n_name, r_name from nation join region on n_regionkey = r_regionkey order by n_name",
]
# Generous: Python and Arrow keep memory they freed, gRPC keeps some threads it started.
RSS_SLACK_BYTES = 256 << 20
THREAD_SLACK = 10
FILE_SLACK = 8


@pytest.fixture(scope="module")
def loaded(tpch_dir: Path) -> Iterator[LocalCluster]:
    args = ["--telemetry-cache-entries", str(CACHE_ENTRIES)]
    with LocalCluster(workers=3, data=tpch_dir, worker_args=args) as local:
        yield local


@pytest.fixture(scope="module")
def expected(tpch_dir: Path) -> dict[str, pa.Table]:
    return {sql: single_node(tpch_dir, sql) for sql in QUERIES}


def _check(result: QueryResult, sql: str, expected: pa.Table) -> None:
    if " limit " in sql:  # any rows of the table: check the count and the columns
        assert result.table.num_rows == expected.num_rows
        assert result.table.column_names == expected.column_names
    else:
        assert_same_rows(result.table, expected, ordered=has_order_by(sql))
    telemetry = result.telemetry
    assert telemetry is not None
    assert not telemetry.lost_tasks, f"{sql[:40]}: lost {telemetry.lost_tasks}"
    task_spans = {
        TaskRef(int(s.attributes[c.STAGE_ID]), int(s.attributes[c.TASK_INDEX]))  # type: ignore[arg-type]
        for s in telemetry.spans
        if s.name == c.SPAN_TASK
    }
    assert task_spans == telemetry.planned_tasks, sql[:40]


def _usage(cluster: LocalCluster) -> list[ProcessUsage]:
    return [process_usage(p.pid) for p in cluster.processes]


def _round(cluster: LocalCluster, expected: dict[str, pa.Table], count: int) -> float:
    statements = [QUERIES[i % len(QUERIES)] for i in range(count)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(cluster.execute, statements))
    elapsed = time.monotonic() - started
    for sql, result in zip(statements, results, strict=True):
        _check(result, sql, expected[sql])
    return elapsed


def _settled(cluster: LocalCluster, baseline: list[ProcessUsage]) -> list[ProcessUsage] | None:
    now = _usage(cluster)
    for before, after in zip(baseline, now, strict=True):
        if after.threads > before.threads + THREAD_SLACK:
            return None
        if after.open_files > before.open_files + FILE_SLACK:
            return None
        if after.rss_bytes > before.rss_bytes + RSS_SLACK_BYTES:
            return None
    return now


def _assert_back_to_baseline(cluster: LocalCluster, baseline: list[ProcessUsage]) -> None:
    wait_until(
        lambda: all(worker_health(u)["tasks"] == 0 for u in cluster.worker_urls),
        15,
        "every query to be released",
    )
    wait_until(
        lambda: _settled(cluster, baseline),
        20,
        f"worker usage back near {baseline} (now {_usage(cluster)})",
        every=0.5,
    )
    for url in cluster.worker_urls:
        health = worker_health(url)
        assert health["running_tasks"] == 0 and health["memory_used_bytes"] == 0, health
        # a released query's telemetry is dropped: the coordinator fetched what it missed
        assert health["telemetry_cache_entries"] == 0, health


def test_32_concurrent_queries_are_correct_and_leave_nothing_behind(
    loaded: LocalCluster, expected: dict[str, pa.Table]
) -> None:
    _round(loaded, expected, len(QUERIES))  # warm-up: imports, pools and caches
    wait_until(
        lambda: all(worker_health(url)["running_tasks"] == 0 for url in loaded.worker_urls),
        30,
        "the warm-up's tasks to end",
    )
    baseline = _usage(loaded)
    elapsed = _round(loaded, expected, CONCURRENT)
    assert elapsed < 120, f"{CONCURRENT} concurrent queries took {elapsed:.0f}s"
    assert not loaded.coordinator._running
    _assert_back_to_baseline(loaded, baseline)


@pytest.mark.slow
def test_soak_rounds_with_a_small_telemetry_cache(tpch_dir: Path) -> None:
    expected = {sql: single_node(tpch_dir, sql) for sql in QUERIES}
    # The worker servers' allocator setting: a local cluster's workers keep freed memory for
    # the next task (worker/allocator.py), which would hide a leak and fail the check alike.
    with LocalCluster(
        workers=3,
        data=tpch_dir,
        worker_args=["--telemetry-cache-entries", "60"],
        env={**os.environ, **SERVER_ALLOCATOR_ENV},
    ) as cluster:
        _round(cluster, expected, len(QUERIES))
        baseline = _usage(cluster)
        for _ in range(10):
            _round(cluster, expected, CONCURRENT)
        _assert_back_to_baseline(cluster, baseline)
        for url in cluster.worker_urls:
            assert worker_health(url)["telemetry_cache_entries"] == 0
