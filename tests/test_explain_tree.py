"""The distributed EXPLAIN ANALYZE tree, built from real query spans and from a trace file."""

from __future__ import annotations

import json
import os
import re
import statistics
from collections.abc import Iterable
from pathlib import Path

import pytest

from otel_dist import tpch
from otel_dist.coordinator.core import QueryResult
from otel_dist.explain import (
    ExplainTree,
    OperatorNode,
    StageNode,
    TaskNode,
    build_tree,
    load_trace_file,
    render_text,
    tree_to_dict,
)
from otel_dist.explain.build import aggregate_operators
from otel_dist.explain.format import format_bytes, format_duration, format_metric
from otel_dist.frontend.local import LocalCluster
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.model import DistributedPlan
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.otlp import SpanRecord
from otel_dist.telemetry.task_spans import OperatorMetrics, operator_metrics
from otel_dist.testing.otlp_receiver import OtlpReceiver

DURATION = re.compile(r"\b\d+(?:\.\d+)?(?:ns|µs|ms|s)\b")
QUERIES = {"q1": 1, "q3": 3}


@pytest.fixture(scope="module")
def results(cluster: LocalCluster) -> dict[str, QueryResult]:
    return {name: cluster.execute(tpch.query(number)) for name, number in QUERIES.items()}


@pytest.fixture(params=sorted(QUERIES))
def query(request: pytest.FixtureRequest, results: dict[str, QueryResult]) -> QueryResult:
    return results[request.param]


def _tree(result: QueryResult) -> ExplainTree:
    assert result.telemetry is not None
    return build_tree(result.telemetry.spans)


def _stages(tree: ExplainTree) -> dict[int, StageNode]:
    return {stage.stage_id: stage for stage in tree.all_stages()}


def _walk(operators: Iterable[OperatorNode]) -> Iterable[OperatorNode]:
    for operator in operators:
        yield operator
        yield from _walk(operator.children)


def _walk_metrics(operator: OperatorMetrics) -> Iterable[OperatorMetrics]:
    yield operator
    for child in operator.children:
        yield from _walk_metrics(child)


def _single_node_scan_rows(tpch_dir: Path, sql: str) -> int:
    ctx = Catalog.from_folder(tpch_dir).session()
    plan = ctx.sql(sql).execution_plan()
    for partition in range(plan.partition_count):
        for _ in ctx.execute(plan, partition):
            pass
    scans = [op for op in _walk_metrics(operator_metrics(plan)) if op.name == "DataSourceExec"]
    return sum(op.totals.get("output_rows", 0) for op in scans)


def _leaf_ids(plan: DistributedPlan) -> list[int]:
    """Stages that scan parquet files (fact stages also read broadcast inputs)."""
    return [stage.stage_id for stage in plan.stages if stage.file_scan is not None]


# --------------------------------------------------------------------------------------------
# The tree against the plan and single-node DataFusion
# --------------------------------------------------------------------------------------------


def test_every_stage_with_its_tasks_nested_as_data_flows(query: QueryResult) -> None:
    tree = _tree(query)
    stages = _stages(tree)
    assert [s.stage_id for s in tree.stages] == [query.plan.root.stage_id]
    assert sorted(stages) == sorted(s.stage_id for s in query.plan.stages)
    for planned in query.plan.stages:
        stage = stages[planned.stage_id]
        assert stage.task_count == planned.task_count
        assert [t.task_index for t in stage.tasks] == list(range(planned.task_count))
        assert all(t.status == "finished" and t.duration_ns for t in stage.tasks)
        assert stage.kind == planned.kind
        assert stage.fallback_reason == planned.fallback_reason
        assert stage.strategy == planned.strategy and stage.strategy
        assert f"why: {planned.strategy}" in render_text(tree, verbose=True)
        assert sorted(child.stage_id for child in stage.children) == sorted(
            i.stage_id for i in planned.inputs
        )
    assert tree.query_id == query.query_id
    assert query.telemetry is not None
    assert tree.trace_id == query.telemetry.trace_id
    assert tree.status == "ok" and tree.error is None


def test_root_stage_rows_equal_the_result(query: QueryResult) -> None:
    tree = _tree(query)
    root = tree.stages[0]
    rows = query.table.num_rows
    assert sum(task.metrics["output_rows"] for task in root.tasks) == rows
    assert root.operators[0].metrics["output_rows"] == rows
    assert tree.output_rows == rows
    assert sum(read.rows for read in tree.reads) == rows


def test_leaf_scans_read_what_single_node_datafusion_reads(
    query: QueryResult, tpch_dir: Path
) -> None:
    stages = _stages(_tree(query))
    leaves = [stages[i] for i in _leaf_ids(query.plan)]
    per_task = sum(
        op.metrics.get("output_rows", 0)
        for stage in leaves
        for task in stage.tasks
        for op in _walk(task.operators)
        if op.name == "DataSourceExec"
    )
    aggregated = sum(
        op.metrics.get("output_rows", 0)
        for stage in leaves
        for op in _walk(stage.operators)
        if op.name == "DataSourceExec"
    )
    expected = _single_node_scan_rows(tpch_dir, query.plan.sql)
    assert per_task == aggregated == expected > 0


def test_aggregated_operators_sum_the_tasks_and_keep_their_spread(query: QueryResult) -> None:
    for stage in _stages(_tree(query)).values():
        root = stage.operators[0]
        values = [task.operators[0].metrics["output_rows"] for task in stage.tasks]
        assert root.metrics["output_rows"] == sum(values)
        stats = root.metric_stats["output_rows"]
        assert (stats.min, stats.max) == (min(values), max(values))
        assert stage.tasks[stats.max_task].operators[0].metrics["output_rows"] == stats.max
        assert root.tasks == tuple(range(stage.task_count))
        for task in stage.tasks:
            compute = sum(op.metrics.get("elapsed_compute", 0) for op in _walk(task.operators))
            assert task.metrics["elapsed_compute"] == compute


@pytest.mark.parametrize(
    "rows",
    [[7], [5, 1, 9], [4, 1, 10, 2], [3, 4]],
    ids=["one task", "odd count", "even count", "even count, half-way median"],
)
def test_operator_spread_across_tasks(rows: list[int]) -> None:
    tasks = [
        TaskNode(
            task_index=index,
            worker=f"grpc://w{index}",
            partitions=(index,),
            duration_ns=1,
            status="finished",
            error=None,
            operators=[OperatorNode("ScanExec", "ScanExec", "0", {"output_rows": value})],
        )
        for index, value in enumerate(rows)
    ]
    (operator,) = aggregate_operators(tasks)
    stats = operator.metric_stats["output_rows"]
    assert operator.metrics == {"output_rows": sum(rows)}
    assert (stats.min, stats.max) == (min(rows), max(rows))
    assert stats.median == round(statistics.median(rows))
    assert rows[stats.max_task] == max(rows)
    assert operator.tasks == tuple(range(len(rows)))


# --------------------------------------------------------------------------------------------
# Text and JSON
# --------------------------------------------------------------------------------------------


def _redacted(text: str) -> list[str]:
    return DURATION.sub("<dur>", text).splitlines()


STAGE_LINE = re.compile(r"^[│├└─ ]*ExecutionStage: Stage (\d+) ")
TASK_LINE = re.compile(r"─ Task \d+: ")


def _depth(line: str) -> int:
    return len(line) - len(line.lstrip("│├└─ "))


def _stage_outline(lines: list[str]) -> dict[int, tuple[int, int, list[str]]]:
    """Stage id -> (depth of its header, header line number, its task lines)."""
    outline: dict[int, tuple[int, int, list[str]]] = {}
    header_at_depth: dict[int, int] = {}
    for number, line in enumerate(lines):
        if match := STAGE_LINE.match(line):
            stage_id = int(match.group(1))
            outline[stage_id] = (_depth(line), number, [])
            header_at_depth[_depth(line)] = stage_id
        elif TASK_LINE.search(line):
            outline[header_at_depth[_depth(line) - 3]][2].append(line)
    return outline


def test_text_shows_every_stage_and_task_nested(query: QueryResult, cluster: LocalCluster) -> None:
    tree = _tree(query)
    lines = _redacted(render_text(tree, trace_url_template="http://jaeger:16686/trace/{trace_id}"))
    assert lines[0] == (
        f"Distributed EXPLAIN ANALYZE  query={query.query_id}  trace={tree.trace_id}  "
        "total=<dur>  status=ok"
    )
    assert lines[1] == f"Trace: http://jaeger:16686/trace/{tree.trace_id}"
    assert "\x1b" not in "".join(lines)
    outline = _stage_outline(lines)
    assert sorted(outline) == sorted(s.stage_id for s in query.plan.stages)
    for stage in query.plan.stages:
        depth, number, task_lines = outline[stage.stage_id]
        plural = "" if stage.task_count == 1 else "s"
        assert lines[number].endswith(
            f"ExecutionStage: Stage {stage.stage_id} ({stage.task_count} task{plural}) "
            f"{stage.kind} - <dur> total  partitioning={stage.output.describe()}"
        )
        for consumer in query.plan.consumers(stage.stage_id):
            consumer_depth, consumer_number, _ = outline[consumer.stage_id]
            assert depth == consumer_depth + 3 and number > consumer_number
        if stage.fallback_reason:
            assert lines[number + 1].endswith(f"─ single-task fallback: {stage.fallback_reason}")
        assert len(task_lines) == stage.task_count
        for task_index, line in enumerate(task_lines):
            match = re.search(
                rf"─ Task {task_index}: (\S+) partitions \[[\d,]+\] - <dur>, [\d,]+ rows?, ", line
            )
            assert match is not None, line
            assert match.group(1) in cluster.worker_urls


def test_text_formats_numbers_for_people(results: dict[str, QueryResult]) -> None:
    text = render_text(_tree(results["q1"]))
    scan = next(line for line in text.splitlines() if "DataSourceExec: lineitem/" in line)
    # a scan shows the time it took reading and the bytes it read, not its compute time alone
    assert re.search(r"output_rows=\d{1,3}(,\d{3})+", scan)
    assert re.search(r"bytes_scanned=\d+(\.\d)? [kM]?B", scan)
    assert re.search(r"time_elapsed_scanning_total=\d+(\.\d+)?(ns|µs|ms|s)", scan)
    assert "elapsed_compute" not in scan.split("metrics=")[1]
    assert "spill_count=0" not in text and "output_bytes" not in text
    verbose = render_text(_tree(results["q1"]), verbose=True)
    verbose_scan = next(x for x in verbose.splitlines() if "DataSourceExec: file_groups" in x)
    assert re.search(r"bytes_scanned=\d+\.\d [kM]B \(", verbose_scan)
    assert re.search(r"time_elapsed_opening=\d+(\.\d+)?(ns|µs|ms|s) \(", verbose_scan)
    assert "spill_count=0" in verbose
    lines = verbose.splitlines()
    task = next(i for i, line in enumerate(lines) if "─ Task 0: " in line)
    assert "─ SortPreservingMergeExec: " in lines[task + 1]
    assert "read Stage 2 task 0 bucket 0 from grpc://" in verbose


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (850, "850ns"),
        (1_500, "1.5µs"),
        (22_000, "22µs"),
        (1_200_000, "1.2ms"),
        (22_000_000, "22ms"),
        (999_960, "1.0ms"),
        (1_500_000_000, "1.50s"),
        (None, "?"),
    ],
)
def test_durations_for_people(ns: int | None, text: str) -> None:
    assert format_duration(ns) == text


def test_hash_joins_show_the_memory_their_build_side_holds(
    results: dict[str, QueryResult], tpch_dir: Path
) -> None:
    """DataFusion's memory gauges (a hash join's ``build_mem_used``), which its Python API
    gives only as display text, reach the spans and the tree: at least the build side's join
    keys (8 bytes a row), and on the operator's line of the terminal tree."""
    tree = _tree(results["q3"])
    joins = [
        operator
        for stage in tree.all_stages()
        for operator in _walk(stage.operators)
        if operator.name == "HashJoinExec" and operator.metrics.get("build_input_rows", 0) > 0
    ]
    assert joins
    for join in joins:
        assert join.metrics["build_mem_used"] >= 8 * join.metrics["build_input_rows"]
    assert "build_mem_used=" in render_text(tree)
    # Single-node DataFusion, read the same way, against its own display of the gauge.
    ctx = Catalog.from_folder(tpch_dir).session()
    plan = ctx.sql(tpch.query(3)).execution_plan()
    for partition in range(plan.partition_count):
        for _ in ctx.execute(plan, partition):
            pass
    read = [op for op in _walk_metrics(operator_metrics(plan)) if op.name == "HashJoinExec"]
    shown = re.findall(r"build_mem_used\{[^}]*\}=([0-9.]+) (B|KB|MB)", _metrics_text(plan))
    units = {"B": 1, "KB": 1024, "MB": 1024 * 1024}
    assert read and shown
    assert sum(op.totals["build_mem_used"] for op in read) == pytest.approx(
        sum(float(value) * units[unit] for value, unit in shown), rel=0.01
    )


def _metrics_text(plan: object) -> str:
    raw = getattr(plan, "_raw_plan", plan)
    own = str(raw.metrics()) if raw.metrics() is not None else ""  # type: ignore[attr-defined]
    return " ".join([own, *(_metrics_text(child) for child in raw.children())])  # type: ignore[attr-defined]


def test_sizes_and_metric_units() -> None:
    # powers of 1000, spelled as the planner's notes spell them (``~10.8 kB``)
    sizes = (512, 1536, 10_800, 3_355_443, 999_960)
    assert [format_bytes(n) for n in sizes] == ["512 B", "1.5 kB", "10.8 kB", "3.4 MB", "1.0 MB"]
    assert format_metric("spilled_bytes", 2048) == "2.0 kB"
    assert format_metric("fetch_time", 22_000_000) == "22ms"
    assert format_metric("elapsed_compute", 850) == "850ns"
    assert format_metric("time_elapsed_opening", 1_500) == "1.5µs"
    assert format_metric("output_rows", 1250) == "1,250"


def test_json_tree_has_the_documented_keys(query: QueryResult) -> None:
    data = json.loads(json.dumps(tree_to_dict(_tree(query))))
    assert {"query_id", "trace_id", "duration_ns", "status", "error", "sql", "stages"} <= set(data)
    stage = data["stages"][0]
    assert {
        "stage_id",
        "task_count",
        "partitioning",
        "kind",
        "fallback_reason",
        "duration_ns",
        "skew",
        "operators",
        "tasks",
        "children",
    } <= set(stage)
    operator = stage["operators"][0]
    assert {"name", "display", "path", "metrics", "metric_stats", "children"} <= set(operator)
    assert set(next(iter(operator["metric_stats"].values()))) == {
        "min",
        "median",
        "max",
        "max_task",
    }
    task = stage["tasks"][0]
    assert {
        "task_index",
        "worker",
        "partitions",
        "duration_ns",
        "status",
        "error",
        "metrics",
        "operators",
    } <= set(task)
    assert {"output_rows", "output_bytes", "elapsed_compute"} <= set(task["metrics"])
    assert {"name", "display", "metrics", "children"} <= set(task["operators"][0])
    assert [child["stage_id"] for child in stage["children"]] == [
        i.stage_id for i in query.plan.root.inputs
    ]


# --------------------------------------------------------------------------------------------
# Span selection and trace files
# --------------------------------------------------------------------------------------------


def test_mixed_queries_are_selected_by_id_and_duplicates_kept_once(
    results: dict[str, QueryResult],
) -> None:
    q1, q3 = results["q1"], results["q3"]
    assert q1.telemetry is not None and q3.telemetry is not None
    mixed = q1.telemetry.spans + q3.telemetry.spans + q1.telemetry.spans
    with pytest.raises(ValueError, match=f"{q1.query_id}|{q3.query_id}") as raised:
        build_tree(mixed)
    assert q1.query_id in str(raised.value) and q3.query_id in str(raised.value)
    assert tree_to_dict(build_tree(mixed, query_id=q1.query_id)) == tree_to_dict(_tree(q1))
    assert tree_to_dict(build_tree(mixed, query_id=q3.query_id)) == tree_to_dict(_tree(q3))
    with pytest.raises(ValueError, match="no spans of query nope"):
        build_tree(mixed, query_id="nope")


def test_tree_from_an_otlp_json_trace_file_equals_the_live_tree(
    tpch_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpReceiver() as receiver:
        exporting = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        for name, value in exporting.items():
            monkeypatch.setenv(name, value)  # the in-process coordinator reads os.environ
        with LocalCluster(workers=3, data=tpch_dir, env={**os.environ, **exporting}) as local:
            result = local.execute(tpch.query(1))
            assert result.telemetry is not None
            live_ids = {span.span_id for span in result.telemetry.spans}
            receiver.wait_for_spans(
                lambda spans: live_ids <= {span.span_id for span in spans}, timeout=15
            )
        trace_file = tmp_path / "trace.jsonl"
        receiver.write_otlp_json(trace_file)
    live = build_tree(result.telemetry.spans)
    from_file = build_tree(load_trace_file(trace_file))
    assert tree_to_dict(from_file) == tree_to_dict(live)
    assert render_text(from_file, verbose=True) == render_text(live, verbose=True)


def test_trace_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist") as missing:
        load_trace_file(tmp_path / "missing.jsonl")
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"resourceSpans": []}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid OTLP/JSON") as bad:
        load_trace_file(malformed)
    wrong_shape = tmp_path / "shape.jsonl"
    wrong_shape.write_text('{"resourceSpans": 5}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"shape\.jsonl is not OTLP/JSON") as shape:
        load_trace_file(wrong_shape)
    for error in (missing, bad, shape):
        assert "\n" not in str(error.value)


# --------------------------------------------------------------------------------------------
# Skew, lost and failed tasks (hand-made spans)
# --------------------------------------------------------------------------------------------

_MS = 1_000_000
_QUERY = "q-synthetic"
_QUERY_SPAN = "1" * 16
_STAGE_SPAN = "5" * 16


def _record(
    name: str, span_id: str, parent: str, end_ns: int, attributes: dict[str, object]
) -> SpanRecord:
    return SpanRecord(
        name=name,
        trace_id="ab" * 16,
        span_id=span_id,
        parent_span_id=parent,
        start_ns=0,
        end_ns=end_ns,
        attributes={c.QUERY_ID: _QUERY, **attributes},
        resource={},
        status_code=2 if c.TASK_ERROR in attributes else 0,
        events=(),
    )


def _task(span_id: str, task_index: int, duration_ms: int, **extra: object) -> SpanRecord:
    attributes: dict[str, object] = {
        c.STAGE_ID: 1,
        c.TASK_INDEX: task_index,
        c.TASK_PARTITIONS: (task_index,),
        c.WORKER_URL: f"grpc://w{task_index}",
        c.TASK_STATUS: extra.pop("status", "finished"),
        c.TASK_OUTPUT_ROWS: 1250,
        c.TASK_OUTPUT_BYTES: 2048,
    }
    if "error" in extra:
        attributes[c.TASK_ERROR] = extra.pop("error")
    return _record(c.SPAN_TASK, span_id, _STAGE_SPAN, duration_ms * _MS, attributes)


def _operator(span_id: str, parent: str, task_index: int, compute_ns: int) -> SpanRecord:
    metric = c.METRIC_PREFIX
    attributes: dict[str, object] = {
        c.STAGE_ID: 1,
        c.TASK_INDEX: task_index,
        c.OPERATOR_NAME: "DataSourceExec",
        c.OPERATOR_DISPLAY: "DataSourceExec: file_groups={1 group}\n",
        c.OPERATOR_PATH: "0",
        metric + "output_rows": 1250,
        metric + "elapsed_compute": compute_ns,
        metric + "spill_count": 0,
        metric + "output_rows" + c.PARTITIONS_SUFFIX: (600, 650),
    }
    return _record("DataSourceExec", span_id, parent, 1, attributes)


def _synthetic(task_count: int, *spans: SpanRecord) -> list[SpanRecord]:
    query = _record(c.SPAN_QUERY, _QUERY_SPAN, "", 100 * _MS, {c.DB_QUERY_TEXT: "select 1"})
    stage_attributes: dict[str, object] = {
        c.STAGE_ID: 1,
        c.STAGE_TASK_COUNT: task_count,
        c.STAGE_PARTITIONING: "single",
        c.STAGE_KIND: "scan",
        c.STAGE_INPUTS: (),
    }
    stage = _record(c.SPAN_STAGE, _STAGE_SPAN, _QUERY_SPAN, 90 * _MS, stage_attributes)
    return [query, stage, *spans]


def _three_tasks() -> list[SpanRecord]:
    return [
        _task("a" * 16, 0, 10),
        _operator("b" * 16, "a" * 16, 0, 1_000),
        _task("c" * 16, 1, 14),
        _operator("d" * 16, "c" * 16, 1, 3_000),
        _task("e" * 16, 2, 45),
        _operator("f" * 16, "e" * 16, 2, 2_000),
    ]


def test_a_task_slower_than_twice_the_median_is_skew() -> None:
    tree = build_tree(_synthetic(3, *_three_tasks()))
    stage = tree.stages[0]
    assert stage.skew is not None
    assert (stage.skew.task_index, stage.skew.worker) == (2, "grpc://w2")
    assert stage.skew.ratio == pytest.approx(45 / 14, abs=0.01)
    text = render_text(tree)
    assert "⚠ skew: task 2 on grpc://w2 took 3.2x the median (45ms vs 14ms)" in text
    assert "├─ Task 1: grpc://w1 partitions [1] - 14ms, 1,250 rows\n" in text
    assert (
        "DataSourceExec: file_groups={1 group}  metrics=[output_rows=3,750 "
        "(1,250 / 1,250 / 1,250 task 0), elapsed_compute=6.0µs (1.0µs / 2.0µs / 3.0µs task 1)]"
    ) in text
    assert build_tree(_synthetic(3, *_three_tasks()), skew_threshold=4.0).stages[0].skew is None
    assert tree_to_dict(tree)["stages"][0]["skew"] == {
        "task_index": 2,
        "worker": "grpc://w2",
        "ratio": 3.21,
        "duration_ns": 45 * _MS,
        "median_ns": 14 * _MS,
    }


def test_a_planned_task_without_telemetry_is_unknown() -> None:
    read_of_lost_task = _record(
        c.SPAN_READ,
        "9" * 16,
        _STAGE_SPAN,
        5 * _MS,
        {c.READ_ENDPOINT: "grpc://w3", c.READ_STAGE_ID: 1, c.READ_TASK_INDEX: 3},
    )
    tree = build_tree(_synthetic(4, *_three_tasks(), read_of_lost_task))
    stage = tree.stages[0]
    assert [t.status for t in stage.tasks] == ["finished"] * 3 + ["unknown"]
    lost = stage.tasks[3]
    assert (lost.worker, lost.metrics, lost.duration_ns) == ("grpc://w3", {}, None)
    text = render_text(tree)
    assert "└─ Task 3: grpc://w3 partitions ? - status=unknown (no telemetry received)" in text
    assert tree_to_dict(tree)["stages"][0]["tasks"][3]["status"] == "unknown"


def test_failed_tasks_show_their_status_and_error() -> None:
    failed = _task("a" * 16, 0, 10, status="failed", error="disk full")
    cancelled = _task("c" * 16, 1, 12, status="cancelled")
    tree = build_tree(_synthetic(2, failed, cancelled))
    text = render_text(tree)
    assert "├─ Task 0: grpc://w0 partitions [0] - 10ms, failed: disk full" in text
    assert "└─ Task 1: grpc://w1 partitions [1] - 12ms, cancelled" in text
    assert [t.error for t in tree.stages[0].tasks] == ["disk full", None]
