"""EXPLAIN and EXPLAIN ANALYZE through every interface: SQL, Python, `otel-dist local`,
`otel-dist query`, `otel-dist explain --trace`; logs with trace ids; the coordinator's pages."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_dist import tpch
from otel_dist.coordinator.core import QueryError
from otel_dist.explain.recent import QueryLog, QueryLogConfig, RecentQueries
from otel_dist.explain.statements import explain_analyze
from otel_dist.explain.web import QueryPagesServer
from otel_dist.frontend.local import LocalCluster
from otel_dist.logs import JsonFormatter
from otel_dist.telemetry.conventions import is_query_span
from otel_dist.testing.otlp_receiver import OtlpReceiver
from tests.support import remote_cluster

CLI = [sys.executable, "-m", "otel_dist.cli"]
FAILING_SQL = "select l_orderkey / (l_linenumber - l_linenumber) as boom from lineitem"


def _durations_redacted(text: str) -> str:
    return re.sub(r"\d+(\.\d+)?(ns|µs|ms|s)\b", "<d>", text)


def test_explain_shows_the_distributed_plan_without_running(cluster: LocalCluster) -> None:
    table = cluster.sql("EXPLAIN " + tpch.query(1))
    assert table.column_names == ["plan_type", "plan"]
    text = "\n".join(table.column("plan").to_pylist())
    plan = cluster.plan(tpch.query(1))
    for stage in plan.stages:
        assert f"Stage {stage.stage_id} ── {stage.kind}, tasks={stage.task_count}" in text
    assert "hash(l_returnflag, l_linestatus) into 3" in text


def test_explain_analyze_as_sql(cluster: LocalCluster) -> None:
    table = cluster.sql("EXPLAIN ANALYZE " + tpch.query(6))
    lines = table.column("plan").to_pylist()
    assert set(table.column("plan_type").to_pylist()) == {"explain_analyze"}
    assert lines[0].startswith("Distributed EXPLAIN ANALYZE")
    assert sum(1 for line in lines if re.search(r"─ Task \d+: grpc://", line)) == 4


def test_explain_analyze_in_python(cluster: LocalCluster) -> None:
    analysis = cluster.explain_analyze(tpch.query(1))
    assert analysis.table is not None and analysis.table.num_rows == 4
    tree = analysis.to_dict()
    json.dumps(tree)
    assert tree["query_id"] and tree["trace_id"] and tree["stages"]
    assert "ExecutionStage: Stage 3 (1 task) merge" in analysis.text()
    assert len(analysis.text(verbose=True)) > len(analysis.text())


def test_failed_query_still_explains_and_names_the_failed_task(cluster: LocalCluster) -> None:
    with pytest.raises(QueryError) as raised:
        explain_analyze(cluster, FAILING_SQL)
    message = str(raised.value)
    assert re.search(
        r"stage \d+ task \d+ on grpc://127\.0\.0\.1:\d+ failed: .*[Dd]ivide by zero", message
    )
    analysis = raised.value.analysis  # type: ignore[attr-defined]
    text = analysis.text()
    assert "status=error" in text.splitlines()[0]
    failed = re.search(r"(stage \d+ task \d+) on", message)
    assert failed is not None
    assert re.search(r"Task \d+: grpc://\S+ .*failed", text), text


def test_trace_link_in_the_header(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_DIST_TRACE_URL", "http://jaeger:16686/trace/{trace_id}")
    analysis = cluster.explain_analyze("select count(*) from region")
    trace_id = analysis.tree.trace_id
    assert f"Trace: http://jaeger:16686/trace/{trace_id}" in analysis.text()
    assert f"href='http://jaeger:16686/trace/{trace_id}'" in analysis.html()


def test_explain_log_records_carry_trace_ids(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: list[object] = []
    cluster.coordinator.add_listener(outcomes.append)
    try:
        result = cluster.execute(tpch.query(6))
    finally:
        cluster.coordinator.remove_listener(outcomes.append)
    caplog.set_level(logging.INFO, logger="otel_dist.explain.log")
    QueryLog(QueryLogConfig(mode="all"))(outcomes[-1])
    record = next(r for r in caplog.records if r.name == "otel_dist.explain.log")
    assert result.telemetry is not None
    assert record.trace_id == result.telemetry.trace_id  # type: ignore[attr-defined]
    assert len(record.span_id) == 16  # type: ignore[attr-defined]
    assert "ExecutionStage: Stage" in record.getMessage()
    line = json.loads(JsonFormatter().format(record))
    assert line["trace_id"] == result.telemetry.trace_id and line["query_id"] == result.query_id
    caplog.clear()
    QueryLog(QueryLogConfig(mode="slow", slow_ms=60_000))(outcomes[-1])
    assert not [r for r in caplog.records if r.name == "otel_dist.explain.log"]


def test_coordinator_serves_recent_query_pages(cluster: LocalCluster) -> None:
    recent = RecentQueries()
    cluster.coordinator.add_listener(recent)
    pages = QueryPagesServer(recent).start()
    try:
        result = cluster.execute(tpch.query(1))
        index = urllib.request.urlopen(pages.url + "/", timeout=10).read().decode()
        assert f"/queries/{result.query_id}" in index
        page = urllib.request.urlopen(f"{pages.url}/queries/{result.query_id}", timeout=10)
        body = page.read().decode()
        total = sum(stage.task_count for stage in result.plan.stages)
        assert len(re.findall(r"data-task=", body)) == total
        tree = json.loads(
            urllib.request.urlopen(f"{pages.url}/queries/{result.query_id}.json", timeout=10).read()
        )
        assert tree["query_id"] == result.query_id
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(pages.url + "/queries/nope", timeout=10)
    finally:
        cluster.coordinator.remove_listener(recent)
        pages.stop()


def test_local_cli_explain_outputs(tpch_dir: Path, tmp_path: Path) -> None:
    tree_file, page = tmp_path / "tree.json", tmp_path / "profile.html"
    result = subprocess.run(
        [
            *CLI, "local", "--workers", "2", "--data", str(tpch_dir), "-e", tpch.query(6),
            "--explain-analyze", "--explain-json", str(tree_file), "--profile-html", str(page),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "revenue" in result.stdout and "Distributed EXPLAIN ANALYZE" in result.stdout
    tree = json.loads(tree_file.read_text())
    assert {"query_id", "trace_id", "duration_ns", "stages"} <= set(tree)
    assert "data-task=" in page.read_text()


@pytest.fixture
def remote_coordinator(tpch_dir: Path) -> Iterator[tuple[str, OtlpReceiver]]:
    """A worker and a coordinator as separate processes exporting to a real OTLP receiver."""
    with OtlpReceiver() as receiver:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with remote_cluster(tpch_dir, env) as (coordinator_url, _):
            yield coordinator_url, receiver


def test_query_cli_explain_and_trace_file_round_trip(
    remote_coordinator: tuple[str, OtlpReceiver], tmp_path: Path
) -> None:
    url, receiver = remote_coordinator
    tree_file = tmp_path / "tree.json"
    result = subprocess.run(
        [*CLI, "query", "--coordinator", url, "-e", tpch.query(1), "--explain-analyze",
         "--explain-json", str(tree_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Distributed EXPLAIN ANALYZE" in result.stdout
    live = json.loads(tree_file.read_text())
    # Every task's spans, not just the query span: workers export in their own batches.
    expected_tasks = _task_count(live["stages"])
    receiver.wait_for_spans(
        lambda spans: (
            any(
                is_query_span(s.name, s.attributes)
                and s.attributes.get("otel_dist.query.id") == live["query_id"]
                for s in spans
            )
            and sum(
                s.name == "otel_dist.task"
                and s.attributes.get("otel_dist.query.id") == live["query_id"]
                for s in spans
            )
            >= expected_tasks
        ),
        timeout=20,
    )
    trace_file = tmp_path / "traces.jsonl"
    receiver.write_otlp_json(trace_file)
    rebuilt = subprocess.run(
        [*CLI, "explain", "--trace", str(trace_file), "--query-id", live["query_id"], "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout) == live
    text = subprocess.run(
        [*CLI, "explain", "--trace", str(trace_file), "--query-id", live["query_id"]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert _durations_redacted(text.stdout).count("ExecutionStage: Stage") == _count(live["stages"])


def _count(stages: list[dict[str, object]]) -> int:
    return sum(1 + _count(stage["children"]) for stage in stages)  # type: ignore[arg-type]


def test_explain_cli_bad_trace_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    result = subprocess.run(
        [*CLI, "explain", "--trace", str(missing)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(missing) in result.stderr


def _task_count(stages: list[dict[str, object]]) -> int:
    return sum(
        len(stage["tasks"]) + _task_count(stage["children"])  # type: ignore[arg-type]
        for stage in stages
    )
