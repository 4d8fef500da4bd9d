"""Opt-in (``pytest -m slow``): all 22 TPC-H queries at SF 1 on 3 workers equal single-node
DataFusion, and run in multi-task stages at that scale wherever a scan reads two tasks' worth
or more (the default 64 MB broadcast threshold shuffles the large joins, and tables under the
default 64 MB a scan task are read by one task), and again with every equi-join shuffled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_dist import tpch
from otel_dist.frontend.local import LocalCluster
from otel_dist.planner.distribute import DEFAULT_MIN_TASK_BYTES
from otel_dist.tpch.datagen import default_cache_dir, generate
from tests.oracle import assert_same_rows, has_order_by, single_node
from tests.test_plan_distribution import check_distributed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sf1() -> Path:
    return generate(1.0, default_cache_dir(1.0), show_progress=False)


@pytest.fixture(scope="module", params=[None, 0], ids=["default-threshold", "all-shuffled"])
def sf1_cluster(sf1: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with LocalCluster(workers=3, data=sf1, broadcast_threshold=request.param) as cluster:
        yield cluster


@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_tpch_sf1_matches_single_node(sf1_cluster: LocalCluster, sf1: Path, number: int) -> None:
    sql = tpch.query(number)
    plan = sf1_cluster.plan(sql)
    # A stage runs in one task only where the plan gathers on purpose or its scan reads less
    # than two tasks' worth: at SF 1 every stage of Q2 and Q11 (part, partsupp, supplier and
    # the small tables, under 64 MB each) is such a stage.
    check_distributed(plan, DEFAULT_MIN_TASK_BYTES)
    assert_same_rows(sf1_cluster.sql(sql), single_node(sf1, sql), ordered=has_order_by(sql))
