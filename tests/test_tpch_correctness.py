"""All 22 TPC-H queries on a 3-worker local cluster equal single-node DataFusion's results: with
every table split and joins broadcast by size, with every equi-join shuffled, and with the
default settings (at the test scale, every table read by one task)."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_dist import tpch
from otel_dist.coordinator.local import LocalCluster
from tests.oracle import assert_same_rows, has_order_by, single_node


@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_tpch_query_matches_single_node(cluster: LocalCluster, tpch_dir: Path, number: int) -> None:
    sql = tpch.query(number)
    expected = single_node(tpch_dir, sql)
    actual = cluster.sql(sql)
    assert_same_rows(actual, expected, ordered=has_order_by(sql))


@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_tpch_query_with_shuffle_joins_matches_single_node(
    shuffle_cluster: LocalCluster, tpch_dir: Path, number: int
) -> None:
    sql = tpch.query(number)
    expected = single_node(tpch_dir, sql)
    actual = shuffle_cluster.sql(sql)
    assert_same_rows(actual, expected, ordered=has_order_by(sql))


@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_tpch_query_with_default_settings_matches_single_node(
    default_cluster: LocalCluster, tpch_dir: Path, number: int
) -> None:
    sql = tpch.query(number)
    expected = single_node(tpch_dir, sql)
    actual = default_cluster.sql(sql)
    assert_same_rows(actual, expected, ordered=has_order_by(sql))
