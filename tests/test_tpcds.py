"""TPC-DS: all 99 queries distributed, with no single-task fallback stage, and equal to
single-node DataFusion on a 3-worker local cluster at SF 0.1 with every table split
(``min_task_bytes=0``), with joins broadcast by size and with every equi-join shuffled
(``broadcast_threshold=0``). SF 1 is the opt-in slow test (``pytest -m slow``).

The data is generated once per session with ``otel-dist tpcdsgen``'s generator (DuckDB's
dsdgen, the ``tpcds`` extra), into ``$OTEL_DIST_TPCDS_TEST_DATA`` when set (kept between
runs), else into a temporary folder."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from otel_dist import tpcds
from otel_dist.frontend.local import LocalCluster
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.distribute import DEFAULT_MIN_TASK_BYTES, Planner, PlannerOptions
from otel_dist.tpcds.datagen import generate
from tests.oracle import assert_same_rows, has_order_by, single_node
from tests.support import CLI
from tests.test_plan_distribution import _allowed_single_task

TEST_SCALE = 0.1  # the smallest scale at which every fact table is written as 4 files
# Measured at SF 1 on 3 workers with the default settings (2 cores, 23 GB).

_expected: dict[tuple[str, int], pa.Table] = {}


@pytest.fixture(scope="session")
def tpcds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cached = os.environ.get("OTEL_DIST_TPCDS_TEST_DATA")
    folder = Path(cached) if cached else tmp_path_factory.mktemp("tpcds") / "data"
    return generate(TEST_SCALE, folder, show_progress=False)


@pytest.fixture(scope="module")
def tpcds_cluster(tpcds_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(workers=3, data=tpcds_dir, min_task_bytes=0) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tpcds_shuffle_cluster(tpcds_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(
        workers=3, data=tpcds_dir, min_task_bytes=0, broadcast_threshold=0
    ) as cluster:
        yield cluster


def _single_node(data: Path, number: int) -> pa.Table:
    key = (str(data), number)
    if key not in _expected:
        _expected[key] = single_node(data, tpcds.query(number))
    return _expected[key]


def test_every_large_table_is_split_into_several_files(tpcds_dir: Path) -> None:
    catalog = Catalog.from_folder(tpcds_dir)
    assert set(catalog.tables) == set(tpcds.TABLES)
    for table in ("store_sales", "catalog_sales", "web_sales", "inventory"):
        assert len(catalog.tables[table].files) == 4, table


def test_tpcdsgen_keeps_its_scale_and_refuses_another(tpcds_dir: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )

    again = cli("tpcdsgen", "--scale", str(TEST_SCALE), "--out", str(tpcds_dir))
    assert again.returncode == 0 and "is already in" in again.stdout, again.stderr
    other = cli("tpcdsgen", "--scale", "1", "--out", str(tpcds_dir))
    assert other.returncode == 1 and other.stderr.count("\n") == 1, other.stderr
    assert "already holds TPC-DS SF 0.1, not SF 1" in other.stderr
    bench = cli("bench", "--suite", "tpcds", "--queries", "100", "--data", str(tpcds_dir))
    assert bench.returncode == 1 and "no TPC-DS query 100: queries are 1 to 99" in bench.stderr


@pytest.mark.parametrize("threshold", [None, 0], ids=["broadcast", "all-shuffled"])
def test_no_query_has_a_fallback_stage(tpcds_dir: Path, threshold: int | None) -> None:
    """Planning alone (no cluster): all 99 queries, every table split, and the defaults."""
    catalog = Catalog.from_folder(tpcds_dir)
    options = {} if threshold is None else {"broadcast_threshold": threshold}
    split = Planner(catalog, PlannerOptions(3, min_task_bytes=0, **options))
    default = Planner(catalog, PlannerOptions(3, **options))
    fallbacks: list[str] = []
    gathered: list[int] = []
    for number in tpcds.QUERY_NUMBERS:
        for planner, min_task_bytes in ((split, 0), (default, DEFAULT_MIN_TASK_BYTES)):
            plan = planner.plan(tpcds.query(number))
            reasons = [s.fallback_reason for s in plan.stages if s.is_fallback]
            if reasons:
                fallbacks.append(f"q{number:02d}: {reasons[0]}")
                continue
            for stage in plan.stages:
                if stage.task_count == 1:
                    assert _allowed_single_task(plan, stage, min_task_bytes), (
                        f"q{number:02d} stage {stage.stage_id} runs in one task\n{plan.describe()}"
                    )
            if min_task_bytes == 0:
                assert any(stage.task_count > 1 for stage in plan.stages), plan.describe()
                work = [s for s in plan.stages if "join" in s.kind or "aggregate" in s.kind]
                if not any(stage.task_count > 1 for stage in work):
                    gathered.append(number)
    assert not fallbacks, "\n".join(fallbacks)
    # Q28's six global aggregates each mix avg and count with COUNT(DISTINCT): they gather
    # (after a parallel scan) instead of splitting in two phases.
    assert gathered == [28]


@pytest.mark.parametrize("number", tpcds.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_tpcds_query_matches_single_node(
    tpcds_cluster: LocalCluster, tpcds_dir: Path, number: int
) -> None:
    sql = tpcds.query(number)
    expected = _single_node(tpcds_dir, number)
    assert_same_rows(tpcds_cluster.sql(sql), expected, ordered=has_order_by(sql))


@pytest.mark.parametrize("number", tpcds.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_tpcds_query_with_shuffle_joins_matches_single_node(
    tpcds_shuffle_cluster: LocalCluster, tpcds_dir: Path, number: int
) -> None:
    sql = tpcds.query(number)
    expected = _single_node(tpcds_dir, number)
    assert_same_rows(tpcds_shuffle_cluster.sql(sql), expected, ordered=has_order_by(sql))


@pytest.fixture(scope="module")
def tpcds_sf1() -> Path:
    cached = os.environ.get("OTEL_DIST_TPCDS_SF1_DATA")
    folder = Path(cached) if cached else Path.home() / ".cache" / "otel_dist" / "tpcds-sf1"
    return generate(1.0, folder, show_progress=False)


@pytest.fixture(scope="module")
def tpcds_sf1_cluster(tpcds_sf1: Path) -> Iterator[LocalCluster]:
    with LocalCluster(workers=3, data=tpcds_sf1) as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.parametrize("number", tpcds.QUERY_NUMBERS, ids=lambda n: f"q{n:02d}")
def test_tpcds_sf1_matches_single_node(
    tpcds_sf1_cluster: LocalCluster, tpcds_sf1: Path, number: int
) -> None:
    sql = tpcds.query(number)
    plan = tpcds_sf1_cluster.plan(sql)
    assert not any(stage.is_fallback for stage in plan.stages), plan.describe()
    expected = single_node(tpcds_sf1, sql)
    assert_same_rows(tpcds_sf1_cluster.sql(sql), expected, ordered=has_order_by(sql))
