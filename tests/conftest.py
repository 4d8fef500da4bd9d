"""Shared fixtures: TPC-H data generated once per session and a 3-worker local cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_dist.coordinator.local import LocalCluster
from otel_dist.tpch.datagen import generate

TEST_SCALE = float(os.environ.get("OTEL_DIST_TEST_SCALE", "0.01"))


@pytest.fixture(scope="session")
def tpch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cached = os.environ.get("OTEL_DIST_TEST_DATA")
    if cached:
        return generate(TEST_SCALE, Path(cached), show_progress=False)
    return generate(TEST_SCALE, tmp_path_factory.mktemp("tpch") / "data", show_progress=False)


@pytest.fixture(scope="session")
def cluster(tpch_dir: Path) -> Iterator[LocalCluster]:
    """A 3-worker cluster that splits every table into one scan task per worker, however small:
    at the test scale every table is under the default ``min_task_bytes``."""
    with LocalCluster(workers=3, data=tpch_dir, min_task_bytes=0) as local:
        yield local


@pytest.fixture(scope="session")
def default_cluster(tpch_dir: Path) -> Iterator[LocalCluster]:
    """A 3-worker cluster with the default settings: at the test scale every table is read by
    one task, which broadcasts it or shuffles it into one bucket per worker."""
    with LocalCluster(workers=3, data=tpch_dir) as local:
        yield local


@pytest.fixture(scope="session")
def shuffle_cluster(tpch_dir: Path) -> Iterator[LocalCluster]:
    """A 3-worker cluster that broadcasts nothing and splits every table: every equi-join is
    hash-shuffled."""
    with LocalCluster(workers=3, data=tpch_dir, broadcast_threshold=0, min_task_bytes=0) as local:
        yield local
