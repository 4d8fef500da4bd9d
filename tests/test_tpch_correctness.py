"""All 22 TPC-H queries on a 3-worker local cluster equal single-node DataFusion's results: with
every table split and joins broadcast by size (``cluster``), with every equi-join shuffled
(``shuffle_cluster``), with the default settings, where at the test scale every table is
read by one task (``default_cluster``), and with a broadcast threshold under the larger tables'
sizes, so that tables whose filter keeps little (by a sample) are broadcast and the others
shuffled (``sampled_cluster``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_dist import tpch
from otel_dist.frontend.local import LocalCluster
from tests.oracle import assert_same_rows, has_order_by, single_node


@pytest.fixture(scope="module")
def sampled_cluster(tpch_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(
        workers=3, data=tpch_dir, min_task_bytes=0, broadcast_threshold=200_000
    ) as local:
        yield local


@pytest.mark.parametrize(
    "setting", ["cluster", "shuffle_cluster", "default_cluster", "sampled_cluster"]
)
@pytest.mark.parametrize("number", tpch.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_tpch_query_matches_single_node(
    request: pytest.FixtureRequest, tpch_dir: Path, setting: str, number: int
) -> None:
    cluster: LocalCluster = request.getfixturevalue(setting)
    sql = tpch.query(number)
    expected = single_node(tpch_dir, sql)
    actual = cluster.sql(sql)
    assert_same_rows(actual, expected, ordered=has_order_by(sql))
