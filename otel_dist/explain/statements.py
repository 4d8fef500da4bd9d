"""``EXPLAIN`` and ``EXPLAIN ANALYZE`` on top of the coordinator, for every front end.

``EXPLAIN <sql>`` shows the distributed plan without running it; ``EXPLAIN ANALYZE <sql>``
runs the query and shows the tree built from its spans (``EXPLAIN ANALYZE VERBOSE`` adds every
task's own operator tree). As SQL statements both return a two-column table
(``plan_type``, ``plan``) like DataFusion's own EXPLAIN, one row per line of text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from otel_dist.explain.build import build_tree
from otel_dist.explain.html import render_html
from otel_dist.explain.json_tree import tree_to_dict
from otel_dist.explain.model import ExplainTree
from otel_dist.explain.text import render_text
from otel_dist.settings import read
from otel_dist.telemetry.otlp import SpanRecord

TRACE_URL_VARIABLE = "OTEL_DIST_TRACE_URL"

_EXPLAIN = re.compile(
    r"^\s*explain\s+(?P<analyze>analyze\s+)?(?P<verbose>verbose\s+)?(?P<body>.+)$",
    re.IGNORECASE | re.DOTALL,
)


class _Runs(Protocol):
    """What this module needs of a coordinator (or a local cluster)."""

    def execute(self, sql: str, query_id: str | None = None) -> Any: ...

    def plan(self, sql: str) -> Any: ...


class TelemetryUnavailable(RuntimeError):
    """EXPLAIN ANALYZE needs telemetry, and it is switched off."""


@dataclass(frozen=True)
class ExplainRequest:
    """An EXPLAIN statement taken apart."""

    analyze: bool
    verbose: bool
    sql: str


def parse_explain(sql: str) -> ExplainRequest | None:
    """The EXPLAIN request in ``sql``, or None for any other statement."""
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    match = _EXPLAIN.match(body)
    if match is None:
        return None
    return ExplainRequest(bool(match["analyze"]), bool(match["verbose"]), match["body"].strip())


def trace_url_template() -> str | None:
    return read(TRACE_URL_VARIABLE)


@dataclass
class ExplainAnalysis:
    """A query that ran, with its distributed EXPLAIN ANALYZE tree."""

    tree: ExplainTree
    table: pa.Table | None
    spans: list[SpanRecord]

    def text(self, verbose: bool = False) -> str:
        return render_text(self.tree, verbose=verbose, trace_url_template=trace_url_template())

    def to_dict(self) -> dict[str, Any]:
        return tree_to_dict(self.tree)

    def html(self) -> str:
        return render_html(self.tree, trace_url_template())


def analysis_of(query_id: str, telemetry: Any, table: pa.Table | None) -> ExplainAnalysis:
    """The analysis of a query from its collected telemetry (a ``QueryTelemetry``)."""
    if telemetry is None:
        raise TelemetryUnavailable(
            "EXPLAIN ANALYZE needs telemetry, which is off (OTEL_DIST_TELEMETRY=off)"
        )
    return ExplainAnalysis(build_tree(telemetry.spans, query_id), table, telemetry.spans)


def explain_analyze(runner: _Runs, sql: str) -> ExplainAnalysis:
    """Run ``sql`` and return its analysis; a failed query raises its ``QueryError`` with the
    partial analysis attached as ``error.analysis``."""
    try:
        result = runner.execute(sql)
    except Exception as error:
        later = getattr(error, "later", None)
        if later is not None:  # a QueryError, whose telemetry is completed in the background
            later("analysis", lambda failed=error: _partial_analysis(failed))
        else:
            analysis = _partial_analysis(error)
            if analysis is not None:
                error.analysis = analysis  # type: ignore[attr-defined]
        raise
    return analysis_of(result.query_id, result.telemetry, result.table)


def _partial_analysis(error: BaseException) -> ExplainAnalysis | None:
    """The analysis of what a failed query ran, from the telemetry its error carries."""
    telemetry = getattr(error, "telemetry", None)
    if telemetry is None or not telemetry.spans:
        return None
    return analysis_of(telemetry.query_id, telemetry, None)


def run_sql(runner: _Runs, sql: str) -> pa.Table:
    """Run any statement: EXPLAIN [ANALYZE] [VERBOSE] returns its text as a plan table."""
    request = parse_explain(sql)
    if request is None:
        return runner.execute(sql).table
    if not request.analyze:
        return plan_table("distributed_plan", runner.plan(request.sql).describe())
    analysis = explain_analyze(runner, request.sql)
    return plan_table("explain_analyze", analysis.text(verbose=request.verbose))


def plan_table(plan_type: str, text: str) -> pa.Table:
    lines = text.splitlines()
    return pa.table({"plan_type": [plan_type] * len(lines), "plan": lines})
