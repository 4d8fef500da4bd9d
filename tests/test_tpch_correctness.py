"""All 22 TPC-H queries on a 3-worker local cluster equal single-node DataFusion's results: with
every table split and joins broadcast by size (``cluster``), with every equi-join shuffled
(``shuffle_cluster``), and with the default settings, where at the test scale every table is
read by one task (``default_cluster``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_dist import tpch
from otel_dist.frontend.local import LocalCluster
from tests.oracle import assert_same_rows, has_order_by, single_node


@pytest.mark.parametrize("setting", ["cluster", "shuffle_cluster", "default_cluster"])
@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_tpch_query_matches_single_node(
    request: pytest.FixtureRequest, tpch_dir: Path, setting: str, number: int
) -> None:
    cluster: LocalCluster = request.getfixturevalue(setting)
    sql = tpch.query(number)
    expected = single_node(tpch_dir, sql)
    actual = cluster.sql(sql)
    assert_same_rows(actual, expected, ordered=has_order_by(sql))
