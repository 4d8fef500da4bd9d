"""otel_dist's traces in a real third-party OTLP backend: Arize Phoenix (``arize-phoenix`` from
PyPI, in a virtual environment of its own so its dependencies cannot touch the project's).

``phoenix serve`` runs with its own working folder on free ports; a local cluster exports TPC-H
Q1, Q5, Q18, a LIMIT query and a failing query over OTLP/gRPC and OTLP/HTTP, and the spans
are read back through Phoenix's REST API: every span arrives in one trace per query with no
orphan, the EXPLAIN tree rebuilt from Phoenix's spans has the live tree's shape, names,
statuses, exception events and RPC attributes are as sent, every span lies inside its parent,
and the resource reached Phoenix (``openinference.project.name``, %-decoded, picks the
project). Phoenix keeps neither span kinds nor other resource attributes, so those are
checked against the project's own receiver (``test_trace_conventions.py``).

Phoenix is found at ``$OTEL_DIST_PHOENIX`` (the ``phoenix`` executable), ``/work/venvs/phoenix``
or on ``PATH``; without it the tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from otel_dist import tpch
from otel_dist.coordinator.core import QueryError, QueryTelemetry
from otel_dist.explain.build import build_tree
from otel_dist.explain.model import ExplainTree, StageNode
from otel_dist.frontend.local import LocalCluster
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.otlp import SpanRecord
from tests.support import free_port, stop, wait_until

LIMIT_SQL = "SELECT l_orderkey, l_quantity FROM lineitem LIMIT 5"
FAILING_SQL = "SELECT l_orderkey / (l_linenumber - l_linenumber) AS boom FROM lineitem"
QUERIES = {
    "q01": tpch.query(1),
    "q05": tpch.query(5),
    "q18": tpch.query(18),
    "limit": LIMIT_SQL,
    "failing": FAILING_SQL,
}
_RPC_SPAN = "arrow.flight.protocol.FlightService/"


def _phoenix_executable() -> str | None:
    candidates = [
        os.environ.get("OTEL_DIST_PHOENIX", ""),
        "/work/venvs/phoenix/bin/phoenix",
        str(Path(__file__).resolve().parent.parent / ".venv-phoenix" / "bin" / "phoenix"),
        shutil.which("phoenix") or "",
    ]
    return next((p for p in candidates if p and os.access(p, os.X_OK)), None)


@dataclass(frozen=True)
class Phoenix:
    http_port: int
    grpc_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str, **query: object) -> dict[str, object]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(query, doseq=True)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)  # type: ignore[no-any-return]

    def spans(self, project: str, trace_id: str) -> list[dict[str, object]]:
        """Every span of one trace, through ``GET /v1/projects/{project}/spans``."""
        path = f"/v1/projects/{urllib.parse.quote(project, safe='')}/spans"
        spans: list[dict[str, object]] = []
        cursor: str | None = None
        while True:
            query: dict[str, object] = {"trace_id": trace_id, "limit": 1000}
            if cursor:
                query["cursor"] = cursor
            try:
                page = self.get(path, **query)
            except urllib.error.HTTPError as error:
                if error.code == 404:  # no span of the project stored yet
                    return []
                raise
            spans += page["data"]  # type: ignore[operator]
            cursor = page.get("next_cursor")  # type: ignore[assignment]
            if not cursor:
                return spans


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    executable = _phoenix_executable()
    if executable is None:
        message = "Arize Phoenix is not installed (set OTEL_DIST_PHOENIX or see .ci/run)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = Phoenix(free_port(), free_port())
    folder = tmp_path_factory.mktemp("phoenix")
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(folder),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(server.http_port),
        "PHOENIX_GRPC_PORT": str(server.grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    for name in [n for n in env if n.startswith("OTEL_")]:
        del env[name]
    log = folder / "phoenix.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [executable, "serve"], env=env, cwd=folder, stdout=output, stderr=subprocess.STDOUT
        )
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"phoenix exited: {log.read_text()[-2000:]}")
            try:
                server.get("/v1/projects")
                return True
            except OSError:
                return False

        try:
            wait_until(up, timeout=180, what="Phoenix to answer", every=0.5)
        except AssertionError as error:
            raise AssertionError(f"{error}; its log ends: {log.read_text()[-2000:]}") from None
        yield server
    finally:
        stop(process)


def _record(span: dict[str, object]) -> SpanRecord:
    """A span as Phoenix returns it, as otel_dist reads spans (times in microseconds)."""
    context = span["context"]
    assert isinstance(context, dict)

    def ns(value: object) -> int:
        return int(datetime.fromisoformat(str(value)).timestamp() * 1_000_000) * 1000

    return SpanRecord(
        name=str(span["name"]),
        trace_id=context["trace_id"],
        span_id=context["span_id"],
        parent_span_id=str(span.get("parent_id") or ""),
        start_ns=ns(span["start_time"]),
        end_ns=ns(span["end_time"]),
        attributes=dict(span["attributes"]),  # type: ignore[call-overload]
        resource={},
        status_code={"UNSET": 0, "OK": 1, "ERROR": 2}[str(span["status_code"])],
        events=tuple(e["name"] for e in span["events"]),  # type: ignore[attr-defined]
        status_message=str(span.get("status_message") or ""),
    )


def _shape(tree: ExplainTree) -> object:
    """What an EXPLAIN tree shows, but the times (Phoenix keeps microseconds)."""

    def stage(node: StageNode) -> object:
        return (
            node.stage_id,
            node.task_count,
            node.kind,
            [
                (t.task_index, t.worker, t.status, t.error, t.rows, [o.name for o in t.operators])
                for t in node.tasks
            ],
            [stage(child) for child in node.children],
        )

    return (
        tree.query_id,
        tree.status,
        tree.error,
        tree.output_rows,
        [stage(s) for s in tree.stages],
    )


def _rpc_spans_expected(telemetry: QueryTelemetry) -> int:
    """The CLIENT/SERVER spans EXPLAIN does not use: a DoAction pair per worker submitted to
    and per telemetry fetch, and the server span of every bucket read."""
    spans = telemetry.spans
    workers = {s.attributes[c.WORKER_URL] for s in spans if s.name == c.SPAN_TASK}
    reads = sum(s.name == c.SPAN_READ for s in spans)
    return 2 * len(workers) + 2 * len(telemetry.fetched_tasks) + reads


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_phoenix_stores_every_query_as_sent(
    phoenix: Phoenix, tpch_dir: Path, protocol: str
) -> None:
    project = f"otel dist {protocol.split('/')[0]}"
    port = phoenix.grpc_port if protocol == "grpc" else phoenix.http_port
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_RESOURCE_ATTRIBUTES": "openinference.project.name=" + urllib.parse.quote(project),
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRICS_EXPORTER": "none",
    }
    with LocalCluster(workers=3, data=tpch_dir, env=env, min_task_bytes=0) as local:
        outcomes: dict[str, QueryTelemetry] = {}
        for name, sql in QUERIES.items():
            try:
                result = local.execute(sql)
                assert name != "failing"
                telemetry = result.telemetry
            except QueryError as error:
                assert name == "failing", error
                telemetry = error.telemetry
            assert telemetry is not None
            outcomes[name] = telemetry
        local.coordinator.telemetry.flush()
    for name, telemetry in outcomes.items():
        expected = len(telemetry.spans) + _rpc_spans_expected(telemetry)

        def arrived(trace_id: str = telemetry.trace_id, count: int = expected) -> list[dict]:
            spans = phoenix.spans(project, trace_id)
            ids = {s["context"]["span_id"] for s in spans}  # type: ignore[index]
            parents = {s.get("parent_id") for s in spans} - {None}
            return spans if len(spans) >= count and parents <= ids else []

        try:
            stored = wait_until(arrived, timeout=30, what=f"the {expected} spans of {name}")
        except AssertionError:
            stored = phoenix.spans(project, telemetry.trace_id)  # the asserts below say why
        if name != "failing":  # a failing query's reads may end anywhere
            assert len(stored) == expected, name
        records = [_record(s) for s in stored]
        by_id = {s.span_id: s for s in records}
        assert len(by_id) == len(records), "no span twice"
        [root] = [s for s in records if not s.parent_span_id]
        orphans = [s.name for s in records if s is not root and s.parent_span_id not in by_id]
        assert orphans == [], name
        for span in records:
            parent = by_id.get(span.parent_span_id)
            if parent is not None:
                assert parent.start_ns <= span.start_ns <= span.end_ns <= parent.end_ns, (
                    f"{name}: {span.name} outside {parent.name}"
                )
        live = build_tree(telemetry.spans, telemetry.query_id)
        assert _shape(build_tree(records, telemetry.query_id)) == _shape(live), name
        assert root.attributes[c.QUERY_ID] == telemetry.query_id
        assert root.name == root.attributes["db.query.summary"]
        assert root.attributes["db.system.name"] == "other_sql"
        tasks = [s for s in records if s.name == c.SPAN_TASK]
        stages = [s for s in records if s.name == c.SPAN_STAGE]
        assert len(tasks) == sum(s.task_count for s in live.all_stages())
        assert len(stages) == len(live.all_stages())
        operators = [s for s in records if c.OPERATOR_NAME in s.attributes]
        assert {s.name for s in operators} == {s.attributes[c.OPERATOR_NAME] for s in operators}
        rpc = [s for s in records if s.name.startswith(_RPC_SPAN)]
        assert all(s.attributes["rpc.system"] == "grpc" for s in rpc)
        assert all(s.attributes["rpc.system"] == "grpc" for s in records if s.name == c.SPAN_READ)
        errors = [s for s in records if s.status_code == 2]
        if name == "failing":
            assert live.status == "error" and root in errors
            assert root.events == ("exception",) and root.attributes["error.type"]
            failed = [s for s in tasks if s.status_code == 2]
            assert failed and all(s.events == ("exception",) for s in failed)
            lone = [
                f"{s.name} under {by_id[s.parent_span_id].name}"
                for s in errors
                if s is not root and by_id[s.parent_span_id].status_code != 2
            ]
            assert lone == [], "an error's ancestors are errors"
        else:
            assert errors == [] and live.status == "ok", name
