"""The worker on its own: buckets read in any order, spilling past the memory budget, and
queries dropped after their TTL when no coordinator releases them."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from otel_dist import tpch
from otel_dist.coordinator.scheduler import assign, task_specs
from otel_dist.exchange.router import route
from otel_dist.frontend.local import LocalCluster
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.distribute import Planner, PlannerOptions
from otel_dist.protocol import (
    BucketTicket,
    OutputPartitioning,
    TaskInput,
    TaskSpec,
    encode_schema,
)
from otel_dist.worker.server import WorkerConfig, WorkerServer
from otel_dist.worker.task import hash_partition, range_partition
from otel_dist.worker.timing import wait_part
from tests.oracle import assert_same_rows, single_node
from tests.support import start_worker, stop, worker_health

GROUPED = (
    "select l_orderkey % 97 as k, count(*) as n, sum(l_quantity) as q from lineitem group by 1"
)


@pytest.fixture
def worker(request: pytest.FixtureRequest, tpch_dir: Path) -> Iterator[WorkerServer]:
    config: WorkerConfig = getattr(request, "param", WorkerConfig())
    server = WorkerServer(dataclasses.replace(config, data_roots=(str(tpch_dir),)))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close_all()
        server.shutdown()
        thread.join(10)


def _submit_leaf(worker: WorkerServer, data: Path, sql: str, buckets: int) -> list[BucketTicket]:
    """Plan ``sql`` on one worker and submit its first (partial aggregate) stage only."""
    plan = Planner(Catalog.from_folder(data), PlannerOptions(buckets)).plan(sql)
    leaf = plan.stages[0]
    placement = assign(plan, [worker.url])
    specs = [s for s in task_specs(plan, "q-worker", placement) if s.stage_id == leaf.stage_id]
    for spec in specs:
        worker.submit(spec)
    return [
        BucketTicket("q-worker", leaf.stage_id, spec.task_index, bucket)
        for spec in specs
        for bucket in range(leaf.output.buckets)
    ]


@pytest.mark.parametrize("worker", [WorkerConfig(memory_budget_bytes=1)], indirect=True)
def test_buckets_read_in_any_order_never_deadlock(worker: WorkerServer, tpch_dir: Path) -> None:
    tickets = _submit_leaf(worker, tpch_dir, GROUPED, buckets=3)
    client = flight.FlightClient(worker.url)
    rows = 0
    try:
        for ticket in sorted(tickets, key=lambda t: (-t.bucket, -t.task_index)):
            reader = client.do_get(
                flight.Ticket(ticket.to_bytes()), options=flight.FlightCallOptions(timeout=60)
            )
            rows += sum(batch.num_rows for batch in route(reader, None))
    finally:
        client.close()
    assert rows > 0
    health = worker_health(worker.url)
    assert health["spilled_bytes"] > 0, "a one-byte budget spills every batch"  # type: ignore[operator]


@pytest.mark.parametrize("worker", [WorkerConfig(max_running_tasks=1)], indirect=True)
def test_a_streaming_task_takes_its_turn_only_once_its_upstream_tasks_started(
    worker: WorkerServer, tpch_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with one turn to execute: the final aggregate streams its input from two
    partial-aggregate tasks, one done, the other submitted after it. Had the consumer taken
    the turn once the first sent it rows, it would wait forever for the second, queued
    behind it (seen in CI on a loaded machine); it waits for the second to start instead."""
    monkeypatch.setenv("OTEL_DIST_STREAM_BYTES", "1")
    plan = Planner(Catalog.from_folder(tpch_dir), PlannerOptions(2, min_task_bytes=0)).plan(GROUPED)
    leaf, final = plan.stages[0], plan.stages[1]
    specs = task_specs(plan, "q-turns", assign(plan, [worker.url]))
    first, second = [s for s in specs if s.stage_id == leaf.stage_id]
    [consumer] = [s for s in specs if s.stage_id == final.stage_id and s.task_index == 0]
    assert worker.submit(first).wait(60)
    consuming = worker.submit(consumer)
    deadline = time.monotonic() + 30
    while consuming.phase in ("queued", "starting") or consuming.phase.startswith("reading"):
        assert time.monotonic() < deadline, consuming.phase
        time.sleep(0.05)
    assert consuming.phase == f"waiting for stage {leaf.stage_id} to start"
    worker.submit(second)
    client = flight.FlightClient(worker.url)
    try:
        ticket = BucketTicket("q-turns", final.stage_id, 0, 0)
        reader = client.do_get(
            flight.Ticket(ticket.to_bytes()), options=flight.FlightCallOptions(timeout=60)
        )
        rows = sum(batch.num_rows for batch in route(reader, None))
    finally:
        client.close()
    assert consuming.state == "finished" and rows > 0
    waited = consuming.clock.breakdown(consuming.ended_ns - consuming.started_ns)
    assert waited[wait_part(leaf.stage_id)] > 0


def test_spilling_cluster_returns_the_same_rows(tpch_dir: Path) -> None:
    scan = "select l_orderkey, l_linenumber, l_comment from lineitem where l_quantity > 10"
    with LocalCluster(workers=2, data=tpch_dir, memory_budget_bytes=64 * 1024) as small:
        table = small.sql(scan)
        healths = [worker_health(url) for url in small.worker_urls]
    assert_same_rows(table, single_node(tpch_dir, scan), ordered=False)
    assert sum(h["spilled_bytes"] for h in healths) > 0  # type: ignore[misc]
    assert all(h["memory_used_bytes"] == 0 for h in healths), "released queries free memory"


@pytest.mark.parametrize("worker", [WorkerConfig(query_ttl_s=1.0)], indirect=True)
def test_unreleased_queries_expire_after_their_ttl(worker: WorkerServer, tpch_dir: Path) -> None:
    _submit_leaf(worker, tpch_dir, GROUPED, buckets=2)
    assert worker_health(worker.url)["tasks"] > 0  # type: ignore[operator]
    deadline = time.monotonic() + 15
    while worker_health(worker.url)["tasks"] != 0:
        assert time.monotonic() < deadline, "the query was never expired"
        time.sleep(0.2)
    assert worker_health(worker.url)["memory_used_bytes"] == 0


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_workers_keep_freed_memory_for_reuse(cluster: LocalCluster) -> None:
    """mimalloc reads its options at load time: a cluster's workers start with them."""
    for process in cluster.processes:
        assert _environ(process.pid)["MIMALLOC_PURGE_DELAY"] == "-1"


@pytest.mark.parametrize(("given", "expected"), [(None, "0"), ("10", "10")])
def test_worker_command_sets_its_allocator_unless_told(
    tpch_dir: Path, given: str | None, expected: str
) -> None:
    """Started without the setting (a container, a unit file), ``otel-dist worker`` executes
    itself once more with it, and still serves; a value in the environment is kept."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    if given is not None:
        env["MIMALLOC_PURGE_DELAY"] = given
    process, url = start_worker("--port", "0", "--data-root", str(tpch_dir), env=env)
    try:
        assert _environ(process.pid)["MIMALLOC_PURGE_DELAY"] == expected
        assert worker_health(url)["running_tasks"] == 0
    finally:
        stop(process)


@pytest.mark.parametrize("key_type", [pa.int32(), pa.int64(), pa.uint16(), pa.string()])
def test_hash_partition_keeps_every_row_and_puts_equal_keys_together(key_type: pa.DataType) -> None:
    """Both sides of a shuffle join must send equal keys to the same bucket, whatever integer
    width each side has (integers are hashed as int64); NULL keys go together too."""
    values = [i % 1000 for i in range(20_000)] + [None] * 50
    keys = pa.array(
        [None if v is None else (str(v) if key_type == pa.string() else v) for v in values],
        key_type,
    )
    batch = pa.record_batch([keys, pa.array(range(len(values)))], names=["k", "row"])
    parts = hash_partition(batch, ("k",), 3)
    assert sorted(r for p in parts for r in p.column("row").to_pylist()) == list(range(len(values)))
    bucket_of = {k: b for b, p in enumerate(parts) for k in p.column("k").to_pylist()}
    for b, part in enumerate(parts):
        assert all(bucket_of[k] == b for k in part.column("k").to_pylist())
        assert 0.2 < part.num_rows / len(values) < 0.47, [p.num_rows for p in parts]
    if pa.types.is_integer(key_type):
        wide = batch.cast(pa.schema([("k", pa.int64()), ("row", pa.int64())]))
        assert [p.num_rows for p in hash_partition(wide, ("k",), 3)] == [p.num_rows for p in parts]


@pytest.mark.parametrize("key_type", [pa.int32(), pa.int64()])
def test_range_partition_sends_each_key_to_the_bucket_holding_its_range(
    key_type: pa.DataType,
) -> None:
    """A range exchange sends a row to the task that reads its key's range: bucket ``i``
    takes the values of its ``[low, high)`` intervals (unbounded at both ends, a bucket may
    own several), every row lands once, and NULL keys, which match nothing, go to bucket 0."""
    bounds = (((None, 100), (300, 400)), ((100, 300),), ((400, None),))
    values = [-5, 0, 99, 100, 299, 300, 399, 400, 10**9, None]
    batch = pa.record_batch(
        [pa.array(values, key_type), pa.array(range(len(values)))], names=["k", "row"]
    )
    parts = range_partition(batch, "k", bounds)
    assert [p.column("k").to_pylist() for p in parts] == [
        [-5, 0, 99, 300, 399, None],
        [100, 299],
        [400, 10**9],
    ]


def test_file_inputs_are_registered_with_the_schema_the_coordinator_sent(
    worker: WorkerServer, tpch_dir: Path
) -> None:
    """The coordinator sends each table's schema with its files, so that a task does not read
    every file's footer again to infer it. Shown with a schema naming a column the files lack:
    the worker registers the files with it, and the column reads as NULL (inferred from the
    files, it would not exist and the task would fail)."""
    catalog = Catalog.from_folder(tpch_dir)
    nation = catalog.session().table("nation").schema()
    sent = nation.append(pa.field("n_extra", pa.int64()))
    output = pa.schema([nation.field("n_nationkey"), pa.field("n_extra", pa.int64())])
    spec = TaskSpec(
        query_id="q-schema",
        stage_id=1,
        task_index=0,
        task_count=1,
        sql="select n_nationkey, n_extra from nation",
        inputs=(
            TaskInput(
                "nation", files=catalog.tables["nation"].files, schema_ipc=encode_schema(sent)
            ),
        ),
        output=OutputPartitioning("single"),
        output_schema_ipc=encode_schema(output),
    )
    worker.submit(spec)
    client = flight.FlightClient(worker.url)
    try:
        reader = client.do_get(
            flight.Ticket(BucketTicket("q-schema", 1, 0, 0).to_bytes()),
            options=flight.FlightCallOptions(timeout=60),
        )
        table = pa.Table.from_batches(list(route(reader, None)))
    finally:
        client.close()
    assert table.num_rows == 25
    assert table.column("n_extra").null_count == 25


def test_every_file_input_carries_its_tables_schema(tpch_dir: Path) -> None:
    """What the coordinator sends: each file input of each task (split scans, key ranges,
    tables read whole) with the schema the planning session has for its table."""
    catalog = Catalog.from_folder(tpch_dir)
    ctx = catalog.session()
    for min_task_bytes in (0, 1 << 30):
        planner = Planner(catalog, PlannerOptions(3, min_task_bytes=min_task_bytes))
        for number in (5, 9, 21):
            plan = planner.plan(tpch.query(number))
            specs = task_specs(plan, "q", assign(plan, ["grpc://127.0.0.1:1"]))
            file_inputs = [i for spec in specs for i in spec.inputs if i.files]
            assert file_inputs
            for task_input in file_inputs:
                assert task_input.schema() == ctx.table(task_input.table_name).schema()
