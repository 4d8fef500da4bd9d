"""Every TPC-H query is distributed: its join and aggregate work runs in stages of more than
one task, with broadcast joins (default threshold) and with hash-shuffled joins (threshold 0).

Single-task stages are allowed only where the plan gathers on purpose: the final ordered merge
or limit, the final step of a global aggregate and windows without PARTITION BY (stages that
read only gathered inputs), stages over a table stored in one file, and scans of fewer bytes
than two tasks' worth (``min_task_bytes``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datafusion import col, lit
from datafusion.substrait import Serde

from otel_dist import tpch
from otel_dist.coordinator.scheduler import assign, task_specs
from otel_dist.frontend.local import LocalCluster
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.distribute import DEFAULT_MIN_TASK_BYTES, Planner, PlannerOptions
from otel_dist.planner.joins import LOCAL_SCAN_BYTES
from otel_dist.planner.model import DistributedPlan, Stage
from otel_dist.protocol import ROW_ID_COLUMN
from tests.oracle import assert_same_rows, single_node


def _allowed_single_task(plan: DistributedPlan, stage: Stage, min_task_bytes: int) -> bool:
    if stage.file_scan is not None:
        files = sum(len(group) for group in stage.file_scan.groups)
        return files == 1 or stage.file_scan.scan_bytes < 2 * min_task_bytes
    return any(plan.stage(i.stage_id).output.kind == "single" for i in stage.inputs)


def check_distributed(plan: DistributedPlan, min_task_bytes: int = 0) -> None:
    assert plan.strategy != "fallback", plan.root.fallback_reason
    assert not any(stage.is_fallback for stage in plan.stages)
    for stage in plan.stages:
        if stage.task_count == 1:
            assert _allowed_single_task(plan, stage, min_task_bytes), (
                f"stage {stage.stage_id} ({stage.kind}) runs in one task\n{plan.describe()}"
            )
    work = [s for s in plan.stages if "join" in s.kind or "aggregate" in s.kind]
    assert work
    if min_task_bytes == 0:  # otherwise small data may rightly run in single tasks (Q6)
        assert any(stage.task_count > 1 for stage in work)


@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_query_is_distributed_with_broadcast_joins(cluster: LocalCluster, number: int) -> None:
    check_distributed(cluster.plan(tpch.query(number)))


@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_query_is_distributed_with_default_settings(
    default_cluster: LocalCluster, number: int
) -> None:
    check_distributed(default_cluster.plan(tpch.query(number)), DEFAULT_MIN_TASK_BYTES)


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
        # File groups join without an exchange only on a key their files hold in disjoint
        # ranges (orders and lineitem on the order key).
        assert (
            stage.file_scan is None
            or "join in place on" in stage.strategy
            or any(plan.stage(i.stage_id).output.kind == "broadcast" for i in stage.inputs)
        ), f"stage {stage.stage_id} joins file groups without an exchange"


def _self_joins(stage: Stage) -> tuple[bool, int]:
    """Whether the stage's Substrait plan reads an input numbered by row (one of several
    tables' columns), and how many of its joins join a table with itself."""
    document = json.loads(Serde.deserialize_bytes(stage.plan).to_json())
    numbered = False
    self_joins = 0

    def tables(node: object) -> set[str]:
        if isinstance(node, dict):
            found = set()
            if "namedTable" in node:
                found.add(".".join(node["namedTable"]["names"]))
            for value in node.values():
                found |= tables(value)
            return found
        if isinstance(node, list):
            return set().union(*(tables(item) for item in node)) if node else set()
        return set()

    def walk(node: object) -> None:
        nonlocal numbered, self_joins
        if isinstance(node, dict):
            if ROW_ID_COLUMN in node.get("baseSchema", {}).get("names", []):
                numbered = True
            join = node.get("join")
            if join is not None and tables(join["left"]) & tables(join["right"]):
                self_joins += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    return numbered, self_joins


@pytest.mark.parametrize("number", [2, 9, 10, 18], ids=lambda n: f"q{n:02d}")
def test_an_input_of_several_tables_is_read_once_not_joined_with_itself(
    shuffle_cluster: LocalCluster, tpch_dir: Path, number: int
) -> None:
    """A stage input carrying several tables' columns is exposed as one relation per table
    joined on the row number while the stage is built; the plan the workers get reads it once
    (``planner/row_joins.py``), and gives the same rows."""
    sql = tpch.query(number)
    plan = shuffle_cluster.plan(sql)
    found = [_self_joins(stage) for stage in plan.stages if stage.plan]
    assert any(numbered for numbered, _ in found), plan.describe()
    assert sum(joins for _, joins in found) == 0, plan.describe()
    assert_same_rows(shuffle_cluster.sql(sql), single_node(tpch_dir, sql), ordered=True)


def test_explain_names_the_broadcast_side_and_its_size(cluster: LocalCluster) -> None:
    explain = cluster.plan(tpch.query(3)).describe()
    assert "output=broadcast" in explain
    assert "why: " in explain and "broadcast customer: ~" in explain
    assert "≤ threshold 64.0 MB" in explain


def test_a_small_broadcast_table_is_read_by_every_task_that_joins_it(
    default_cluster: LocalCluster, cluster: LocalCluster
) -> None:
    """Q5 at the default settings: nation and region (far under 1 MB) are read from their files
    by each task that joins them, not sent from stages of their own. With every table split
    (``min_task_bytes`` 0) they are broadcast from their own stages as before."""
    catalog = Catalog.from_folder(default_cluster.data)
    plan = default_cluster.plan(tpch.query(5))
    local = {scan.table_name: scan for stage in plan.stages for scan in stage.local_scans}
    assert {"nation", "region"} <= set(local)
    for table, scan in local.items():
        assert scan.files == catalog.tables[table].files
        assert 0 < scan.scan_bytes <= LOCAL_SCAN_BYTES
    scanned = {s.file_scan.table_name for s in plan.stages if s.file_scan is not None}
    assert not scanned & set(local), "a table read by every task has no stage of its own"
    assert "read nation's 1 file in every task: ~" in plan.describe()
    for spec in task_specs(plan, "q", assign(plan, default_cluster.worker_urls)):
        stage = plan.stage(spec.stage_id)
        whole = {i.table_name: i.files for i in spec.inputs if i.files}
        for scan in stage.local_scans:
            assert whole[scan.table_name] == scan.files, "every task reads every file"

    split = cluster.plan(tpch.query(5))
    assert not any(stage.local_scans for stage in split.stages)
    assert "nation" in {s.file_scan.table_name for s in split.stages if s.file_scan is not None}


def test_a_table_split_over_the_tasks_is_not_also_read_whole(default_cluster: LocalCluster) -> None:
    """Q21 joins lineitem with itself: at the test scale a lineitem scan is under 1 MB, but the
    stage that splits lineitem's files over its tasks must not read lineitem whole too."""
    plan = default_cluster.plan(tpch.query(21))
    check_distributed(plan, DEFAULT_MIN_TASK_BYTES)
    for stage in plan.stages:
        if stage.file_scan is not None:
            assert stage.file_scan.table_name not in {s.table_name for s in stage.local_scans}


def test_explain_names_the_shuffle_keys(shuffle_cluster: LocalCluster) -> None:
    plan = shuffle_cluster.plan(tpch.query(4))
    explain = plan.describe()
    assert "shuffle join on orders.o_orderkey = __correlated_sq_1.l_orderkey" in explain
    hashed = {s.output.keys for s in plan.stages if s.output.kind == "hash"}
    assert ("o_orderkey",) in hashed and ("l_orderkey",) in hashed
    assert "output=broadcast" not in explain


def test_threshold_between_two_tables_broadcasts_only_the_smaller(
    interleaved_tpch_dir: Path,
) -> None:
    """Sizes come from parquet metadata of the projected columns: a threshold just above
    customer's broadcasts customer and shuffles orders with lineitem (Q3)."""
    catalog = Catalog.from_folder(interleaved_tpch_dir)
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


def test_scan_tasks_follow_the_bytes_read(cluster: LocalCluster) -> None:
    """One scan task per ``min_task_bytes`` of the columns read, at most one per worker: Q6's
    lineitem scan in one task, two or three, and EXPLAIN says why it is not split further."""
    catalog = Catalog.from_folder(cluster.data)
    read = catalog.column_bytes(
        "lineitem", ["l_quantity", "l_extendedprice", "l_discount", "l_shipdate"]
    )

    def scan_stage(min_task_bytes: int) -> Stage:
        planner = Planner(catalog, PlannerOptions(3, min_task_bytes=min_task_bytes))
        (stage,) = [s for s in planner.plan(tpch.query(6)).stages if s.file_scan is not None]
        assert stage.file_scan is not None and stage.file_scan.scan_bytes == read
        return stage

    assert scan_stage(0).task_count == 3
    assert scan_stage(read // 3).task_count == 3
    halves = scan_stage(read // 2 + 1)
    assert halves.task_count == 2
    assert "into 2 tasks: ~" in halves.strategy and "a task at the least" in halves.strategy
    whole = scan_stage(read + 1)
    assert whole.task_count == 1 and len(whole.file_scan.groups[0]) > 1  # type: ignore[union-attr]
    assert "into 1 task: ~" in whole.strategy


def test_one_task_scan_still_shuffles_into_a_bucket_per_worker(
    default_cluster: LocalCluster,
) -> None:
    """At the test scale every table is read by one task by default, except where another
    side is sent to it by key range (then it is read by one task per worker, as many as a
    shuffle's); the join after the exchange still runs in one task per bucket (Q13: orders
    sent to customer's key ranges)."""
    plan = default_cluster.plan(tpch.query(13))
    scans = [s for s in plan.stages if s.file_scan is not None and "join" not in s.kind]
    assert scans and all(s.task_count == 1 for s in scans)
    shuffled = [s for s in scans if s.output.kind in ("hash", "range")]
    assert shuffled and all(s.output.buckets == 3 for s in shuffled)
    assert any("join" in s.kind and s.task_count == 3 for s in plan.stages)


def test_filter_selectivity_is_measured_on_a_sample(cluster: LocalCluster) -> None:
    """A quarter of lineitem's rows have l_returnflag 'R'; the sample says so, and caches it."""
    catalog = Catalog.from_folder(cluster.data)
    predicate = col("l_returnflag") == lit("R")
    whole = catalog.session(1).table("lineitem")
    actual = whole.filter(predicate).count() / whole.count()
    estimated = catalog.filter_selectivity("lineitem", [predicate])
    assert abs(estimated - actual) < 0.05, (estimated, actual)
    assert catalog.filter_selectivity("lineitem", [col("l_quantity") > lit(100)]) == 0.0
    assert len(catalog._selectivity) == 2


def test_a_filter_that_keeps_little_makes_its_table_broadcast(cluster: LocalCluster) -> None:
    """Q9 keeps the parts named like '%green%' (about 5%): with a threshold under part's bytes
    but over what its filter keeps, part is broadcast to the lineitem scan instead of both
    being shuffled on the part key (SF 10: 4.3 GB of lineitem shuffled for 0.9 MB of parts);
    the opposite filter, which keeps 95% of the same columns, is not."""
    catalog = Catalog.from_folder(cluster.data)
    threshold = catalog.column_bytes("part", ["p_partkey", "p_name"]) // 2
    planner = Planner(catalog, PlannerOptions(3, broadcast_threshold=threshold))
    explain = planner.plan(tpch.query(9)).describe()
    assert "broadcast part" in explain, explain
    assert "shuffle join on part.p_partkey" not in explain
    join = "select count(*) from lineitem join part on l_partkey = p_partkey where p_name "
    assert "broadcast part" in planner.plan(join + "like '%green%'").describe()
    assert "broadcast part" not in planner.plan(join + "not like '%green%'").describe()


def test_a_join_on_its_dimension_key_is_estimated_as_the_fact_rows_it_keeps(
    interleaved_tpch_dir: Path,
) -> None:
    """Q3 joins orders to the customers of one market segment (a fifth) on the customer key,
    which the sample shows unique in customer: the join keeps about a fifth of the filtered
    orders, not the sum of both sides. With a threshold of a quarter of orders' columns the
    joined side is broadcast to the lineitem scan, where the sum (all filtered orders, with
    the sample's margin, plus customer) would shuffle lineitem on the order key (SF 10: 1 GB
    of lineitem moved, 3x DataFusion's time)."""
    catalog = Catalog.from_folder(interleaved_tpch_dir)
    assert catalog.is_unique("customer", ["c_custkey"])
    assert not catalog.is_unique("orders", ["o_custkey"])
    assert catalog.is_unique("lineitem", ["l_orderkey", "l_linenumber"])
    assert catalog.row_count("orders") == catalog.session(1).table("orders").count()
    columns = ["o_orderkey", "o_custkey", "o_orderdate", "o_shippriority"]
    threshold = catalog.column_bytes("orders", columns) // 4
    planner = Planner(catalog, PlannerOptions(3, broadcast_threshold=threshold, min_task_bytes=0))
    explain = planner.plan(tpch.query(3)).describe()
    assert "broadcast customer ⋈ orders: ~" in explain, explain
    assert "shuffle join" not in explain, explain
    # The same join on a column that repeats (a customer's orders) keeps the sum: lineitem is
    # shuffled against it.
    repeated = (
        "select count(*) from lineitem, orders o1, orders o2 where l_orderkey = o1.o_orderkey "
        "and o1.o_custkey = o2.o_custkey and o1.o_orderdate < date '1995-03-15'"
    )
    assert "shuffle join" in planner.plan(repeated).describe()


def test_a_large_semi_join_side_is_cut_to_the_small_preserved_sides_keys(
    interleaved_tpch_dir: Path,
) -> None:
    """Q4: orders of one quarter EXISTS lineitem. Only lineitem's side may go to every task,
    and it is far larger, so it was shuffled on the order key whole (SF 10: 14 million
    distinct keys aggregated and shuffled, 3.5x DataFusion's time). Now orders' distinct
    keys are broadcast to the lineitem scan, which sends only the keys that match them; the
    rows are single-node DataFusion's, for EXISTS and NOT EXISTS."""
    threshold = 100_000  # over orders filtered to a quarter, under lineitem's order keys
    planner = Planner(
        Catalog.from_folder(interleaved_tpch_dir),
        PlannerOptions(3, broadcast_threshold=threshold, min_task_bytes=0),
    )
    plan = planner.plan(tpch.query(4))
    assert "semi-join reduction" in plan.strategy, plan.describe()
    [keys] = [s for s in plan.stages if s.output.kind == "broadcast"]
    assert keys.file_scan is not None and keys.file_scan.table_name == "orders"
    [cut] = [s for s in plan.stages if keys.stage_id in {i.stage_id for i in s.inputs}]
    assert cut.file_scan is not None and cut.file_scan.table_name == "lineitem"
    assert "keep the rows whose key orders has" in cut.strategy
    anti = tpch.query(4).replace("and exists", "and not exists")
    assert anti != tpch.query(4)
    assert "semi-join reduction" in planner.plan(anti).strategy
    with LocalCluster(
        workers=3, data=interleaved_tpch_dir, min_task_bytes=0, broadcast_threshold=threshold
    ) as local:
        for sql in (tpch.query(4), anti):
            assert_same_rows(local.sql(sql), single_node(interleaved_tpch_dir, sql), ordered=True)


def test_a_scan_of_fewer_tasks_than_workers_gets_their_threads(
    default_cluster: LocalCluster, cluster: LocalCluster
) -> None:
    """At the test scale every table is one scan task (under ``min_task_bytes``): with 3
    workers of 2 partitions, that task runs with 6, the idle workers' share included; stages
    over stage inputs and scans split over every worker keep the workers' own setting (0)."""
    plan = default_cluster.plan(tpch.query(4))
    specs = task_specs(plan, "q", assign(plan, default_cluster.worker_urls), None, 2)
    scans = [s for s in specs if plan.stage(s.stage_id).file_scan is not None]
    assert scans and all(s.threads == 6 for s in scans), [(s.stage_id, s.threads) for s in scans]
    assert all(s.threads == 0 for s in specs if s not in scans)
    split = cluster.plan(tpch.query(4))
    assert all(
        s.threads == 0 for s in task_specs(split, "q", assign(split, cluster.worker_urls), None, 2)
    )
    # and the worker runs it so: Q6's lineitem scan (4 files) in 4 partitions, not the
    # worker's own 2
    result = default_cluster.execute(tpch.query(6))
    assert result.telemetry is not None
    [scan] = [
        s
        for s in result.telemetry.spans
        if "otel_dist.metrics.files_opened.partitions" in s.attributes
    ]
    assert len(scan.attributes["otel_dist.metrics.output_rows.partitions"]) == 4, scan.attributes  # type: ignore[arg-type]


def test_a_join_on_a_key_the_files_hold_in_ranges_runs_where_they_are_read(
    tpch_dir: Path, cluster: LocalCluster
) -> None:
    """TPC-H's orders and lineitem are written in order-key order and split by rows, so each
    file holds a range of order keys: a join (or an aggregate) on the order key runs where
    the files are read, each task taking its orders files' key ranges of lineitem, and no
    row of either moves (SF 10: Q18 and Q21 shuffled 60 million lineitem rows). Each
    lineitem row falls in exactly one task's ranges, and the rows are single-node
    DataFusion's for inner, semi, anti and outer joins."""
    catalog = Catalog.from_folder(tpch_dir)
    assert catalog.range_column("orders", ["o_orderkey", "o_custkey"]) == "o_orderkey"
    assert catalog.range_column("lineitem", ["l_orderkey", "l_partkey"]) == "l_orderkey"
    assert catalog.range_column("lineitem", ["l_partkey"]) is None
    groups = catalog.file_groups("orders", 3)
    bounds = catalog.group_bounds("orders", "o_orderkey", groups)
    session = catalog.session(1)
    shares = 0
    for task_bounds in bounds:
        ctx = catalog.session(1)
        ctx.deregister_table("lineitem")
        ctx.register_parquet("lineitem", str(tpch_dir / "lineitem"))
        within = " or ".join(
            "("
            + " and ".join(
                [f"l_orderkey >= {low}"] * (low is not None)
                + [f"l_orderkey < {high}"] * (high is not None)
            )
            + ")"
            for low, high in task_bounds
        )
        shares += ctx.sql(f"select count(*) from lineitem where {within}").to_pydict()["count(*)"][
            0
        ]
        files = catalog.files_within("lineitem", "l_orderkey", task_bounds)
        assert len(files) < len(catalog.tables["lineitem"].files)
    assert shares == session.table("lineitem").count()

    planner = Planner(catalog, PlannerOptions(3, min_task_bytes=0))
    for number in (3, 4, 12, 18, 21):
        plan = planner.plan(tpch.query(number))
        assert "co-located join" in plan.strategy, plan.describe()
        hashed = {key for s in plan.stages if s.output.kind == "hash" for key in s.output.keys}
        assert not hashed & {"o_orderkey", "l_orderkey"}, plan.describe()
        assert any(s.range_scans and "join in place on" in s.strategy for s in plan.stages), (
            plan.describe()
        )
    outer = (
        "select o_orderstatus, count(l_orderkey) as lines, count(*) as rows_ "
        "from orders {how} join lineitem on o_orderkey = l_orderkey and l_quantity > 45 "
        "group by o_orderstatus order by o_orderstatus"
    )
    anti = "select count(*) from orders where not exists (select 1 from lineitem where l_orderkey = o_orderkey and l_quantity > 49)"
    for sql in (
        tpch.query(18),
        tpch.query(21),
        outer.format(how="left"),
        outer.format(how="full"),
        anti,
    ):
        assert "join in place on" in cluster.plan(sql).describe(), sql
        assert_same_rows(cluster.sql(sql), single_node(tpch_dir, sql), ordered="order by" in sql)


def test_a_side_joined_to_files_split_on_the_key_is_sent_to_their_ranges(
    tpch_dir: Path, cluster: LocalCluster
) -> None:
    """Q10 joins customers and their orders to lineitem on the order key: that side is sent
    to the lineitem tasks by range, each row to the task reading its key's range, and
    lineitem is joined where it is read instead of being shuffled too (and orders is sent to
    customer's ranges of the customer key before). A preserved side whose key is NULL still comes out of an outer join
    (NULL keys go to the first task); the rows are single-node DataFusion's."""
    planner = Planner(Catalog.from_folder(tpch_dir), PlannerOptions(3, min_task_bytes=0))
    plan = planner.plan(tpch.query(10))
    assert "range join" in plan.strategy, plan.describe()
    [sent] = [s for s in plan.stages if s.output.kind == "range" and "o_orderkey" in s.output.keys]
    assert sent.output.buckets == 3
    [reader] = [s for s in plan.stages if sent.stage_id in {i.stage_id for i in s.inputs}]
    assert reader.file_scan is not None and reader.file_scan.table_name == "lineitem"
    assert reader.task_count == 3
    assert "where the files of lineitem are read" in reader.strategy
    assert not any(s.output.kind == "hash" and "l_orderkey" in s.output.keys for s in plan.stages)
    nullable = (
        "select count(*) as rows_, count(l_orderkey) as matched, count(k) as keyed from "
        "(select case when o_orderkey % 7 = 0 then null else o_orderkey end as k "
        "from orders where o_orderdate < date '1993-01-01') s "
        "left join lineitem on s.k = l_orderkey and l_quantity > 45"
    )
    assert "range join" in cluster.plan(nullable).strategy
    for sql in (tpch.query(9), tpch.query(10), tpch.query(13), nullable):
        assert_same_rows(cluster.sql(sql), single_node(tpch_dir, sql), ordered="order by" in sql)
