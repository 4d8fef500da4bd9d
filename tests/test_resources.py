"""Resources with real processes: fast failure reporting, spilling (short writes, a full or
read-only spill device, stale spill folders), bounded threads, admission control, bounded
execution memory, the coordinator-wide result cap and memory handed back after a query."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from otel_dist import tpch
from otel_dist.background import IDLE_EXIT_S, retire_idle, run_in_background
from otel_dist.coordinator.core import QueryError
from otel_dist.frontend.local import LocalCluster
from otel_dist.protocol import BucketTicket
from otel_dist.telemetry import conventions as c
from otel_dist.worker.buckets import Bucket, MemoryBudget
from otel_dist.worker.memory import available_memory_bytes
from otel_dist.worker.spill import SpillError
from tests.oracle import single_node
from tests.support import (
    metric_sum,
    process_usage,
    remote_cluster,
    scrape,
    start_worker,
    stop,
    wait_until,
    worker_health,
)

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
            with open(filler, "wb") as out, contextlib.suppress(OSError):  # fill the device
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
                with pytest.raises(QueryError, match=r"no worker is usable.*no space left"):
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


# ---- 3. bounded threads ----------------------------------------------------------------------


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def test_300_waiting_reads_for_unknown_tasks_do_not_grow_the_threads(tmp_path: Path) -> None:
    worker, url = start_worker("--port", "0")
    try:
        idle = _threads(worker.pid)
        errors: list[str] = []
        peak = [idle]

        def read(index: int) -> None:
            ticket = BucketTicket("q" * 8 + str(index), 1, 0, 0).to_bytes()
            client = flight.FlightClient(url)
            try:
                client.do_get(flight.Ticket(ticket)).read_all()
            except flight.FlightError as error:
                errors.append(str(error))
            finally:
                client.close()

        readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(300)]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            peak[0] = max(peak[0], _threads(worker.pid))
            time.sleep(0.1)
        busy = [e for e in errors if "max_waiting_calls" in e]
        assert len(busy) >= 200, errors[:3]
        assert "worker busy: 64 calls wait for a task already" in busy[0]
        assert peak[0] < idle + 120, f"{idle} threads idle, {peak[0]} under 300 waiting reads"
    finally:
        stop(worker)


def test_idle_pool_threads_leave_when_retired_and_later_work_still_runs() -> None:
    """``retire_idle`` (called by a worker's idle trim) lets the threads idle now leave at
    once, taking their allocator heaps with them; work that comes later starts threads."""
    gate = threading.Barrier(4)

    def job() -> threading.Thread:
        gate.wait(timeout=10)  # four jobs at once: four threads of the pool
        return threading.current_thread()

    futures = [run_in_background(job) for _ in range(4)]
    threads = {future.result(timeout=15) for future in futures}
    assert len(threads) == 4
    time.sleep(0.2)  # each is back waiting for work
    assert retire_idle() >= 4
    deadline = time.monotonic() + IDLE_EXIT_S / 2  # well before they would leave by themselves
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.is_alive() for t in threads), "idle threads left the pool"
    assert run_in_background(lambda: 42).result(timeout=5) == 42


# ---- 4. admission control --------------------------------------------------------------------


def test_tasks_beyond_the_running_limit_queue_and_say_how_long(tpch_dir: Path) -> None:
    with LocalCluster(
        workers=1,
        data=tpch_dir,
        min_task_bytes=0,
        metrics_ports=True,
        worker_args=["--max-running-tasks", "1"],
    ) as cluster:
        health = worker_health(cluster.worker_urls[0])
        assert health["max_running_tasks"] == 1
        results: list[object] = []
        sql = "select l_returnflag, count(*) from lineitem group by 1 order by 1"
        runners = [
            threading.Thread(target=lambda: results.append(cluster.execute(sql))) for _ in range(3)
        ]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join(120)
        assert len(results) == 3
        queued = [
            s.attributes.get(c.TASK_QUEUED_TIME)
            for r in results
            for s in r.telemetry.spans  # type: ignore[attr-defined]
            if s.name == c.SPAN_TASK
        ]
        assert all(isinstance(q, int) for q in queued), queued
        assert max(queued) > 1_000_000, queued  # some task waited for its turn
        url = cluster.worker_metrics_urls[0]
        count = wait_until(
            lambda: metric_sum(scrape(url), "otel_dist_task_queue_time_seconds_count"),
            15,
            "the queue time histogram",
        )
        assert count >= len(queued)


# ---- 5. execution memory ---------------------------------------------------------------------


def test_execution_memory_defaults_to_half_the_machine_split_among_local_workers(
    tpch_dir: Path,
) -> None:
    """A fixed 1 GiB (256 MiB a task) failed TPC-H Q7 and Q9 at SF 10: hash joins cannot
    spill. Half of this machine's memory (no cgroup limit here), split among 2 local
    workers; a standalone worker takes the whole half."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert available_memory_bytes() in (physical, *_cgroup_limits())
    with LocalCluster(workers=2, data=tpch_dir, worker_args=["--max-running-tasks", "2"]) as two:
        pools = [worker_health(url)["task_memory_pool_bytes"] for url in two.worker_urls]
    expected = max(1 << 30, available_memory_bytes() // 2 // 2) // 2
    assert pools == [expected, expected], pools
    worker, url = start_worker("--port", "0", "--max-running-tasks", "2")
    try:
        alone = worker_health(url)["task_memory_pool_bytes"]
    finally:
        stop(worker)
    assert alone == max(1 << 30, available_memory_bytes() // 2) // 2


def _cgroup_limits() -> list[int]:
    limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            limits.append(int(Path(path).read_text()))
    return limits


def test_a_query_larger_than_the_execution_memory_completes_by_spilling(tpch_dir: Path) -> None:
    # Every column of lineitem (about 10 MB as Arrow at SF 0.01) sorted within 16 MB shared
    # by two partitions; (l_orderkey, l_linenumber) is unique, so the order is determined.
    sql = "select * from lineitem order by l_comment, l_orderkey, l_linenumber"
    with LocalCluster(
        workers=1,
        data=tpch_dir,
        worker_args=[
            "--execution-memory",
            "16000000",
            "--max-running-tasks",
            "1",
            "--target-partitions",
            "1",
        ],
    ) as cluster:
        result = cluster.execute(sql)
        expected = single_node(tpch_dir, sql)
        assert result.table.num_rows == expected.num_rows
        assert result.table.equals(expected.cast(result.table.schema))
        spills = [
            s.attributes.get("otel_dist.metrics.spill_count", 0)
            for s in result.telemetry.spans  # type: ignore[union-attr]
            if s.name.startswith("SortExec")
        ]
        assert spills and max(spills) > 0, spills  # type: ignore[type-var]


def test_a_task_whose_hash_join_outgrows_its_share_runs_again_alone(tpch_dir: Path) -> None:
    """A hash join's build side cannot spill: lineitem joined to itself builds about 5.5 MB at
    SF 0.01, more than the task's share of the pool (16 MB over 4 turns), less than the
    worker's execution memory. The task runs again alone with all of it, and says so."""
    sql = (
        "select max(a.l_comment) as c, count(*) as n from lineitem a join lineitem b "
        "on a.l_orderkey = b.l_orderkey and a.l_linenumber = b.l_linenumber"
    )

    def cluster(execution_memory: int) -> LocalCluster:
        return LocalCluster(
            workers=1,
            data=tpch_dir,
            min_task_bytes=1 << 40,
            worker_args=[
                "--execution-memory",
                str(execution_memory),
                "--max-running-tasks",
                "4",
                "--target-partitions",
                "1",
            ],
        )

    with cluster(16_000_000) as running:
        analysis = running.explain_analyze(sql)
    assert analysis.table is not None
    assert analysis.table.to_pylist() == single_node(tpch_dir, sql).to_pylist()
    tasks = [s for s in analysis.spans if s.name == c.SPAN_TASK]
    again = [s for s in tasks if s.attributes.get(c.TASK_RAN_AGAIN_ALONE)]
    assert len(again) == 1, [dict(s.attributes) for s in tasks]
    assert again[0].attributes[c.TASK_STATUS] == "finished"
    # The tree says which task ran again, in the terminal and in its JSON.
    [line] = [line for line in analysis.text().splitlines() if "ran again alone" in line]
    assert "Task 0:" in line
    stages = list(analysis.to_dict()["stages"])
    json_tasks = []
    while stages:
        stage = stages.pop()
        json_tasks += stage["tasks"]
        stages += stage["children"]
    assert [t["ran_again_alone"] for t in json_tasks].count(True) == 1
    page = analysis.html()  # the profile page's task table too
    assert page.count("ran again alone with its worker&#x27;s whole memory") == 1
    # With the whole of a smaller memory too small, the query fails in one line naming it.
    with cluster(4_000_000) as running, pytest.raises(QueryError, match="Resources exhausted"):
        running.execute(sql)


def test_a_task_whose_exchanged_input_exceeds_its_memory_completes(tpch_dir: Path) -> None:
    """Issue 24: the root task sorts all of lineitem (about 10 MB as Arrow), which reaches it
    from two scan tasks through the exchange, streamed into its plan, within an 8 MB pool;
    the scan tasks' output buckets themselves spill past a 2 MB bucket budget."""
    sql = "select * from lineitem order by l_comment, l_orderkey, l_linenumber"
    execution_memory = 8_000_000
    env = {**os.environ, "OTEL_DIST_STREAM_BYTES": "1"}
    with LocalCluster(
        workers=2,
        data=tpch_dir,
        env=env,
        min_task_bytes=0,
        memory_budget_bytes=2_000_000,
        worker_args=[
            "--execution-memory",
            str(execution_memory),
            "--max-running-tasks",
            "1",
            "--target-partitions",
            "1",
        ],
    ) as cluster:
        result = cluster.execute(sql)
    expected = single_node(tpch_dir, sql)
    assert result.table.equals(expected.cast(result.table.schema))
    spans = result.telemetry.spans  # type: ignore[union-attr]
    tasks = [s for s in spans if s.name == c.SPAN_TASK]
    root_stage = max(int(s.attributes[c.STAGE_ID]) for s in tasks)  # type: ignore[arg-type]
    exchanged = sum(
        int(s.attributes[c.TASK_OUTPUT_BYTES])  # type: ignore[arg-type]
        for s in tasks
        if s.attributes[c.STAGE_ID] != root_stage
    )
    assert exchanged > execution_memory, exchanged
    [sort] = [
        s for s in spans if s.name.startswith("SortExec") and s.attributes[c.STAGE_ID] == root_stage
    ]
    assert int(sort.attributes["otel_dist.metrics.spill_count"]) > 0, sort.attributes  # type: ignore[arg-type]
    bucket_spills = [s.attributes.get(f"{c.TASK_TIME_PREFIX}spill", 0) for s in tasks]
    assert any(bucket_spills), "the scan tasks' buckets spilled past their budget"


# ---- 6. the coordinator-wide cap on held results ---------------------------------------------


def test_results_held_by_all_queries_are_capped(tpch_dir: Path) -> None:
    with LocalCluster(
        workers=2, data=tpch_dir, max_result_bytes=1 << 30, max_total_result_bytes=1 << 20
    ) as cluster:
        with pytest.raises(QueryError) as caught:
            cluster.sql("select * from lineitem")
        message = str(caught.value)
        assert "limit of 1048576 bytes (max_total_result_bytes)" in message
        assert "\n" not in message
        assert cluster.coordinator.held_result_bytes == 0  # given back when it failed
        assert cluster.sql("select * from nation").num_rows == 25
        assert cluster.coordinator.held_result_bytes == 0


# ---- 7. memory handed back once idle ---------------------------------------------------------


def test_an_idle_worker_hands_its_free_memory_back(tpch_dir: Path) -> None:
    env = {**os.environ, "OTEL_DIST_IDLE_TRIM_S": "1"}
    with LocalCluster(workers=1, data=tpch_dir, env=env) as cluster:
        url = cluster.worker_urls[0]
        before = int(worker_health(url)["memory_trims"])  # type: ignore[call-overload]
        cluster.sql("select l_comment, count(*) from lineitem group by 1 order by 2 desc")
        wait_until(
            lambda: int(worker_health(url)["memory_trims"]) > before,  # type: ignore[call-overload]
            15,
            "the idle worker to trim its memory",
        )


def test_a_worker_server_returns_to_its_idle_size_after_a_load(tpch_dir: Path) -> None:
    """``otel-dist worker`` as a container or unit file starts it (no allocator settings in its
    environment): 16 clients run the TPC-H queries for 15 s, and within 30 s of the last one
    the worker's resident memory is back within 20% of its idle size (issue 18; at SF 0.1,
    ``benchmarks/memory_load.py``)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MIMALLOC_")}
    with remote_cluster(tpch_dir, env=env) as (coordinator_url, worker_url):
        pid = int(worker_health(worker_url)["pid"])  # type: ignore[call-overload]
        client = flight.connect(coordinator_url)

        def run(sql: str) -> None:
            client.do_get(flight.Ticket(json.dumps({"sql": sql}).encode())).read_all()

        for number in tpch.QUERY_NUMBERS:  # the operators a worker uses, resident
            run(tpch.query(number))
        time.sleep(3)
        idle = process_usage(pid).rss_bytes
        peak = [idle]
        until = time.monotonic() + 15

        def load(first: int) -> None:
            numbers = list(tpch.QUERY_NUMBERS)
            index = first
            while time.monotonic() < until:
                run(tpch.query(numbers[index % len(numbers)]))
                peak[0] = max(peak[0], process_usage(pid).rss_bytes)
                index += 1

        clients = [threading.Thread(target=load, args=(i,)) for i in range(16)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(120)
        assert peak[0] - idle > 100 << 20, (idle, peak[0])  # the load did allocate
        started = time.monotonic()
        wait_until(
            lambda: process_usage(pid).rss_bytes <= idle * 1.2,
            30,
            f"the worker's RSS back within 20% of its idle {idle >> 20} MB "
            f"(peak {peak[0] >> 20} MB, {process_usage(pid).rss_bytes >> 20} MB when the load ended)",
        )
        print(
            f"idle {idle >> 20} MB, peak {peak[0] >> 20} MB, back within 20% after "
            f"{time.monotonic() - started:.1f} s"
        )
