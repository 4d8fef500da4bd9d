"""Query shapes beyond TPC-H (aggregates, outer/semi/anti/self joins, windows, unions, empty
results, limits) checked against single-node DataFusion with broadcast and with shuffled
joins, and checks that they really run as multi-task stages rather than the fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_dist import tpch
from otel_dist.frontend.local import LocalCluster
from tests.oracle import assert_same_rows, has_order_by, single_node

SHAPES = {
    "grouped_aggregates": (
        "select l_returnflag, l_linestatus, sum(l_quantity) q, avg(l_discount) d, min(l_tax) mn,"
        " max(l_shipdate) mx, count(*) c, count(l_comment) cc from lineitem"
        " group by l_returnflag, l_linestatus"
    ),
    "group_by_expression": (
        "select extract(year from o_orderdate) y, count(*) c, avg(o_totalprice) p from orders"
        " group by extract(year from o_orderdate) order by y"
    ),
    "having_order_limit": (
        "select o_custkey, count(*) n, sum(o_totalprice) t from orders group by o_custkey"
        " having count(*) > 15 order by t desc, o_custkey limit 7"
    ),
    "global_aggregate": "select count(*), sum(l_extendedprice), avg(l_quantity) from lineitem",
    "global_aggregate_empty_input": (
        "select count(*) c, sum(l_quantity) s, avg(l_quantity) a from lineitem where l_quantity < 0"
    ),
    "float_average": "select avg(cast(l_quantity as double)) a, sum(cast(l_tax as double)) t from lineitem",
    "filtered_scan": "select o_orderkey, o_totalprice from orders where o_totalprice > 450000",
    "top_k": "select o_orderkey, o_totalprice from orders order by o_totalprice desc, o_orderkey limit 5",
    "top_k_offset": (
        "select c_custkey, c_name from customer order by c_custkey desc limit 4 offset 3"
    ),
    "order_by_hidden_column": "select c_name from customer order by c_acctbal desc, c_custkey limit 3",
    "count_distinct_grouped": (
        "select l_returnflag, count(distinct l_suppkey) as n, sum(l_quantity) as q"
        " from lineitem group by 1 order by n desc, l_returnflag"
    ),
    "count_distinct": "select count(distinct l_suppkey) from lineitem",
    "left_join_null_extended": (
        "select c_custkey, c_name, o_orderkey from customer left join orders"
        " on c_custkey = o_custkey and o_totalprice > 400000"
    ),
    "left_join_counts_unmatched": (
        "select count(*) as n, count(o_orderkey) as matched from customer"
        " left join orders on c_custkey = o_custkey"
    ),
    "right_join": (
        "select n_name, r_name from nation right join region on n_regionkey = r_regionkey"
        " and n_name like 'A%'"
    ),
    "anti_join": (
        "select c_custkey from customer where not exists"
        " (select 1 from orders where o_custkey = c_custkey)"
    ),
    "semi_join_aggregate": (
        "select o_orderpriority, count(*) as n from orders where exists (select 1 from lineitem"
        " where l_orderkey = o_orderkey and l_commitdate < l_receiptdate) group by 1"
    ),
    "self_join": (
        "select a.n_name, b.n_name as other from nation a join nation b"
        " on a.n_regionkey = b.n_regionkey and a.n_nationkey < b.n_nationkey"
    ),
    "join_grouped_by_two_tables": (
        "select n_name, o_orderstatus, count(*) as n, sum(o_totalprice) as total"
        " from orders join customer on o_custkey = c_custkey"
        " join nation on c_nationkey = n_nationkey group by n_name, o_orderstatus"
        " order by total desc limit 10"
    ),
    "window_rank": (
        "select o_custkey, o_orderkey, rank() over (partition by o_custkey"
        " order by o_totalprice desc, o_orderkey) as r from orders where o_custkey < 200"
    ),
    "window_running_sum": (
        "select o_orderkey, sum(o_totalprice) over (order by o_orderkey) as running"
        " from orders where o_orderkey < 2000"
    ),
    "union_all": ("select n_name as name from nation union all select r_name from region"),
    "union_distinct": "select n_regionkey as k from nation union select r_regionkey from region",
    "empty_result": "select * from orders where o_totalprice < 0",
    "empty_join_aggregate": (
        "select c_mktsegment, count(*) from customer join orders on c_custkey = o_custkey"
        " where o_totalprice < 0 group by c_mktsegment"
    ),
    "grouped_nulls": (
        "select case when o_orderkey % 3 = 0 then null else o_orderstatus end s, count(*) c"
        " from orders group by 1"
    ),
    "non_equi_join": (
        "select o_orderpriority, count(*) c from orders o join nation n"
        " on n.n_nationkey < o.o_custkey % 25 group by 1"
    ),
    "cross_join": "select n_name, r_name from nation cross join region",
    "full_join": (
        "select count(*) c, count(c_custkey) cc, count(o_orderkey) oc from customer"
        " full join (select * from orders where o_orderkey < 2000) o on c_custkey = o_custkey"
    ),
    "join_with_aggregated_subquery": (
        "select c_name, t.total from customer left join (select o_custkey, sum(o_totalprice)"
        " total from orders group by o_custkey) t on c_custkey = t.o_custkey"
        " order by c_name limit 20"
    ),
    "scalar_subquery": (
        "select count(*) c from lineitem where l_quantity > (select avg(l_quantity) from lineitem)"
    ),
    "in_subquery": (
        "select count(*) c from orders where o_custkey in"
        " (select c_custkey from customer where c_acctbal > 9000)"
    ),
    "window_over_join": (
        "select c_name, o_orderkey, row_number() over (partition by c_custkey"
        " order by o_orderdate, o_orderkey) rn from customer join orders on c_custkey = o_custkey"
        " where c_custkey < 20"
    ),
    "union_all_aggregate": (
        "select k, count(*) c from (select l_orderkey k from lineitem union all"
        " select o_orderkey from orders) group by k order by 2 desc, 1 limit 5"
    ),
    "intersect": "select c_nationkey from customer intersect select s_nationkey from supplier",
    "not_in_with_nulls": (
        "select count(*) c from orders where o_custkey not in (select case when c_custkey % 7 = 0"
        " then null else c_custkey end from customer where c_custkey < 50)"
    ),
    "not_in": "select count(*) c from customer where c_custkey not in (select o_custkey from orders)",
    "rollup": (
        "select l_returnflag, l_linestatus, count(*) c, sum(l_quantity) q, avg(l_tax) t,"
        " grouping(l_linestatus) g from lineitem group by rollup(l_returnflag, l_linestatus)"
    ),
    "cube_over_nulls": (
        "select s, p, count(*) c, max(o_totalprice) m, grouping(s) gs from (select case when"
        " o_orderkey % 5 = 0 then null else o_orderstatus end s, o_orderpriority p,"
        " o_totalprice from orders) group by cube(s, p)"
    ),
    "grouping_sets_ranked": (
        "select n_name, r_name, sum(s_acctbal) b, grouping(n_name) + grouping(r_name) h,"
        " rank() over (partition by grouping(n_name) + grouping(r_name) order by sum(s_acctbal)"
        " desc) rk from supplier join nation on s_nationkey = n_nationkey"
        " join region on n_regionkey = r_regionkey group by grouping sets ((n_name), (r_name), ())"
    ),
    "intersect_with_nulls": (
        "select case when c_custkey % 4 = 0 then null else c_nationkey end k from customer"
        " intersect select case when s_suppkey % 3 = 0 then null else s_nationkey end from supplier"
    ),
    "except_with_nulls": (
        "select case when c_custkey % 4 = 0 then null else c_mktsegment end k from customer"
        " except select case when o_orderkey % 2 = 0 then null else o_orderpriority end"
        " from orders"
    ),
    "exists_under_or": (
        "select count(*) c from customer where c_acctbal > 9000 or exists (select 1 from orders"
        " where o_custkey = c_custkey and o_totalprice > 300000) or c_custkey in"
        " (select case when o_orderkey % 3 = 0 then null else o_custkey end from orders"
        " where o_orderstatus = 'P')"
    ),
    "not_exists_under_or": (
        "select count(*) c from customer where c_acctbal < 0 or not exists"
        " (select 1 from orders where o_custkey = c_custkey)"
    ),
    "computed_above_order_by": (
        "select c_custkey * 2 as k, upper(c_name) n from customer order by c_acctbal desc,"
        " c_custkey limit 6"
    ),
    "multi_relation_aggregate_joined": (
        "select t.n_name, t.o_orderstatus, t.total, r_name from (select n_name, n_regionkey,"
        " o_orderstatus, sum(o_totalprice) total from orders join customer on o_custkey ="
        " c_custkey join nation on c_nationkey = n_nationkey group by n_name, n_regionkey,"
        " o_orderstatus) t join region on t.n_regionkey = r_regionkey"
    ),
}


@pytest.mark.parametrize("name", SHAPES)
def test_shape_matches_single_node(cluster: LocalCluster, tpch_dir: Path, name: str) -> None:
    sql = SHAPES[name]
    assert_same_rows(cluster.sql(sql), single_node(tpch_dir, sql), ordered=has_order_by(sql))


@pytest.mark.parametrize("name", SHAPES)
def test_shape_with_shuffle_joins_matches_single_node(
    shuffle_cluster: LocalCluster, tpch_dir: Path, name: str
) -> None:
    sql = SHAPES[name]
    actual = shuffle_cluster.sql(sql)
    assert_same_rows(actual, single_node(tpch_dir, sql), ordered=has_order_by(sql))


def test_limit_without_order_returns_requested_row_count(cluster: LocalCluster) -> None:
    assert cluster.sql("select l_orderkey from lineitem limit 17").num_rows == 17
    joined = "select c_name, o_orderkey from customer join orders on c_custkey = o_custkey limit 13"
    assert cluster.sql(joined).num_rows == 13


@pytest.mark.parametrize("number", [1, 6])
def test_single_table_aggregates_have_multi_task_stages(cluster: LocalCluster, number: int) -> None:
    plan = cluster.plan(tpch.query(number))
    assert plan.strategy == "two-phase aggregate"
    leaf = plan.stages[0]
    assert leaf.file_scan is not None and leaf.file_scan.table_name == "lineitem"
    assert leaf.task_count > 1, "the scan and partial aggregate must run in several tasks"
    assert not any(stage.is_fallback for stage in plan.stages)


def test_grouped_aggregate_shuffles_into_parallel_final_tasks(cluster: LocalCluster) -> None:
    plan = cluster.plan(tpch.query(1))
    partial, final = plan.stages[0], plan.stages[1]
    assert partial.output.kind == "hash"
    assert partial.output.keys == ("l_returnflag", "l_linestatus")
    assert final.task_count == partial.output.buckets == 3


@pytest.mark.parametrize(
    "name",
    [
        "rollup",
        "cube_over_nulls",
        "grouping_sets_ranked",
        "intersect",
        "intersect_with_nulls",
        "except_with_nulls",
        "exists_under_or",
        "not_exists_under_or",
        "computed_above_order_by",
        "multi_relation_aggregate_joined",
    ],
)
def test_shapes_once_in_the_fallback_are_distributed(cluster: LocalCluster, name: str) -> None:
    """Grouping sets, NULL-matching joins, mark joins, computed columns over a sort and joins
    over aggregates grouped by several relations all ran as the single-task fallback once."""
    plan = cluster.plan(SHAPES[name])
    assert not any(stage.is_fallback for stage in plan.stages), plan.describe()
    assert any(stage.task_count > 1 for stage in plan.stages), plan.describe()


def test_stages_travel_as_substrait_or_as_sql_where_substrait_cannot_nest(
    cluster: LocalCluster, tpch_dir: Path
) -> None:
    """Substrait's decoder nests at most 100 protobuf levels (about 30 nested operators of one
    expression): such a stage ships SQL text instead, and the query stays distributed."""
    plain = cluster.plan(SHAPES["grouped_aggregates"])
    assert all(stage.plan and not stage.is_fallback for stage in plain.stages)
    chain = " + ".join(["n_nationkey"] * 40)
    sql = f"select n_regionkey, sum({chain}) s from nation group by n_regionkey"
    plan = cluster.plan(sql)
    assert not any(stage.is_fallback for stage in plan.stages)
    as_sql = [stage for stage in plan.stages if not stage.plan]
    assert as_sql and all(stage.sql.startswith("SELECT") for stage in as_sql)
    assert_same_rows(cluster.sql(sql), single_node(tpch_dir, sql), ordered=False)


def test_fallback_is_marked_with_its_reason(cluster: LocalCluster) -> None:
    plan = cluster.plan(SHAPES["not_in_with_nulls"])
    assert plan.strategy == "fallback"
    assert plan.root.task_count == 1
    assert "NOT IN over nullable keys is not distributed yet" in (plan.root.fallback_reason or "")
    assert all(stage.task_count > 1 for stage in plan.stages[:-1])


def test_window_shuffles_on_its_partition_key(cluster: LocalCluster) -> None:
    plan = cluster.plan(SHAPES["window_rank"])
    assert plan.strategy == "window shuffle"
    window = next(stage for stage in plan.stages if "window" in stage.kind)
    assert window.task_count == 3
    upstream = plan.stage(window.inputs[0].stage_id)
    assert upstream.output.kind == "hash" and upstream.output.keys == ("o_custkey",)
    assert "shuffle on the PARTITION BY column orders.o_custkey" in plan.describe()


def test_window_without_partition_by_runs_in_one_task(cluster: LocalCluster) -> None:
    plan = cluster.plan(SHAPES["window_running_sum"])
    window = next(stage for stage in plan.stages if "window" in stage.kind)
    assert window.task_count == 1
    assert "a window without a shared PARTITION BY runs in one task" in plan.describe()


def test_union_all_runs_per_bucket(shuffle_cluster: LocalCluster) -> None:
    plan = shuffle_cluster.plan(SHAPES["union_all"])
    union = next(stage for stage in plan.stages if "union" in stage.kind)
    assert union.task_count == 3 and len(union.inputs) == 2
    assert all(plan.stage(i.stage_id).output.kind == "hash" for i in union.inputs)


def test_aggregate_that_does_not_split_shuffles_its_rows(cluster: LocalCluster) -> None:
    sql = "select l_returnflag, median(l_quantity) as m from lineitem group by l_returnflag"
    plan = cluster.plan(sql)
    assert plan.strategy == "shuffled aggregate"
    assert plan.stages[0].output.keys == ("l_returnflag",)
    assert plan.stages[1].kind == "aggregate" and plan.stages[1].task_count == 3
    assert_same_rows(cluster.sql(sql), single_node(Path(cluster.data), sql), ordered=False)


def test_count_distinct_runs_as_nested_two_phase_aggregates(cluster: LocalCluster) -> None:
    """DataFusion plans COUNT(DISTINCT) as an aggregate over an aggregate: the outer partial
    aggregate runs inside the inner final stage, which shuffles again."""
    plan = cluster.plan(
        "select l_returnflag, count(distinct l_suppkey) as n from lineitem group by 1"
    )
    assert plan.strategy == "two-phase aggregate"
    kinds = [(stage.kind, stage.task_count, stage.output.kind) for stage in plan.stages]
    assert kinds == [
        ("scan + partial aggregate", 3, "hash"),
        ("final aggregate + partial aggregate", 3, "hash"),
        ("final aggregate", 3, "single"),
    ]
