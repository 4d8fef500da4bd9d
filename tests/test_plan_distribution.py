"""Which TPC-H queries the planner distributes, and that their join and aggregate work runs in
stages of more than one task. Single-task stages are allowed only for the final ordered merge
or limit, the final step of a global aggregate, and scans of single-file tables."""

from __future__ import annotations

import pytest

from otel_dist import tpch
from otel_dist.coordinator.local import LocalCluster
from otel_dist.planner.model import DistributedPlan, Stage

# Queries that still run through the single-task fallback, with the reason they do. The test
# fails when one of them starts distributing, so the list stays true.
FALLBACK = {
    7: "stage SQL does not re-plan",  # DataFusion's unparser loses the n1/n2 aliases
    11: "subquery expressions",
    15: "subquery expressions",
    21: "stage SQL does not re-plan",  # the unparser loses the l2/l3 subquery aliases
    22: "subquery expressions",
}


def _allowed_single_task(plan: DistributedPlan, stage: Stage) -> bool:
    if stage.kind == "merge":
        return True
    if stage.kind == "final aggregate":
        upstream = plan.stage(stage.inputs[0].stage_id)
        return upstream.output.kind == "single"
    if stage.file_scan is not None:
        return sum(len(group) for group in stage.file_scan.groups) == 1
    return False


@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_query_distribution(cluster: LocalCluster, number: int) -> None:
    plan = cluster.plan(tpch.query(number))
    if number in FALLBACK:
        assert plan.strategy == "fallback"
        assert FALLBACK[number] in (plan.root.fallback_reason or "")
        return
    assert plan.strategy != "fallback", plan.root.fallback_reason
    assert not any(stage.is_fallback for stage in plan.stages)
    for stage in plan.stages:
        if stage.task_count == 1:
            assert _allowed_single_task(plan, stage), f"stage {stage.stage_id} ({stage.kind})"
    work = [s for s in plan.stages if s.kind.startswith(("partial aggregate", "scan"))]
    assert work and all(stage.task_count > 1 for stage in work)


def test_broadcast_join_stage_names_its_fact_and_broadcast_tables(cluster: LocalCluster) -> None:
    plan = cluster.plan(tpch.query(3))
    explain = plan.describe()
    assert "fact lineitem" in explain and "broadcast customer, orders" in explain
    assert "broadcast scan" in explain and "output=broadcast" in explain
