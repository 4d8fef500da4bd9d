"""Shared fixtures: TPC-H data generated once per session and a 3-worker local cluster."""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from otel_dist.frontend.local import LocalCluster
from otel_dist.tpch.datagen import generate

TEST_SCALE = float(os.environ.get("OTEL_DIST_TEST_SCALE", "0.01"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process once pytest is done, without tearing the interpreter down.

    The session has run gRPC, Flight and DataFusion in this process; their native threads
    outlive the Python objects, and freeing everything in module order at exit aborted the
    process once in about ten full runs (glibc: "malloc_consolidate(): unaligned fastbin chunk
    detected", after every test had passed). Exit handlers still run (cached Flight clients
    close, span processors flush); only the interpreter's own teardown is skipped.
    """
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None:  # pytest stopped before the session ran (a usage error): its own exit
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


_EXIT_STATUS = pytest.StashKey[int]()


@pytest.fixture(scope="session")
def tpch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cached = os.environ.get("OTEL_DIST_TEST_DATA")
    if cached:
        return generate(TEST_SCALE, Path(cached), show_progress=False)
    return generate(TEST_SCALE, tmp_path_factory.mktemp("tpch") / "data", show_progress=False)


@pytest.fixture(scope="session")
def interleaved_tpch_dir(tpch_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tables with their rows dealt round-robin over 4 files each, so that no file
    holds a range of any key: joins cannot run where the files are read and are broadcast
    or shuffled, as over data written in no particular order."""
    root = tmp_path_factory.mktemp("tpch-interleaved")
    for folder in sorted(p for p in tpch_dir.iterdir() if p.is_dir()):
        table = pq.read_table(folder)
        (root / folder.name).mkdir()
        for index in range(4):  # slices of 16 rows (take has no kernel for string views)
            starts = range(16 * index, table.num_rows, 64)
            rows = pa.concat_tables([table.slice(start, 16) for start in starts] or [table[:0]])
            pq.write_table(rows, root / folder.name / f"{folder.name}.{index}.parquet")
    return root


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
def shuffle_cluster(interleaved_tpch_dir: Path) -> Iterator[LocalCluster]:
    """A 3-worker cluster that broadcasts nothing and splits every table, over files that
    hold no key ranges: every equi-join is hash-shuffled."""
    with LocalCluster(
        workers=3, data=interleaved_tpch_dir, broadcast_threshold=0, min_task_bytes=0
    ) as local:
        yield local
