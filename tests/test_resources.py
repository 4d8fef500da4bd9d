"""Resources with real processes: fast failure reporting, spilling (short writes, a full or
read-only spill device, stale spill folders), bounded threads, admission control, bounded
execution memory, the coordinator-wide result cap and memory handed back after a query."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from otel_dist.coordinator.core import QueryError
from otel_dist.coordinator.local import LocalCluster
from otel_dist.worker.buckets import Bucket, MemoryBudget
from otel_dist.worker.spill import SpillError
from tests.support import start_worker, stop, wait_until, worker_health

CROSS_JOIN = "select count(*), sum(a.l_quantity * b.l_discount) from lineitem a join lineitem b on a.l_linenumber = b.l_linenumber"


# ---- 1. a killed worker is reported at once; the explain tree is completed afterwards -------

# One task per stage: a scan (on the first worker), a scan joined with it whose output
# explodes into an aggregate (on the second: it computes for many seconds without yielding,
# so its telemetry comes late), and the final aggregate (on the third).
EXPLODING_JOIN = (
    "select count(*), sum(a.l_quantity * b.l_discount) "
    "from lineitem a join lineitem b on a.l_linenumber = b.l_linenumber"
)


def test_a_killed_worker_is_reported_within_a_second_of_the_coordinator_noticing(
    tpch_dir: Path,
) -> None:
    with LocalCluster(workers=3, data=tpch_dir, tasks_per_stage=1) as cluster:
        urls = list(cluster.worker_urls)
        kinds = [stage.kind for stage in cluster.plan(EXPLODING_JOIN).stages]
        assert kinds[0] == "scan" and "join" in kinds[1], kinds
        victim = urls[0]  # ran the first scan only, long finished when it dies
        noticed: list[float] = []
        cluster.coordinator.worker_health.add_listener(
            lambda url, _reason: noticed.append(time.monotonic()) if url == victim else None
        )
        outcome: list[object] = []
        failed_at: list[float] = []

        def run() -> None:
            try:
                outcome.append(cluster.explain_analyze(EXPLODING_JOIN))
            except BaseException as error:
                failed_at.append(time.monotonic())
                outcome.append(error)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        wait_until(
            lambda: worker_health(urls[1])["running_tasks"] and worker_health(victim)["tasks"],
            20,
            "the join to run",
        )
        wait_until(
            lambda: not worker_health(victim)["running_tasks"], 20, "the first scan to finish"
        )
        time.sleep(0.3)
        cluster.processes[0].kill()
        thread.join(60)
        assert not thread.is_alive(), "the query never ended"
        error = outcome[0]
        assert isinstance(error, QueryError), error
        assert noticed, "the coordinator never noticed the dead worker"
        delay = failed_at[0] - noticed[0]
        assert delay < 1.0, (
            f"the error reached the client {delay:.2f}s after the coordinator noticed"
        )
        assert victim in str(error)
        # The partial tree is completed in the background and is there when asked for.
        text = error.analysis.text()  # type: ignore[attr-defined]
        assert "Error:" in text and victim in text, text


# ---- 2. spilling: short writes, a full or read-only device, stale folders -------------------


@contextlib.contextmanager
def _tmpfs(size: str) -> Iterator[Path]:
    """A small tmpfs of its own (root only; skipped elsewhere)."""
    folder = Path(tempfile.mkdtemp(prefix="otel-dist-spill-test-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


def _batch(rows: int) -> pa.RecordBatch:
    return pa.record_batch({"x": pa.array(range(rows), pa.int64())})


def test_a_full_spill_device_fails_with_a_clear_error(tmp_path: Path) -> None:
    with _tmpfs("1m") as device:
        bucket = Bucket(_batch(1).schema, MemoryBudget(0), str(device / "bucket-0"))
        with pytest.raises(SpillError, match=f"no space left on the spill device {device}"):
            for _ in range(10):  # 10 x 800 kB into 1 MB
                bucket.append(_batch(100_000))
        bucket.close()


def test_short_writes_are_continued(tmp_path: Path) -> None:
    """A write cut short by the file size limit (``ulimit -f``) in a real child process:
    the rest is written, or the error says why; never a silently short spill file."""
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
import pyarrow as pa
from otel_dist.worker.buckets import Bucket, MemoryBudget
from otel_dist.worker.spill import SpillError
batch = pa.record_batch({{"x": pa.array(range(100_000), pa.int64())}})
bucket = Bucket(batch.schema, MemoryBudget(0), {str(tmp_path / "spill")!r})
bucket.append(batch)  # 800 kB: fits
try:
    bucket.append(batch)  # crosses the limit: a short write, then EFBIG
except SpillError as error:
    print("ERROR", error)
bucket.finish()
print("ROWS", sum(b.num_rows for b in bucket.read(5)))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "ERROR the spill file" in result.stdout and "file size limit" in result.stdout
    assert "ROWS 100000" in result.stdout, result.stdout


def test_a_worker_that_cannot_spill_is_unhealthy_and_gets_no_work(tpch_dir: Path) -> None:
    with _tmpfs("4m") as device:
        cluster = LocalCluster(workers=2, data=tpch_dir, worker_args=["--spill-dir", str(device)])
        with cluster:
            coordinator = cluster.coordinator
            urls = list(cluster.worker_urls)
            assert all(worker_health(u)["healthy"] for u in urls)
            filler = device / "filler"
            with open(filler, "wb") as out:  # fill the device
                with contextlib.suppress(OSError):
                    while True:
                        out.write(b"\0" * (1 << 16))
            try:
                report = wait_until(
                    lambda: next((h for h in [worker_health(urls[0])] if not h["healthy"]), None),
                    10,
                    "the worker to report it cannot spill",
                )
                assert "no space left on the spill device" in str(report["unhealthy"]), report
                wait_until(
                    lambda: coordinator.worker_health.healthy() == [], 10, "no usable worker"
                )
                with pytest.raises(QueryError, match="no worker is usable.*no space left"):
                    cluster.sql("select count(*) from nation")
            finally:
                filler.unlink()
            wait_until(lambda: len(coordinator.worker_health.healthy()) == 2, 10, "recovery")
            assert cluster.sql("select count(*) as n from nation").column("n")[0].as_py() == 25


def test_start_up_removes_the_spill_folders_of_dead_workers(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    first, _ = start_worker("--port", "0", "--spill-dir", str(spill))
    [folder] = list(spill.iterdir())
    assert folder.name.startswith("otel-dist-worker-") and (folder / "owner.lock").exists()
    first.kill()  # no clean-up of its own
    first.wait(10)
    old = time.time() - 60
    os.utime(folder, (old, old))
    second, _ = start_worker("--port", "0", "--spill-dir", str(spill))
    third = None
    try:
        folders = list(spill.iterdir())
        assert folder not in folders and len(folders) == 1, folders
        # A live worker's folder is never taken, however old.
        os.utime(folders[0], (old, old))
        third, _ = start_worker("--port", "0", "--spill-dir", str(spill))
        assert folders[0] in list(spill.iterdir())
    finally:
        stop(second)
        if third is not None:
            stop(third)
