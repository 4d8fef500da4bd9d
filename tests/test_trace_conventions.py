"""otel_dist's traces as OpenTelemetry backends read them (Jaeger, Tempo, Phoenix): sampling
never thins EXPLAIN ANALYZE, every span lies inside its parent's time, span kinds and RPC
attributes pair coordinator and workers, resource, scope and database conventions, and
failure semantics; checked on spans exported to the project's own OTLP receiver."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from otel_dist import tpch
from otel_dist.coordinator.core import QueryError, QueryResult
from otel_dist.explain.build import build_tree
from otel_dist.frontend.local import LocalCluster
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry import rpc
from otel_dist.telemetry.otlp import SpanRecord, decode_attributes
from otel_dist.telemetry.setup import (
    SAMPLERS,
    SCHEMA_URL,
    TelemetryConfig,
    _sampler,
    package_version,
)
from otel_dist.testing.otlp_receiver import OtlpReceiver

CLIENT, SERVER, ERROR = 3, 2, 2
JOIN_SQL = (
    "SELECT n_name, count(*) AS suppliers FROM supplier JOIN nation "
    "ON s_nationkey = n_nationkey GROUP BY n_name ORDER BY n_name"
)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as otlp:
        yield otlp


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100", **extra}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_explain_is_complete_whatever_the_sampler_decides(
    receiver: OtlpReceiver, tpch_dir: Path, sampler: str
) -> None:
    # A ratio of 0 samples no trace: the ratio samplers drop everything, as always_off does.
    env = _env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_TRACES_SAMPLER=sampler,
        OTEL_TRACES_SAMPLER_ARG="0",
    )
    with LocalCluster(workers=2, data=tpch_dir, env=env, min_task_bytes=0) as local:
        result = local.execute(JOIN_SQL)
        local.coordinator.telemetry.flush()
    assert result.telemetry is not None
    spans = result.telemetry.spans
    query = next(s for s in spans if c.QUERY_ID in s.attributes and not s.parent_span_id)
    assert query.attributes[c.QUERY_ROWS] == result.table.num_rows
    stages = [s for s in spans if s.name == c.SPAN_STAGE]
    assert len(stages) == len(result.plan.stages)
    assert all(c.STAGE_KIND in s.attributes and c.STAGE_INPUTS in s.attributes for s in stages)
    tree = build_tree(spans, result.query_id)
    assert tree.status == "ok" and tree.output_rows == result.table.num_rows
    assert len(tree.stages) == 1 and tree.stages[0].children, "stages nest by data flow"
    assert all(t.status == "finished" for s in tree.stages for t in s.tasks)
    exported = [s for s in receiver.spans() if s.trace_id == result.telemetry.trace_id]
    if sampler in ("always_on", "parentbased_always_on"):
        # and the RPC spans, which EXPLAIN does not need
        assert {s.span_id for s in spans} <= {s.span_id for s in exported}
    else:
        assert exported == []


def test_unknown_sampler_is_named_in_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    config = TelemetryConfig.from_env("x", {"OTEL_TRACES_SAMPLER": "always_maybe"})
    with caplog.at_level("WARNING"):
        sampler = _sampler(config)
    assert "ParentBased" in sampler.get_description()
    [record] = [r for r in caplog.records if "OTEL_TRACES_SAMPLER" in r.getMessage()]
    assert "always_maybe" in record.getMessage() and "\n" not in record.getMessage()


@pytest.fixture(scope="module")
def traced(receiver: OtlpReceiver, tpch_dir: Path) -> Iterator[LocalCluster]:
    env = _env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    with LocalCluster(workers=3, data=tpch_dir, env=env, min_task_bytes=0) as local:
        yield local


def _exported(
    traced: LocalCluster, receiver: OtlpReceiver, result: QueryResult
) -> list[SpanRecord]:
    """Every span of the query's trace as the receiver got it: the spans EXPLAIN was built
    from, and every RPC span with its counterpart (a SERVER span ends last)."""
    assert result.telemetry is not None
    traced.coordinator.telemetry.flush()
    trace_id = result.telemetry.trace_id
    expected = {s.span_id for s in result.telemetry.spans}

    def complete(spans: list[SpanRecord]) -> bool:
        ours = {s.span_id: s for s in spans if s.trace_id == trace_id}
        servers = {s.parent_span_id for s in ours.values() if s.kind == SERVER}
        clients = {s.span_id for s in ours.values() if s.kind == CLIENT}
        return expected <= set(ours) and servers <= set(ours) and clients <= servers

    spans = receiver.wait_for_spans(complete, timeout=15)
    return [s for s in spans if s.trace_id == trace_id]


LIMIT_SQL = "SELECT l_orderkey, l_quantity FROM lineitem LIMIT 5"


@pytest.mark.parametrize(
    "sql",
    [tpch.query(n) for n in (1, 5, 9, 18, 21)] + [LIMIT_SQL],
    ids=["q01", "q05", "q09", "q18", "q21", "limit"],
)
def test_every_span_lies_inside_its_parent(
    traced: LocalCluster, receiver: OtlpReceiver, sql: str
) -> None:
    result = traced.execute(sql)
    spans = _exported(traced, receiver, result)
    by_id = {s.span_id: s for s in spans}
    outside = [
        f"{s.name} [{s.start_ns}, {s.end_ns}] outside {parent.name} "
        f"[{parent.start_ns}, {parent.end_ns}]"
        for s in spans
        if (parent := by_id.get(s.parent_span_id)) is not None
        and not parent.start_ns <= s.start_ns <= s.end_ns <= parent.end_ns
    ]
    assert outside == []
    orphans = [s.name for s in spans if s.parent_span_id and s.parent_span_id not in by_id]
    assert orphans == []


def test_stages_hang_from_the_query_span_linked_to_the_stages_they_read(
    traced: LocalCluster, receiver: OtlpReceiver
) -> None:
    result = traced.execute(tpch.query(5))
    spans = _exported(traced, receiver, result)
    [query] = [s for s in spans if not s.parent_span_id]
    stages = {s.attributes[c.STAGE_ID]: s for s in spans if s.name == c.SPAN_STAGE}
    assert all(s.parent_span_id == query.span_id for s in stages.values())
    for stage in result.plan.stages:
        assert set(stages[stage.stage_id].links) == {
            stages[i.stage_id].span_id for i in stage.inputs
        }
    tree = build_tree(spans, result.query_id)
    assert [s.stage_id for s in tree.stages] == [result.plan.root.stage_id]

    def depth(node: object) -> int:
        return 1 + max((depth(child) for child in node.children), default=0)  # type: ignore[attr-defined]

    assert depth(tree.stages[0]) > 2, "the EXPLAIN tree still nests stages by data flow"


def test_flight_calls_are_client_server_pairs_between_coordinator_and_workers(
    traced: LocalCluster, receiver: OtlpReceiver
) -> None:
    result = traced.execute(tpch.query(5))
    spans = _exported(traced, receiver, result)
    by_id = {s.span_id: s for s in spans}
    servers = [s for s in spans if s.kind == SERVER]
    clients = [s for s in spans if s.kind == CLIENT]
    edges: set[tuple[str, str, str]] = set()
    for server in servers:
        client = by_id[server.parent_span_id]
        assert client.kind == CLIENT, f"{server.name}'s parent is its caller's CLIENT span"
        for span in (client, server):
            assert span.attributes["rpc.system"] == "grpc"
            assert span.attributes["rpc.grpc.status_code"] == 0  # OK: required for gRPC
            assert span.attributes["rpc.service"] == "arrow.flight.protocol.FlightService"
            assert span.attributes["rpc.method"] == server.attributes["rpc.method"]
        assert client.attributes["server.address"] == "127.0.0.1"
        assert isinstance(client.attributes["server.port"], int)
        assert client.start_ns <= server.start_ns <= server.end_ns <= client.end_ns
        edges.add(
            (
                str(client.resource["service.name"]),
                str(server.resource["service.name"]),
                str(server.attributes.get("otel_dist.rpc.action", server.attributes["rpc.method"])),
            )
        )
    assert {
        ("otel-dist-coordinator", "otel-dist-worker", "submit_tasks"),
        ("otel-dist-coordinator", "otel-dist-worker", "DoGet"),
        ("otel-dist-worker", "otel-dist-worker", "DoGet"),
    } <= edges
    reads = [s for s in spans if s.name == c.SPAN_READ]
    assert reads and all(s.kind == CLIENT for s in reads)
    paired = {s.parent_span_id for s in servers}
    assert all(r.span_id in paired for r in reads), "every bucket read has its server span"
    assert all(s.kind == 1 for s in spans if s.name in (c.SPAN_STAGE, c.SPAN_TASK))
    assert len(clients) >= len(reads)


FAILING_SQL = (
    "SELECT o_orderpriority, sum(l_orderkey / (l_linenumber - l_linenumber)) AS boom "
    "FROM lineitem JOIN orders ON l_orderkey = o_orderkey GROUP BY o_orderpriority"
)


def _events(result_telemetry: object) -> dict[str, list[dict[str, object]]]:
    """Span id -> its events' attributes, from the query's OTLP request."""
    events: dict[str, list[dict[str, object]]] = {}
    for resource_spans in result_telemetry.otlp.resource_spans:  # type: ignore[attr-defined]
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                events[span.span_id.hex()] = [
                    {"name": e.name, **decode_attributes(e.attributes)} for e in span.events
                ]
    return events


def test_one_root_cause_is_an_error_and_cancelled_work_is_not(traced: LocalCluster) -> None:
    with pytest.raises(QueryError) as raised:
        traced.execute(FAILING_SQL)
    telemetry = raised.value.telemetry
    assert telemetry is not None and telemetry.otlp is not None
    spans = telemetry.spans
    events = _events(telemetry)
    by_id = {s.span_id: s for s in spans}
    tasks = [s for s in spans if s.name == c.SPAN_TASK]
    errors = [t for t in tasks if t.status_code == ERROR]
    assert errors, "the task that divided by zero is an error"
    for task in errors:
        assert task.attributes[c.TASK_STATUS] == "failed"
        assert "ivide by zero" in task.status_message
        assert task.attributes["error.type"]
        [event] = events[task.span_id]
        assert event["name"] == "exception"
        assert event["exception.type"] == task.attributes["error.type"]
        assert "ivide by zero" in str(event["exception.message"])
    for task in tasks:
        if task.status_code != ERROR:
            assert task.attributes[c.TASK_STATUS] in ("finished", "cancelled", "failed")
            assert events[task.span_id] == []
            if task.attributes[c.TASK_STATUS] == "failed":  # its upstream's failure
                assert task.attributes[c.TASK_UPSTREAM_FAILED] is True
    error_stages = {t.attributes[c.STAGE_ID] for t in errors}
    for stage in (s for s in spans if s.name == c.SPAN_STAGE):
        expected = ERROR if stage.attributes[c.STAGE_ID] in error_stages else 0
        assert stage.status_code == expected, stage.attributes[c.STAGE_ID]
    [query] = [s for s in spans if c.is_query_span(s.name, s.attributes)]
    assert query.status_code == ERROR and query.attributes["error.type"] == "QueryError"
    [event] = events[query.span_id]
    assert event["name"] == "exception" and event["exception.type"] == "QueryError"
    # A bucket read that carried the failure on has its call's gRPC status (UNKNOWN, as
    # Flight sends a server's error; CANCELLED for reads stopped by it), not an error status:
    # the failing task is the one root cause.
    codes = [s.attributes.get("rpc.grpc.status_code") for s in spans if s.name == c.SPAN_READ]
    assert codes and {2, 1} & set(codes), codes
    # Every ERROR span's ancestors up to the query are errors too.
    for span in spans:
        if span.status_code == ERROR and span.parent_span_id in by_id:
            assert by_id[span.parent_span_id].status_code == ERROR, span.name


def test_query_span_follows_the_database_conventions(
    traced: LocalCluster, receiver: OtlpReceiver
) -> None:
    result = traced.execute(tpch.query(3))
    spans = _exported(traced, receiver, result)
    [query] = [s for s in spans if not s.parent_span_id]
    assert query.name == "SELECT customer orders lineitem"
    assert query.attributes["db.query.summary"] == query.name
    assert query.attributes["db.system.name"] == "other_sql"
    assert query.attributes["db.operation.name"] == "SELECT"
    assert query.attributes["db.response.returned_rows"] == result.table.num_rows
    assert query.attributes[c.QUERY_ID] == result.query_id
    assert "db.collection.name" not in query.attributes  # three tables
    one = traced.execute("SELECT count(*) FROM nation")
    [single] = [s for s in one.telemetry.spans if c.is_query_span(s.name, s.attributes)]  # type: ignore[union-attr]
    assert single.name == "SELECT nation" and single.attributes["db.collection.name"] == "nation"
    assert {s.name for s in spans} >= {c.SPAN_STAGE, c.SPAN_TASK}


def test_resource_and_scope_follow_the_conventions(
    traced: LocalCluster, receiver: OtlpReceiver
) -> None:
    result = traced.execute(tpch.query(5))
    spans = _exported(traced, receiver, result)
    instances = set()
    for span in spans:
        resource = span.resource
        assert resource["service.namespace"] == "otel_dist"
        assert resource["service.version"] == package_version()
        assert resource["telemetry.sdk.language"] == "python"
        assert resource["telemetry.sdk.name"] == "opentelemetry"
        assert isinstance(resource["process.pid"], int)
        instances.add((resource["service.instance.id"], resource["process.pid"]))
    assert len({i for i, _ in instances}) == len(instances) == 4  # coordinator + 3 workers
    requests = receiver.trace_requests()
    scopes = {
        (ss.scope.name, ss.scope.version, ss.schema_url)
        for request in requests
        for rs in request.resource_spans
        for ss in rs.scope_spans
        if any(span.trace_id.hex() == result.telemetry.trace_id for span in ss.spans)  # type: ignore[union-attr]
    }
    assert scopes == {("otel_dist", package_version(), SCHEMA_URL)}


def test_query_summary_names_tables_in_the_order_the_sql_does() -> None:
    tables = ["supplier", "region", "customer", "orders", "lineitem", "nation"]
    assert (
        c.query_summary("SELECT", tables, tpch.query(5))
        == "SELECT customer orders lineitem supplier nation region"
    )
    sql = "-- orders first\nSELECT * FROM lineitem /* orders */ JOIN orders ON true"
    assert c.query_summary("SELECT", ["orders", "lineitem", "orders"], sql) == (
        "SELECT lineitem orders"
    )


def _replaced(error: BaseException) -> BaseException:
    """A domain error raised in place of ``error`` (``raise ... from None``)."""
    try:
        try:
            raise error
        except BaseException:
            raise RuntimeError("worker is unreachable") from None
    except RuntimeError as replaced:
        return replaced


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (None, 0),
        (flight.FlightCancelledError("stop"), 1),
        (flight.FlightServerError("boom"), 2),
        (pa.ArrowInvalid("bad ticket"), 3),
        (flight.FlightTimedOutError("late"), 4),
        (flight.FlightUnauthorizedError("no"), 7),
        (flight.FlightInternalError("bug"), 13),
        (flight.FlightUnavailableError("refused"), 14),
        (flight.FlightUnauthenticatedError("who"), 16),
        (_replaced(flight.FlightUnavailableError("refused")), 14),
        (GeneratorExit(), 1),
        (ValueError("anything else"), 2),
    ],
)
def test_grpc_status_codes_of_flight_errors(error: BaseException | None, code: int) -> None:
    assert rpc.grpc_status_code(error) == code
