"""Stage inputs streamed into a task's plan (``otel_dist/worker/inputs.py``): the scan starts
while the input still arrives, a plan that cannot stream falls back to memory, and with every
input streamed (``OTEL_DIST_STREAM_BYTES=1``) TPC-H still equals single-node DataFusion.

The exchange test slows every Flight data batch down with a proxy in front of each worker and
compares when the proxy forwarded the root stage's first batch with when it forwarded the last
batch of the shuffled input that stage reads: streamed, the root's rows come first; held in
memory (the threshold out of reach), they come after, which is what shows the test can fail."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from datafusion import SessionConfig, SessionContext

from otel_dist import tpch
from otel_dist.coordinator.core import Coordinator, CoordinatorConfig
from otel_dist.frontend.local import LocalCluster
from otel_dist.protocol import TaskInput
from otel_dist.telemetry.setup import Telemetry, TelemetryConfig
from otel_dist.worker.inputs import StageInputs
from otel_dist.worker.timing import OPERATORS, TaskClock
from tests.flight_proxy import FlightProxy
from tests.oracle import assert_same_rows, has_order_by, single_node

SCHEMA = pa.schema([("x", pa.int64()), ("s", pa.string())])
BATCHES, PAUSE_S = 5, 0.2
# Streaming if the root's first rows come this much before the upstream's last batch (about
# one batch's delay sooner, DELAY_S), above the scheduling noise of a busy machine.
MARGIN_S = 0.3


def _slow_batches(produced: list[float]) -> Iterator[pa.RecordBatch]:
    for i in range(BATCHES):
        time.sleep(PAUSE_S)
        produced.append(time.monotonic())
        yield pa.record_batch(
            [pa.array(range(i * 10, i * 10 + 10)), pa.array([str(j) for j in range(10)])],
            schema=SCHEMA,
        )


def _run(sql: str, threshold: int) -> tuple[StageInputs, list[float], list[float], int]:
    """Register a slow input, plan and run ``sql``; when each batch was produced, when each
    result batch came out, and the rows."""
    ctx = SessionContext(SessionConfig().with_target_partitions(1))
    inputs = StageInputs(1, threshold=threshold)
    produced: list[float] = []
    inputs.register(ctx, TaskInput("t"), _slow_batches(produced), SCHEMA, "wait_stage_1")
    plan = inputs.plan(ctx, lambda: ctx.sql(sql).execution_plan())
    arrived: list[float] = []
    rows = 0
    for batch in ctx.execute(plan, 0):  # type: ignore[arg-type]
        rows += batch.to_pyarrow().num_rows
        arrived.append(time.monotonic())
    return inputs, produced, arrived, rows


def test_a_streamed_scan_yields_rows_before_its_input_ends() -> None:
    inputs, produced, arrived, rows = _run("SELECT x * 2 AS y FROM t", threshold=1)
    assert inputs.streaming
    assert rows == BATCHES * 10
    assert arrived[0] < produced[-1] - PAUSE_S, (arrived, produced)
    waited = inputs.wait_ns()["wait_stage_1"]
    # the scan waited for all but the batch read before planning
    assert waited >= (BATCHES - 1) * PAUSE_S * 1e9 * 0.8, waited


def test_an_input_under_the_threshold_is_held_in_memory() -> None:
    inputs, produced, arrived, rows = _run("SELECT x * 2 AS y FROM t", threshold=1 << 30)
    assert not inputs.streaming
    assert rows == BATCHES * 10
    assert arrived[0] >= produced[-1]


@pytest.mark.parametrize(
    "sql, rows",
    [
        ("SELECT a.x FROM t a JOIN t b ON a.x = b.x", BATCHES * 10),  # scanned twice
        ("SELECT s FROM t WHERE x > 5", BATCHES * 10 - 6),  # a filter pushed into the scan
        # on a join's build side (a streamed input has no statistics to pick the side by)
        ("SELECT t.x FROM t JOIN (VALUES (1), (2)) v(k) ON t.x = v.k", 2),
    ],
)
def test_plans_that_cannot_stream_fall_back_to_memory(sql: str, rows: int) -> None:
    inputs, _, _, got = _run(sql, threshold=1)
    assert not inputs.streaming
    assert got == rows


def test_reading_a_held_input_to_its_end_is_waiting_not_planning() -> None:
    """A streamed input the plan cannot stream is read to its end while the task plans: that
    time is the upstream stage's (SF 10 Q3's join tasks showed 3 s of "planning")."""
    sql = "SELECT t.x FROM t JOIN (VALUES (1), (2)) v(k) ON t.x = v.k"
    started = time.perf_counter_ns()
    inputs, _, _, rows = _run(sql, threshold=1)
    elapsed = time.perf_counter_ns() - started
    assert not inputs.streaming and rows == 2
    drained = inputs.drained_ns["wait_stage_1"]
    # all but the batch read before planning arrived while the input was read to its end
    assert (BATCHES - 1) * PAUSE_S * 1e9 * 0.8 <= drained <= elapsed, drained


def test_a_streamed_wait_moves_from_operators_to_the_wait_part() -> None:
    clock = TaskClock()
    drain = clock.drain()
    drain.operators_ns, drain.total_ns = 100, 100
    clock.run_finished(100, {"wait_stage_3": 30})
    parts = clock.breakdown(100)
    assert (parts[OPERATORS], parts["wait_stage_3"]) == (70, 30)
    clock = TaskClock()
    drain = clock.drain()
    drain.operators_ns, drain.total_ns = 100, 100
    clock.run_finished(100, {"wait_stage_3": 150, "wait_stage_4": 50})  # never more than measured
    parts = clock.breakdown(100)
    assert (parts[OPERATORS], parts["wait_stage_3"], parts["wait_stage_4"]) == (0, 75, 25)


# Lineitem (the probe side, read as it arrives) joined to the orders whose customer number is
# also a supplier's: some 40 rows per lineitem row, several output batches per root task.
EXCHANGE_SQL = (
    "SELECT o_orderkey, l_orderkey, l_quantity FROM orders JOIN lineitem ON o_custkey = l_suppkey"
)
DELAY_S = 0.6


def _root_first_and_input_last(tpch_dir: Path, threshold: int) -> tuple[float, float]:
    """Through slow proxies (two workers, every join shuffled): when the root stage's first
    batch and its probe input's last batch were forwarded. The root's own batches are not
    slowed down: a first run without delays tells which stage it is."""
    env = {**os.environ, "OTEL_DIST_STREAM_BYTES": str(threshold)}
    with LocalCluster(workers=2, data=tpch_dir, env=env, target_partitions=1) as local:
        proxies = [FlightProxy(url) for url in local.worker_urls]
        coordinator = Coordinator(
            CoordinatorConfig(
                workers=tuple(p.url for p in proxies),
                data=str(tpch_dir),
                target_partitions=1,
                broadcast_threshold=0,
                min_task_bytes=0,
            ),
            Telemetry(TelemetryConfig.from_env("otel-dist-coordinator", {})),
        )
        try:
            coordinator.execute(EXCHANGE_SQL)
            root = max(f.stage_id for p in proxies for f in p.forwarded)
            for proxy in proxies:
                proxy.forwarded.clear()
                proxy.delay_s, proxy.spared_stage = DELAY_S, root
            result = coordinator.execute(EXCHANGE_SQL)
            assert_same_rows(result.table, single_node(tpch_dir, EXCHANGE_SQL), ordered=False)
        finally:
            coordinator.close()
            for proxy in proxies:
                proxy.shutdown()
    forwarded = [f for p in proxies for f in p.forwarded if f.rows]
    rows: dict[int, int] = {}
    for f in forwarded:
        rows[f.stage_id] = rows.get(f.stage_id, 0) + f.rows
    probe = max((s for s in rows if s != root), key=rows.__getitem__)  # lineitem's shuffle
    root_first = min(f.at_s for f in forwarded if f.stage_id == root)
    probe_last = max(f.at_s for f in forwarded if f.stage_id == probe)
    return root_first, probe_last


def test_the_exchange_streams_a_consumer_gets_rows_before_its_producers_finish(
    tpch_dir: Path,
) -> None:
    root_first, probe_last = _root_first_and_input_last(tpch_dir, threshold=1)
    assert root_first < probe_last - MARGIN_S, (root_first, probe_last)


def test_an_input_held_in_memory_gives_rows_only_after_its_producers_finish(
    tpch_dir: Path,
) -> None:
    root_first, probe_last = _root_first_and_input_last(tpch_dir, threshold=1 << 40)
    assert root_first > probe_last, (root_first, probe_last)


@pytest.fixture(scope="module")
def streaming_cluster(tpch_dir: Path) -> Iterator[LocalCluster]:
    """Every stage input streamed, one partition per task (the bench's setting, where plans
    have no repartition and most inputs do stream)."""
    env = {**os.environ, "OTEL_DIST_STREAM_BYTES": "1"}
    with LocalCluster(
        workers=3, data=tpch_dir, env=env, target_partitions=1, min_task_bytes=0
    ) as local:
        yield local


@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_tpch_with_every_input_streamed_matches_single_node(
    streaming_cluster: LocalCluster, tpch_dir: Path, number: int
) -> None:
    sql = tpch.query(number)
    assert_same_rows(
        streaming_cluster.sql(sql), single_node(tpch_dir, sql), ordered=has_order_by(sql)
    )
