"""Task telemetry end to end: spans exported to a real OTLP receiver, in-band final messages,
the fallback fetch for tasks whose message never arrived, and faults in the telemetry path."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from otel_dist import tpch
from otel_dist.coordinator.core import Coordinator, CoordinatorConfig, QueryError
from otel_dist.coordinator.scheduler import assign, task_specs
from otel_dist.frontend.local import LocalCluster
from otel_dist.planner.catalog import Catalog
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.envelope import TaskRef
from otel_dist.telemetry.otlp import SpanRecord
from otel_dist.telemetry.setup import Telemetry, TelemetryConfig
from otel_dist.telemetry.task_spans import OperatorMetrics, operator_metrics, with_scan_names
from otel_dist.testing.otlp_receiver import OtlpReceiver
from tests.flight_proxy import FlightProxy
from tests.oracle import assert_same_rows, has_order_by, single_node


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as otlp:
        yield otlp


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100", **extra}


@pytest.fixture(scope="module")
def traced(receiver: OtlpReceiver, tpch_dir: Path) -> Iterator[LocalCluster]:
    env = _env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    with LocalCluster(workers=3, data=tpch_dir, env=env, min_task_bytes=0) as local:
        yield local


def _query_spans(receiver: OtlpReceiver, query_id: str, count: int) -> list[SpanRecord]:
    def ours(spans: list[SpanRecord]) -> list[SpanRecord]:
        return [s for s in spans if s.attributes.get(c.QUERY_ID) == query_id]

    return ours(receiver.wait_for_spans(lambda spans: len(ours(spans)) >= count, timeout=15))


def test_one_trace_spans_coordinator_and_every_worker(
    traced: LocalCluster, receiver: OtlpReceiver
) -> None:
    result = traced.execute(tpch.query(1))
    assert result.telemetry is not None
    traced.coordinator.telemetry.flush()
    spans = _query_spans(receiver, result.query_id, len(result.telemetry.spans))
    assert {s.trace_id for s in spans} == {result.telemetry.trace_id}
    by_id = {s.span_id: s for s in spans}
    query = [s for s in spans if c.is_query_span(s.name, s.attributes)]
    stages = [s for s in spans if s.name == c.SPAN_STAGE]
    tasks = [s for s in spans if s.name == c.SPAN_TASK]
    assert len(query) == 1 and query[0].parent_span_id == ""
    assert query[0].resource["service.name"] == "otel-dist-coordinator"
    assert len(stages) == len(result.plan.stages)
    assert len(tasks) == sum(stage.task_count for stage in result.plan.stages)
    stage_by_id = {s.attributes[c.STAGE_ID]: s for s in stages}
    root = stage_by_id[result.plan.root.stage_id]
    assert root.parent_span_id == query[0].span_id
    for stage in result.plan.stages:  # every stage under the query, linked to what it reads
        assert stage_by_id[stage.stage_id].parent_span_id == query[0].span_id
        for upstream in stage.inputs:
            assert stage_by_id[upstream.stage_id].span_id in stage_by_id[stage.stage_id].links
    workers = {t.resource["service.instance.id"] for t in tasks}
    assert len(workers) == 3, "every worker ran tasks and exported their spans"
    assert all(t.resource["service.name"] == "otel-dist-worker" for t in tasks)
    for task in tasks:
        assert by_id[task.parent_span_id].name == c.SPAN_STAGE
        assert by_id[task.parent_span_id].attributes[c.STAGE_ID] == task.attributes[c.STAGE_ID]
        assert task.attributes[c.WORKER_URL] in traced.worker_urls
    operators = [s for s in spans if c.OPERATOR_NAME in s.attributes]
    assert {"AggregateExec", "DataSourceExec"} <= {s.name for s in operators}
    for operator in operators:
        parent = by_id[operator.parent_span_id]
        assert parent.name == c.SPAN_TASK or c.OPERATOR_NAME in parent.attributes
        metrics = {k: v for k, v in operator.attributes.items() if k.startswith(c.METRIC_PREFIX)}
        assert all(isinstance(v, (int, tuple)) for v in metrics.values())
        assert operator.start_ns <= operator.end_ns
    # In-memory inputs (upstream buckets) record no metrics in DataFusion; computing ones do.
    computing = [s for s in operators if s.name in ("AggregateExec", "ProjectionExec")]
    assert all(
        isinstance(s.attributes.get(c.METRIC_PREFIX + "output_rows"), int) for s in computing
    )


@pytest.mark.parametrize("number", [2, 5, 9, 21], ids=lambda n: f"q{n:02d}")
def test_each_tasks_telemetry_travels_on_one_stream(traced: LocalCluster, number: int) -> None:
    plan = traced.plan(tpch.query(number))
    readers: Counter[tuple[int, int]] = Counter()
    for spec in task_specs(plan, "q", assign(plan, traced.worker_urls)):
        for task_input in spec.inputs:
            for source in task_input.sources:
                readers[(source.stage_id, source.task_index)] += source.telemetry
    upstream = {
        (stage.stage_id, task)
        for stage in plan.stages
        if stage is not plan.root
        for task in range(stage.task_count)
    }
    assert readers == Counter(dict.fromkeys(upstream, 1))
    result = traced.execute(tpch.query(number))
    assert result.telemetry is not None
    assert result.telemetry.in_band_tasks == result.telemetry.planned_tasks
    assert not result.telemetry.fetched_tasks and not result.telemetry.malformed_messages
    span_ids = [span.span_id for span in result.telemetry.spans]
    assert len(span_ids) == len(set(span_ids))


def _sum_metric(spans: list[SpanRecord], operator: str, metric: str, stage_id: int) -> int:
    return sum(
        int(s.attributes.get(c.METRIC_PREFIX + metric, 0))  # type: ignore[arg-type]
        for s in spans
        if s.name == operator and s.attributes.get(c.STAGE_ID) == stage_id
    )


def _single_node_metric(tpch_dir: Path, sql: str, operator: str, metric: str) -> int:
    ctx = Catalog.from_folder(tpch_dir).session()
    plan = ctx.sql(sql).execution_plan()
    for partition in range(plan.partition_count):
        for _ in ctx.execute(plan, partition):
            pass
    total = 0
    stack = [operator_metrics(plan)]
    while stack:
        node = stack.pop()
        if node.name == operator:
            total += node.totals.get(metric, 0)
        stack.extend(node.children)
    return total


def test_full_scan_rows_sum_to_table_rows(traced: LocalCluster, tpch_dir: Path) -> None:
    result = traced.execute("select count(*) as n, sum(l_quantity) as q from lineitem")
    assert result.telemetry is not None
    leaf = result.plan.stages[0]
    assert leaf.task_count > 1
    scanned = _sum_metric(result.telemetry.spans, "DataSourceExec", "output_rows", leaf.stage_id)
    assert scanned == result.table.column("n")[0].as_py()


@pytest.mark.parametrize("number", [1, 6])
def test_operator_rows_match_single_node(traced: LocalCluster, tpch_dir: Path, number: int) -> None:
    sql = tpch.query(number)
    result = traced.execute(sql)
    assert result.telemetry is not None
    leaf = result.plan.stages[0].stage_id
    for operator in ("DataSourceExec", "FilterExec"):
        distributed = _sum_metric(result.telemetry.spans, operator, "output_rows", leaf)
        assert distributed == _single_node_metric(tpch_dir, sql, operator, "output_rows")
        assert distributed > 0


def _assert_every_task_accounted(telemetry: object) -> None:
    assert telemetry is not None
    planned = telemetry.planned_tasks  # type: ignore[attr-defined]
    assert planned and not telemetry.lost_tasks  # type: ignore[attr-defined]
    task_spans = {
        TaskRef(int(s.attributes[c.STAGE_ID]), int(s.attributes[c.TASK_INDEX]))  # type: ignore[arg-type]
        for s in telemetry.spans  # type: ignore[attr-defined]
        if s.name == c.SPAN_TASK
    }
    assert task_spans == planned


def test_operator_metrics_split_by_partition_only_where_there_are_several(
    tpch_dir: Path,
) -> None:
    ctx = Catalog.from_folder(tpch_dir).session(4)
    sql = "select l_returnflag, count(*) from lineitem group by l_returnflag"
    plan = ctx.sql(sql).execution_plan()
    for partition in range(plan.partition_count):
        for _ in ctx.execute(plan, partition):
            pass
    raw_operators = [getattr(plan, "_raw_plan", plan)]
    read, split = 0, 0
    stack = [operator_metrics(plan)]
    while stack:
        node, raw = stack.pop(), raw_operators.pop()
        read += 1
        if raw.partition_count == 1:
            assert node.per_partition == {}, node.name
        for name, values in node.per_partition.items():
            split += 1
            assert len(values) <= raw.partition_count
            assert sum(values) == node.totals[name], (node.name, name)
        stack.extend(node.children)
        raw_operators.extend(raw.children())
    assert read > 3 and split > 0


def test_scan_displays_name_tables_and_files_not_the_tasks_scratch_folder() -> None:
    folder = "/tmp/otel-dist-spill/task-3f2a"
    scan = OperatorMetrics(
        "DataSourceExec",
        "DataSourceExec: file_groups={1 group: [[tmp/otel-dist-spill/task-3f2a/lineitem/"
        "00003-part-1.parquet, tmp/otel-dist-spill/task-3f2a/lineitem/00004-part-2.parquet]]}",
        {},
        {},
        None,
        None,
        [],
    )
    stray = dataclasses.replace(scan, display="Odd: tmp/otel-dist-spill/task-3f2a/no-link")
    top = OperatorMetrics("FilterExec", "FilterExec: a@0 > 1", {}, {}, None, None, [scan, stray])
    named = with_scan_names(top, folder)
    assert named.display == top.display
    assert named.children[0].display == (
        "DataSourceExec: file_groups={1 group: [[lineitem/part-1.parquet, lineitem/part-2.parquet]]}"
    )
    assert named.children[1].display == stray.display  # not a link: left as it is
    assert with_scan_names(stray, folder) is stray


def test_limit_query_accounts_for_every_task(traced: LocalCluster) -> None:
    result = traced.execute("select l_orderkey, l_comment from lineitem limit 3")
    assert result.table.num_rows == 3
    _assert_every_task_accounted(result.telemetry)


def test_cancelled_query_accounts_for_every_task(traced: LocalCluster) -> None:
    query_id = uuid.uuid4().hex
    sql = "select a.l_orderkey, b.l_comment from lineitem a cross join lineitem b"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            traced.execute(sql, query_id)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 20
    while not traced.cancel(query_id):
        assert time.monotonic() < deadline, "the query never started"
        time.sleep(0.05)
    thread.join(60)
    assert not thread.is_alive(), "cancellation did not end the query"
    assert len(errors) == 1 and isinstance(errors[0], QueryError)
    assert "cancelled" in str(errors[0])
    _assert_every_task_accounted(errors[0].telemetry)
    statuses = {
        s.attributes[c.TASK_STATUS] for s in errors[0].telemetry.spans if s.name == c.SPAN_TASK
    }
    assert "cancelled" in statuses


def test_corrupted_final_messages_leave_data_identical(
    cluster: LocalCluster, tpch_dir: Path
) -> None:
    proxies = [FlightProxy(url, corrupt_telemetry=True) for url in cluster.worker_urls]
    coordinator = Coordinator(
        CoordinatorConfig(workers=tuple(p.url for p in proxies), data=str(tpch_dir)),
        Telemetry(TelemetryConfig.from_env("otel-dist-coordinator", {})),
    )
    try:
        sql = tpch.query(1)
        result = coordinator.execute(sql)
        assert_same_rows(result.table, single_node(tpch_dir, sql), ordered=has_order_by(sql))
        telemetry = result.telemetry
        assert telemetry is not None
        assert sum(p.corrupted for p in proxies) > 0
        assert telemetry.malformed_messages > 0, "corrupted messages are reported"
        assert telemetry.fetched_tasks, "the fallback fetch replaced what was corrupted"
        _assert_every_task_accounted(telemetry)
    finally:
        coordinator.close()
        for proxy in proxies:
            proxy.shutdown()


def test_oversized_final_messages_are_truncated_then_fetched(tpch_dir: Path) -> None:
    env = _env(OTEL_DIST_TELEMETRY_MAX_BYTES="4000")
    with LocalCluster(workers=2, data=tpch_dir, env=env) as small:
        sql = tpch.query(1)
        result = small.execute(sql)
    assert_same_rows(result.table, single_node(tpch_dir, sql), ordered=True)
    assert result.telemetry is not None
    assert result.telemetry.truncated_messages > 0
    assert result.telemetry.fetched_tasks
    _assert_every_task_accounted(result.telemetry)


def test_callers_span_is_the_parent_of_the_query_span(cluster: LocalCluster) -> None:
    tracer = TracerProvider().get_tracer("caller")
    with tracer.start_as_current_span("caller") as caller:
        result = cluster.execute("select count(*) from nation")
    assert result.telemetry is not None
    query = next(s for s in result.telemetry.spans if c.is_query_span(s.name, s.attributes))
    assert query.trace_id == format(caller.get_span_context().trace_id, "032x")
    assert query.parent_span_id == format(caller.get_span_context().span_id, "016x")


def test_telemetry_off_returns_the_same_rows(tpch_dir: Path) -> None:
    env = _env(OTEL_DIST_TELEMETRY="off")
    sql = tpch.query(6)
    with LocalCluster(workers=2, data=tpch_dir, env=env) as quiet:
        result = quiet.execute(sql)
    assert result.telemetry is None
    assert_same_rows(result.table, single_node(tpch_dir, sql), ordered=False)


def test_relay_mode_re_exports_worker_spans_once(tpch_dir: Path) -> None:
    """Workers that cannot reach a collector; the coordinator relays what they sent in-band."""
    with OtlpReceiver() as collector:
        env = _env(OTEL_TRACES_EXPORTER="none")
        with LocalCluster(workers=2, data=tpch_dir, env=env) as isolated:
            settings = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
                "OTEL_DIST_RELAY": "true",
            }
            coordinator = Coordinator(
                CoordinatorConfig(workers=tuple(isolated.worker_urls), data=str(tpch_dir)),
                Telemetry(TelemetryConfig.from_env("otel-dist-coordinator", settings)),
            )
            try:
                result = coordinator.execute(tpch.query(6))
                assert coordinator.relay is not None
                coordinator.relay.flush()
                coordinator.telemetry.flush()
            finally:
                coordinator.close()
        assert result.telemetry is not None
        planned = len(result.telemetry.planned_tasks)
        spans = _query_spans(collector, result.query_id, len(result.telemetry.spans))
    tasks = [s for s in spans if s.name == c.SPAN_TASK]
    assert len(tasks) == planned, "every worker task span arrives, and only once"
    assert {t.resource["service.name"] for t in tasks} == {"otel-dist-worker"}
    assert len({s.span_id for s in spans}) == len(spans)


def test_without_relay_nothing_is_exported_twice(
    traced: LocalCluster, receiver: OtlpReceiver
) -> None:
    result = traced.execute(tpch.query(6))
    assert result.telemetry is not None
    traced.coordinator.telemetry.flush()
    spans = _query_spans(receiver, result.query_id, len(result.telemetry.spans))
    time.sleep(0.5)  # let any duplicate arrive
    spans = [s for s in receiver.spans() if s.attributes.get(c.QUERY_ID) == result.query_id]
    assert len({s.span_id for s in spans}) == len(spans) == len(result.telemetry.spans)
