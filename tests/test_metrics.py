"""Metrics end to end, with real components.

A local cluster serves Prometheus ``/metrics`` from its coordinator and every worker and also
exports metrics and spans over OTLP to a real receiver. A real Prometheus server (Debian's
``prometheus`` package) scrapes the cluster while it runs TPC-H queries; then every PromQL
expression of every Grafana dashboard must return data, and the query-duration exemplars must
carry the trace ids of the queries that ran, both in Prometheus and in the OTLP data points.
Unit tests cover naming, configuration, span-export counting and stage skew.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_dist import tpch
from otel_dist.frontend.local import ClusterError, LocalCluster
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry import metrics as m
from otel_dist.telemetry.metrics import MetricsConfig, stage_skews, start_process_telemetry
from otel_dist.telemetry.otlp import SpanRecord
from otel_dist.telemetry.prometheus import prometheus_name
from otel_dist.telemetry.span_export import (
    CountingBatchSpanProcessor,
    CountingSpanExporter,
    SpanExportStats,
)
from otel_dist.testing.otlp_receiver import OtlpReceiver, ReceivedMetric

DASHBOARDS = Path(__file__).resolve().parent.parent / "grafana" / "dashboards"
INSTALL_HINT = (
    "the Prometheus test needs the `prometheus` binary on PATH: install it with "
    "`apt-get update && apt-get install -y prometheus` (Debian/Ubuntu; `bash .ci/run` does this) "
    "or put a release binary from https://prometheus.io/download/ on PATH"
)
OK_QUERIES = (1, 6, 3)
BAD_SQL = "select * from no_such_table"
# Attributes a metric data point may carry: bounded sets, never query ids.
ALLOWED_ATTRIBUTES = {
    m.QUERY_STATUS,
    c.STAGE_KIND,
    c.TASK_STATUS,
    m.OPERATOR_NAME,
    m.SHUFFLE_LOCALITY,
    m.FETCH_RESULT,
    m.EXPORT_RESULT,
}


# ---- the cluster, the receiver, Prometheus ---------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as otlp:
        yield otlp


@pytest.fixture(scope="module")
def observed(receiver: OtlpReceiver, tpch_dir: Path) -> Iterator[LocalCluster]:
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_METRICS_EXPORTER": "otlp,prometheus",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with LocalCluster(workers=3, data=tpch_dir, env=env, metrics_ports=True) as cluster:
        yield cluster


@dataclass
class Prometheus:
    """A running Prometheus server and its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("/api/v1/query", query=expr)["result"]  # type: ignore[no-any-return]

    def exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        return self.api("/api/v1/query_exemplars", query=expr, start=str(start), end=str(end))  # type: ignore[no-any-return]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _target(url: str) -> str:
    return urllib.parse.urlparse(url).netloc


@pytest.fixture(scope="module")
def prometheus(
    observed: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    assert observed.coordinator_metrics_url and len(observed.worker_metrics_urls) == 3
    folder = tmp_path_factory.mktemp("prometheus")
    config = folder / "prometheus.yml"
    coordinator = json.dumps([_target(observed.coordinator_metrics_url)])
    workers = json.dumps([_target(url) for url in observed.worker_metrics_urls])
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: otel-dist-coordinator\n    static_configs:\n      - targets: {coordinator}\n"
        f"  - job_name: otel-dist-worker\n    static_configs:\n      - targets: {workers}\n"
    )
    port = _free_port()
    log = folder / "prometheus.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait(
            lambda: _ready(server), 20, lambda: f"Prometheus not ready: {log.read_text()[-2000:]}"
        )
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _ready(server: Prometheus) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(f"Prometheus exited: {server.log.read_text()[-2000:]}")
    try:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False


def _wait(condition: Callable[[], bool], timeout_s: float, describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(describe())
        time.sleep(0.25)


def _scalar(server: Prometheus, expr: str) -> float:
    result = server.query(expr)
    return float(result[0]["value"][1]) if result else math.nan


@dataclass
class Workload:
    """The queries run against the observed cluster."""

    trace_ids: list[str] = field(default_factory=list)
    failed_trace_ids: list[str] = field(default_factory=list)
    query_ids: list[str] = field(default_factory=list)
    started: float = 0.0

    @property
    def last_trace_id(self) -> str:
        return self.trace_ids[-1]


_CALLER = TracerProvider().get_tracer("test-caller")


@pytest.fixture(scope="module")
def workload(observed: LocalCluster, prometheus: Prometheus) -> Workload:
    """Two rounds of queries (the first creates the series, the second moves the rates)."""
    _wait(
        lambda: _scalar(prometheus, "count(up == 1)") == 4,
        15,
        lambda: f"targets not all up: {prometheus.query('up')}",
    )
    done = Workload(started=time.time())
    tasks = 0
    for round_number in (1, 2):
        for number in OK_QUERIES[: 2 if round_number == 1 else 3]:
            result = observed.execute(tpch.query(number))
            assert result.telemetry is not None
            done.trace_ids.append(result.telemetry.trace_id)
            done.query_ids.append(result.query_id)
            tasks += sum(stage.task_count for stage in result.plan.stages)
        # Under a caller's span, so the failed query's trace id is known here.
        with (
            _CALLER.start_as_current_span("caller") as caller,
            pytest.raises(ValueError, match="no_such_table"),
        ):
            observed.execute(BAD_SQL)
        done.failed_trace_ids.append(format(caller.get_span_context().trace_id, "032x"))
        expected = len(done.trace_ids) + round_number
        _wait(
            lambda expected=expected: (
                _scalar(prometheus, "sum(otel_dist_query_duration_seconds_count)") >= expected
            ),
            15,
            lambda: "Prometheus did not scrape the finished queries",
        )
        # The workers too: a round can finish between two of their scrapes, and a rate needs
        # the second round to land in a later scrape than the first.
        _wait(
            lambda tasks=tasks: (
                _scalar(prometheus, "sum(otel_dist_task_duration_seconds_count)") >= tasks
            ),
            15,
            lambda: "Prometheus did not scrape the workers' finished tasks",
        )
    return done


# ---- dashboards against Prometheus -----------------------------------------------------------


def dashboard_expressions() -> list[tuple[str, str, str]]:
    """(dashboard file, panel or variable title, PromQL) of every Prometheus query."""
    found: list[tuple[str, str, str]] = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        stack = list(dashboard.get("panels", []))
        while stack:
            panel = stack.pop()
            stack.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                source = target.get("datasource") or panel.get("datasource") or {}
                if source.get("type", "prometheus") == "prometheus" and target.get("expr"):
                    found.append((path.name, panel.get("title", ""), target["expr"]))
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            if variable.get("type") == "query" and text:
                values = re.fullmatch(r"\s*label_values\((.*),\s*[\w.]+\s*\)\s*", text)
                found.append((path.name, f"${variable['name']}", values[1] if values else text))
    return found


def concrete(expr: str) -> str:
    """Grafana variables replaced: intervals by 1m, dashboard variables by ``.*``."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "1m", expr)
    return re.sub(r"\$\{(\w+)(:\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", ".*", expr)


def test_dashboards_have_expressions() -> None:
    names = {path.name for path in DASHBOARDS.glob("*.json")}
    assert names == {
        "query-overview.json",
        "stages-and-tasks.json",
        "workers.json",
        "telemetry-pipeline.json",
    }
    assert len(dashboard_expressions()) >= 30


def test_every_dashboard_expression_returns_data(
    workload: Workload, prometheus: Prometheus
) -> None:
    expressions = dashboard_expressions()
    missing: list[tuple[str, str, str]] = []

    def all_answered() -> bool:
        missing[:] = [e for e in expressions if not prometheus.query(concrete(e[2]))]
        return not missing

    _wait(
        all_answered,
        20,
        lambda: (
            "dashboard expressions without data:\n"
            + "\n".join(f"  {file} / {title}: {concrete(expr)}" for file, title, expr in missing)
        ),
    )
    # Beyond "some data": the second round moved the rates, so quantiles are finite numbers.
    moved = {
        "histogram_quantile(0.5, sum by (le) (rate(otel_dist_query_duration_seconds_bucket[1m])))",
        "sum(rate(otel_dist_task_duration_seconds_count[1m]))",
        "sum(rate(otel_dist_operator_output_rows_total[1m]))",
        "sum(rate(otel_dist_shuffle_io_bytes_total[1m]))",
    }
    _wait(
        lambda: all(_scalar(prometheus, expr) > 0 for expr in moved),
        10,
        lambda: f"rates did not move: { {e: _scalar(prometheus, e) for e in moved} }",
    )


def test_prometheus_exemplars_carry_query_trace_ids(
    workload: Workload, prometheus: Prometheus
) -> None:
    seen: dict[str, set[str]] = {}

    def last_query_seen() -> bool:
        results = prometheus.exemplars(
            "otel_dist_query_duration_seconds_bucket", workload.started - 60, time.time() + 60
        )
        seen.clear()
        for series in results:
            status = series["seriesLabels"].get("otel_dist_query_status", "")
            for exemplar in series["exemplars"]:
                seen.setdefault(status, set()).add(exemplar["labels"]["trace_id"])
        return workload.last_trace_id in seen.get("ok", set())

    _wait(last_query_seen, 15, lambda: f"exemplars seen: {seen}")
    assert seen["ok"] <= set(workload.trace_ids), "every ok exemplar is a query that ran"
    assert seen.get("error"), "the failed queries have exemplars too"
    assert seen["error"] <= set(workload.failed_trace_ids)


# ---- OTLP ------------------------------------------------------------------------------------


def _service(metric: ReceivedMetric) -> str:
    return str(metric.resource.get("service.name"))


def _points(metric: ReceivedMetric) -> Sequence[Any]:
    data = metric.metric.WhichOneof("data")
    return getattr(metric.metric, data).data_points if data else []


def test_otlp_metrics_exemplars_and_traces_reach_the_receiver(
    workload: Workload, receiver: OtlpReceiver, observed: LocalCluster
) -> None:
    def exemplar_ids(metrics: list[ReceivedMetric]) -> set[str]:
        return {
            exemplar.trace_id.hex()
            for metric in metrics
            if metric.metric.name == m.QUERY_DURATION
            for point in _points(metric)
            for exemplar in point.exemplars
        }

    def complete(metrics: list[ReceivedMetric]) -> bool:
        workers = {
            metric.resource.get("service.instance.id")
            for metric in metrics
            if metric.metric.name == m.TASK_DURATION and _service(metric) == "otel-dist-worker"
        }
        return len(workers) == 3 and workload.last_trace_id in exemplar_ids(metrics)

    metrics = receiver.wait_for_metrics(complete, timeout=15)
    coordinator = {x.metric.name for x in metrics if _service(x) == "otel-dist-coordinator"}
    worker = {x.metric.name for x in metrics if _service(x) == "otel-dist-worker"}
    assert {m.QUERY_DURATION, m.QUERY_ACTIVE, m.STAGE_TASK_SKEW, m.FALLBACK_FETCHES} <= coordinator
    assert {m.SPANS_EXPORTED, m.SPANS_DROPPED, m.PROCESS_MEMORY_USAGE} <= coordinator
    assert {
        m.TASK_DURATION,
        m.TASK_ACTIVE,
        m.OPERATOR_OUTPUT_ROWS,
        m.OPERATOR_OUTPUT_SIZE,
        m.SHUFFLE_IO,
        m.WORKER_MEMORY_USAGE,
        m.FINAL_MESSAGE_SIZE,
        m.SPANS_EXPORTED,
    } <= worker
    units = {x.metric.name: x.metric.unit for x in metrics}
    assert units[m.QUERY_DURATION] == "s" and units[m.SHUFFLE_IO] == "By"
    assert exemplar_ids(metrics) <= set(workload.trace_ids) | set(workload.failed_trace_ids)
    # Bounded labels: known keys only, and never a query id.
    query_ids = set(workload.query_ids)
    for metric in metrics:
        if not metric.metric.name.startswith("otel_dist."):
            continue
        for point in _points(metric):
            for attribute in point.attributes:
                assert attribute.key in ALLOWED_ATTRIBUTES, (metric.metric.name, attribute.key)
                assert attribute.value.string_value not in query_ids
    # The traces went the same way: the last query's spans from the coordinator and workers.
    observed.coordinator.telemetry.flush()
    spans = receiver.wait_for_spans(
        lambda spans: (
            _services_of(spans, workload.last_trace_id)
            >= {"otel-dist-coordinator", "otel-dist-worker"}
        ),
        timeout=15,
    )
    assert any(
        c.is_query_span(s.name, s.attributes) and s.trace_id == workload.last_trace_id
        for s in spans
    )


def _services_of(spans: list[SpanRecord], trace_id: str) -> set[str]:
    return {str(s.resource.get("service.name")) for s in spans if s.trace_id == trace_id}


# ---- units -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        ("otel_dist.query.duration", "s", "histogram", "otel_dist_query_duration_seconds"),
        ("otel_dist.shuffle.io", "By", "counter", "otel_dist_shuffle_io_bytes_total"),
        (
            "otel_dist.operator.output.rows",
            "{row}",
            "counter",
            "otel_dist_operator_output_rows_total",
        ),
        ("otel_dist.query.active", "{query}", "gauge", "otel_dist_query_active"),
        ("otel_dist.stage.task_skew", "1", "histogram", "otel_dist_stage_task_skew"),
        ("cpu.utilization", "1", "gauge", "cpu_utilization_ratio"),
        ("process.memory.usage", "By", "gauge", "process_memory_usage_bytes"),
        ("net.rate", "By/s", "gauge", "net_rate_bytes_per_second"),
    ],
)
def test_prometheus_names(name: str, unit: str, kind: str, expected: str) -> None:
    assert prometheus_name(name, unit, kind) == expected


def test_metrics_config_from_env() -> None:
    assert not MetricsConfig.from_env({}).enabled
    otlp = MetricsConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert otlp.exporters == ("otlp",) and otlp.endpoint == "http://collector:4317"
    http = MetricsConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
    )
    assert http.endpoint == "http://c:4318/v1/metrics"
    both = MetricsConfig.from_env(
        {"OTEL_METRICS_EXPORTER": "otlp, prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": "9999"}
    )
    assert both.exporters == ("otlp", "prometheus") and both.prometheus_port == 9999
    assert not MetricsConfig.from_env({"OTEL_METRICS_EXPORTER": "none"}).enabled
    flag = MetricsConfig.from_env({"OTEL_METRICS_EXPORTER": "none"}, prometheus_port=0)
    assert flag.exporters == ("prometheus",) and flag.prometheus_port == 0
    off = {"OTEL_DIST_TELEMETRY": "off", "OTEL_METRICS_EXPORTER": "otlp,prometheus"}
    assert not MetricsConfig.from_env(off, prometheus_port=0).enabled
    interval = MetricsConfig.from_env(
        {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_METRIC_EXPORT_INTERVAL": "250"}
    )
    assert interval.export_interval_ms == 250


def test_metrics_are_off_when_telemetry_is_off() -> None:
    telemetry, metrics = start_process_telemetry(
        "otel-dist-test", {"OTEL_DIST_TELEMETRY": "off"}, prometheus_port=0
    )
    assert not telemetry.enabled and not metrics.enabled and metrics.prometheus_url is None
    coordinator = metrics.coordinator(lambda: 0)
    coordinator.record_query(m.QueryOutcome("ok", 1.0, None, {}))  # a no-op, not an error
    metrics.shutdown()


def test_a_taken_port_is_logged_not_raised() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _, metrics = start_process_telemetry("otel-dist-test", {}, prometheus_port=port)
        try:
            assert metrics.enabled and metrics.prometheus_url is None
        finally:
            metrics.shutdown()


def test_served_metrics_use_prometheus_names() -> None:
    _, metrics = start_process_telemetry("otel-dist-test", {}, prometheus_port=0)
    try:
        assert metrics.prometheus_url is not None
        metrics.coordinator(lambda: 2).record_query(m.QueryOutcome("ok", 0.2, None, {}))
        with urllib.request.urlopen(metrics.prometheus_url, timeout=5) as response:
            text = response.read().decode()
        assert 'otel_dist_query_duration_seconds_count{otel_dist_query_status="ok"} 1.0' in text
        assert "otel_dist_query_active 2.0" in text
        assert "target_info{" in text and 'service_name="otel-dist-test"' in text
    finally:
        metrics.shutdown()


def test_metrics_ports_are_validated(tpch_dir: Path) -> None:
    with pytest.raises(ClusterError, match="metrics_ports"):
        LocalCluster(workers=2, data=tpch_dir, metrics_ports=[1, 2, 3, 4])
    explicit = LocalCluster(workers=2, data=tpch_dir, metrics_ports=[9100, 9101])
    assert (explicit.worker_metrics_ports, explicit.coordinator_metrics_port) == ([9100, 9101], 0)
    # Processes on one host cannot share OTEL_EXPORTER_PROMETHEUS_PORT: free ports instead.
    implied = LocalCluster(workers=2, data=tpch_dir, env={"OTEL_METRICS_EXPORTER": "prometheus"})
    assert (implied.worker_metrics_ports, implied.coordinator_metrics_port) == ([0, 0], 0)
    assert LocalCluster(workers=2, data=tpch_dir, env={}).worker_metrics_ports is None


class _Scripted(SpanExporter):
    """An exporter whose answer the test chooses; ``gate`` blocks exports until set."""

    def __init__(self, answer: SpanExportResult | Exception) -> None:
        self.answer = answer
        self.gate = threading.Event()
        self.gate.set()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait(10)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _end_spans(processor: CountingBatchSpanProcessor, count: int) -> None:
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for index in range(count):
        tracer.start_span(f"span-{index}").end()


@pytest.mark.parametrize(
    ("answer", "exported", "failed"),
    [
        (SpanExportResult.SUCCESS, 5, 0),
        (SpanExportResult.FAILURE, 0, 5),
        (RuntimeError("collector exploded"), 0, 5),
    ],
)
def test_span_exports_are_counted(
    answer: SpanExportResult | Exception, exported: int, failed: int
) -> None:
    stats = SpanExportStats()
    processor = CountingBatchSpanProcessor(CountingSpanExporter(_Scripted(answer), stats), stats)
    _end_spans(processor, 5)
    processor.force_flush()
    processor.shutdown()
    assert stats.snapshot() == {
        "submitted": 5,
        "exported": exported,
        "failed": failed,
        "dropped": 0,
    }


def test_spans_dropped_by_a_full_queue_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    stats = SpanExportStats()
    blocked = _Scripted(SpanExportResult.SUCCESS)
    blocked.gate.clear()
    processor = CountingBatchSpanProcessor(CountingSpanExporter(blocked, stats), stats)
    _end_spans(processor, 20)
    blocked.gate.set()
    processor.force_flush()
    processor.shutdown()
    counts = stats.snapshot()
    assert counts["submitted"] == 20
    assert counts["dropped"] >= 20 - 4 - 2, counts  # queue of 4, one batch of 2 in flight
    assert counts["exported"] + counts["dropped"] == 20


def _task(stage: int, index: int, start: int, end: int) -> SpanRecord:
    attributes: dict[str, object] = {c.STAGE_ID: stage, c.TASK_INDEX: index}
    return SpanRecord(c.SPAN_TASK, "t", f"{stage}{index}", "", start, end, attributes, {}, 0, ())


def test_stage_skew_is_longest_over_median() -> None:
    spans = [
        _task(0, 0, 0, 100),
        _task(0, 1, 0, 100),
        _task(0, 2, 0, 300),
        _task(1, 0, 0, 50),  # one task: no skew
        SpanRecord("other", "t", "x", "", 0, 999, {c.STAGE_ID: 1}, {}, 0, ()),
    ]
    assert stage_skews(spans, {0: "partial aggregate", 1: "merge"}) == [("partial aggregate", 3.0)]


def test_worker_task_counters_sum_every_task_by_series() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from otel_dist.telemetry.task_spans import OperatorMetrics, ReadRecord

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    idle = m.WorkerObservers(lambda: 0, lambda: 0, lambda: 0, lambda: 0)
    worker = m.WorkerMetrics(provider.get_meter("test"), True, idle)

    def operator(name: str, rows: int, children: list[OperatorMetrics]) -> OperatorMetrics:
        totals = {"output_rows": rows, "output_bytes": rows * 8}
        return OperatorMetrics(name, name, totals, {}, None, None, children)

    def read(endpoint: str, size: int) -> ReadRecord:
        return ReadRecord(endpoint, 1, 0, 0, 0, 1, 10, 1, size, None, 0, 0)

    plan = operator(
        "ProjectionExec", 5, [operator("FilterExec", 5, [operator("DataSourceExec", 9, [])])]
    )
    here = "grpc://127.0.0.1:1"
    for kind, rows in (("scan", 5), ("scan", 7), ("join", 11)):
        worker.record_task(
            m.TaskOutcome(
                kind,
                "finished",
                0.01,
                rows,
                rows * 10,
                here,
                plan,
                [read(here, 100), read("grpc://127.0.0.1:2", 40), read(here, 1)],
            )
        )

    points: dict[str, dict[frozenset[tuple[str, Any]], Any]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = {
                    frozenset(p.attributes.items()): getattr(p, "value", None)
                    for p in metric.data.data_points
                }
    kind = c.STAGE_KIND
    assert points[m.TASK_OUTPUT_ROWS] == {
        frozenset({(kind, "scan")}): 12,
        frozenset({(kind, "join")}): 11,
    }
    assert points[m.TASK_OUTPUT_SIZE][frozenset({(kind, "scan")})] == 120
    by_operator = {dict(k)[m.OPERATOR_NAME]: v for k, v in points[m.OPERATOR_OUTPUT_ROWS].items()}
    assert by_operator == {"ProjectionExec": 15, "FilterExec": 15, "DataSourceExec": 27}
    assert points[m.OPERATOR_OUTPUT_SIZE][frozenset({(m.OPERATOR_NAME, "DataSourceExec")})] == 216
    shuffle = {
        (dict(k)[kind], dict(k)[m.SHUFFLE_LOCALITY]): v for k, v in points[m.SHUFFLE_IO].items()
    }
    assert shuffle == {
        ("scan", "local"): 202,
        ("scan", "remote"): 80,
        ("join", "local"): 101,
        ("join", "remote"): 40,
    }
    provider.shutdown()
