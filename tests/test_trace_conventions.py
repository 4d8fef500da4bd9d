"""otel_dist's traces as OpenTelemetry backends read them (Jaeger, Tempo, Phoenix): sampling
never thins EXPLAIN ANALYZE, every span lies inside its parent's time, span kinds and RPC
attributes pair coordinator and workers, resource, scope and database conventions, and
failure semantics; checked on spans exported to the project's own OTLP receiver."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_dist.coordinator.local import LocalCluster
from otel_dist.explain.build import build_tree
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.otlp import SpanRecord
from otel_dist.telemetry.setup import SAMPLERS, TelemetryConfig, _sampler
from otel_dist.testing.otlp_receiver import OtlpReceiver

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


def _ours(spans: list[SpanRecord], query_id: str) -> list[SpanRecord]:
    return [s for s in spans if s.attributes.get(c.QUERY_ID) == query_id]


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
    exported = _ours(receiver.spans(), result.query_id)
    if sampler in ("always_on", "parentbased_always_on"):
        assert len(exported) == len(spans)
    else:
        assert exported == []


def test_unknown_sampler_is_named_in_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    config = TelemetryConfig.from_env("x", {"OTEL_TRACES_SAMPLER": "always_maybe"})
    with caplog.at_level("WARNING"):
        sampler = _sampler(config)
    assert "ParentBased" in sampler.get_description()
    [record] = [r for r in caplog.records if "OTEL_TRACES_SAMPLER" in r.getMessage()]
    assert "always_maybe" in record.getMessage() and "\n" not in record.getMessage()
