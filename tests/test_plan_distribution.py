"""Every TPC-H query is distributed: its join and aggregate work runs in stages of more than
one task, with broadcast joins (default threshold) and with hash-shuffled joins (threshold 0).

Single-task stages are allowed only where the plan gathers on purpose: the final ordered merge
or limit, the final step of a global aggregate and windows without PARTITION BY (stages that
read only gathered inputs), and stages over a table stored in one file."""

from __future__ import annotations

import pytest

from otel_dist import tpch
from otel_dist.coordinator.local import LocalCluster
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.distribute import Planner, PlannerOptions
from otel_dist.planner.model import DistributedPlan, Stage


def _allowed_single_task(plan: DistributedPlan, stage: Stage) -> bool:
    if stage.file_scan is not None:
        return sum(len(group) for group in stage.file_scan.groups) == 1
    return any(plan.stage(i.stage_id).output.kind == "single" for i in stage.inputs)


def check_distributed(plan: DistributedPlan) -> None:
    assert plan.strategy != "fallback", plan.root.fallback_reason
    assert not any(stage.is_fallback for stage in plan.stages)
    for stage in plan.stages:
        if stage.task_count == 1:
            assert _allowed_single_task(plan, stage), (
                f"stage {stage.stage_id} ({stage.kind}) runs in one task\n{plan.describe()}"
            )
    work = [s for s in plan.stages if "join" in s.kind or "aggregate" in s.kind]
    assert work and any(stage.task_count > 1 for stage in work)


@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_query_is_distributed_with_broadcast_joins(cluster: LocalCluster, number: int) -> None:
    check_distributed(cluster.plan(tpch.query(number)))


@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_query_is_distributed_with_shuffle_joins(
    shuffle_cluster: LocalCluster, number: int
) -> None:
    plan = shuffle_cluster.plan(tpch.query(number))
    check_distributed(plan)
    joins = [s for s in plan.stages if "join" in s.kind]
    for stage in joins:
        if stage.task_count == 1:
            continue  # over gathered inputs or a one-file table, checked above
        assert stage.file_scan is None or any(
            plan.stage(i.stage_id).output.kind == "broadcast" for i in stage.inputs
        ), f"stage {stage.stage_id} joins file groups without an exchange"


def test_explain_names_the_broadcast_side_and_its_size(cluster: LocalCluster) -> None:
    explain = cluster.plan(tpch.query(3)).describe()
    assert "output=broadcast" in explain
    assert "why: " in explain and "broadcast customer: ~" in explain
    assert "≤ threshold 64.0 MB" in explain


def test_explain_names_the_shuffle_keys(shuffle_cluster: LocalCluster) -> None:
    plan = shuffle_cluster.plan(tpch.query(4))
    explain = plan.describe()
    assert "shuffle join on orders.o_orderkey = __correlated_sq_1.l_orderkey" in explain
    hashed = {s.output.keys for s in plan.stages if s.output.kind == "hash"}
    assert ("o_orderkey",) in hashed and ("l_orderkey",) in hashed
    assert "output=broadcast" not in explain


def test_threshold_between_two_tables_broadcasts_only_the_smaller(cluster: LocalCluster) -> None:
    """Sizes come from parquet metadata of the projected columns: a threshold just above
    customer's broadcasts customer and shuffles orders with lineitem (Q3)."""
    catalog = Catalog.from_folder(cluster.data)
    customer = catalog.column_bytes("customer", ["c_custkey", "c_mktsegment"])
    orders = catalog.column_bytes("orders", ["o_orderkey", "o_custkey", "o_orderdate"])
    assert 0 < customer < orders
    planner = Planner(catalog, PlannerOptions(3, broadcast_threshold=customer))
    plan = planner.plan(tpch.query(3))
    explain = plan.describe()
    assert "broadcast customer" in explain
    assert "shuffle join on orders.o_orderkey = lineitem.l_orderkey" in explain


def test_aggregate_on_the_join_key_runs_where_the_join_put_the_rows(
    shuffle_cluster: LocalCluster,
) -> None:
    """Q18's IN-subquery aggregates lineitem by l_orderkey, the key the join shuffles on: the
    aggregate, the semi join and the outer aggregate share one stage, with no extra shuffle."""
    plan = shuffle_cluster.plan(tpch.query(18))
    assert "co-located join" in plan.strategy
    explain = plan.describe()
    assert "join in place: both sides are hash-partitioned on orders.o_orderkey" in explain
