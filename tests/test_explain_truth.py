"""EXPLAIN ANALYZE numbers that hold up, for all 22 TPC-H queries on 3 workers, with every
table split (``min_task_bytes=0``) and with the default settings: every task's time parts add
up to its duration, the critical path adds up to the query's duration, exchange bytes are the
routers' counts, scans show their reading time and bytes read (held against the files' sizes),
and no output names a worker's temp folder.

At the suite's scale (SF 0.01) no scan reads 100k rows; the opt-in ``slow`` test runs the same
checks at SF 0.1, where it also holds every scan of over 100k rows to at least 1 ms.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_dist import tpch
from otel_dist.coordinator.core import QueryResult
from otel_dist.explain import ExplainTree, build_tree, render_text, tree_to_dict
from otel_dist.explain.build import walk
from otel_dist.explain.html import render_html
from otel_dist.frontend.local import LocalCluster
from otel_dist.tpch.datagen import default_cache_dir, generate

PART_TOLERANCE = 0.05
PART_SLACK_NS = 2_000_000
PATH_TOLERANCE = 0.15
TEMP_PATH = re.compile(r"otel-dist-worker-|/task-[0-9a-f]{32}-|" + re.escape(tempfile.gettempdir()))


def _run_all(cluster: LocalCluster) -> dict[int, tuple[QueryResult, ExplainTree]]:
    results = {}
    for number in tpch.QUERY_NUMBERS:
        result = cluster.execute(tpch.query(number))
        assert result.telemetry is not None
        results[number] = (result, build_tree(result.telemetry.spans, result.query_id))
    return results


@pytest.fixture(scope="module", params=["split", "default"])
def runs(
    request: pytest.FixtureRequest, cluster: LocalCluster, default_cluster: LocalCluster
) -> dict[int, tuple[QueryResult, ExplainTree]]:
    return _run_all(cluster if request.param == "split" else default_cluster)


def _tasks(tree: ExplainTree) -> Iterator[tuple[int, object]]:
    for stage in tree.all_stages():
        for task in stage.tasks:
            yield stage.stage_id, task


def check_time_parts(tree: ExplainTree) -> None:
    data = tree_to_dict(tree)
    stages = {}
    pending = list(data["stages"])
    while pending:
        stage = pending.pop()
        stages[stage["stage_id"]] = stage
        pending.extend(stage["children"])
    for stage in stages.values():
        for task in stage["tasks"]:
            where = f"stage {stage['stage_id']} task {task['task_index']}"
            parts = task["time_breakdown_ns"]
            assert all(type(ns) is int and ns >= 0 for ns in parts.values()), (where, parts)
            duration = task["duration_ns"]
            assert abs(sum(parts.values()) - duration) <= max(
                PART_TOLERANCE * duration, PART_SLACK_NS
            ), (where, parts, duration)
            assert {
                "planning",
                "operators",
                "output",
                "send_blocked",
                "spill",
                "telemetry",
                "other",
            } <= set(parts), where
            # a part for every upstream stage the task read
            read_stages = {read["stage_id"] for read in task["reads"]}
            assert {f"wait_stage_{s}" for s in read_stages} <= set(parts), (where, parts)
            assert set(read_stages) <= set(stage["inputs"])
            # measured, not a remainder: the operators ran for some time
            assert parts["operators"] > 0, where
        # stage duration: first task start to last task end, the scheduling delay apart
        starts = [t["start_ns"] for t in stage["tasks"]]
        ends = [t["start_ns"] + t["duration_ns"] for t in stage["tasks"]]
        assert stage["duration_ns"] == max(ends) - min(starts)
        assert stage["scheduling_delay_ns"] is not None and stage["scheduling_delay_ns"] >= 0
        for name, stats in stage["time_stats"].items():
            values = [t["time_breakdown_ns"].get(name, 0) for t in stage["tasks"]]
            assert (stats["min"], stats["max"]) == (min(values), max(values))
            assert (
                values[[t["task_index"] for t in stage["tasks"]].index(stats["max_task"])]
                == (stats["max"])
            )


def check_critical_path(tree: ExplainTree, root_stage: int) -> None:
    data = tree_to_dict(tree)
    path = data["critical_path"]
    assert path, "no critical path"
    assert path[0]["stage_id"] == root_stage
    total = sum(step["ns"] for step in path)
    assert abs(total - data["duration_ns"]) <= PATH_TOLERANCE * data["duration_ns"], (
        total,
        data["duration_ns"],
    )
    tasks = {(s, t.task_index): t for s, t in _tasks(tree)}
    for above, below in itertools.pairwise(path):
        assert above["waited_on"] == {
            "stage_id": below["stage_id"],
            "task_index": below["task_index"],
        }
        # the task above read the one below
        reads = tasks[above["stage_id"], above["task_index"]].reads  # type: ignore[attr-defined]
        assert any(
            (r.stage_id, r.task_index) == (below["stage_id"], below["task_index"]) for r in reads
        )
        assert below["end_ns"] == above["start_ns"]  # stretches follow one another
    assert path[-1]["waited_on"] is None
    for step in path:
        assert step["task_ns"] >= 0 and step["ns"] == step["task_ns"] + step["coordinator_ns"]
    text = render_text(tree)
    head = text.splitlines()[1]
    assert head.startswith("Critical path ") and "the root task first" in head
    first = text.splitlines()[2]
    assert re.search(rf"\d+%\s+\S+\s+stage {root_stage} task \d+ on ", first), first


def check_exchange_bytes(result: QueryResult, tree: ExplainTree) -> None:
    # the coordinator's reads of the root stage are its router's counts of what arrived: the
    # result's batches are those, so their buffers measure the same bytes independently
    received = sum(batch.get_total_buffer_size() for batch in result.table.to_batches())
    assert sum(read.bytes for read in tree.reads) == received
    readers: dict[tuple[int, int], int] = {}
    per_bucket: dict[tuple[int, int, int], set[int]] = {}
    for read in [*tree.reads, *(r for _, t in _tasks(tree) for r in t.reads)]:  # type: ignore[attr-defined]
        key = (read.stage_id, read.task_index)
        readers[key] = readers.get(key, 0) + read.bytes
        per_bucket.setdefault((*key, read.bucket), set()).add(read.bytes)
    # every reader of a bucket (a broadcast has several) counted the same bytes
    assert all(len(sizes) == 1 for sizes in per_bucket.values()), per_bucket
    for stage_id, task in _tasks(tree):
        # the task's "sent" is what its readers' routers counted
        assert task.metrics.get("sent_bytes") == readers.get((stage_id, task.task_index)), (  # type: ignore[attr-defined]
            stage_id,
            task.task_index,  # type: ignore[attr-defined]
        )


def check_scans(tree: ExplainTree, data: Path, min_rows_for_1ms: int | None) -> None:
    text = render_text(tree)
    for stage_id, task in _tasks(tree):
        for operator in walk(task.operators):  # type: ignore[attr-defined]
            if operator.name != "DataSourceExec" or "bytes_scanned" not in operator.metrics:
                continue
            files = re.findall(r"([\w]+)/([\w.]+\.parquet)", operator.display)
            assert files, operator.display
            size = sum(os.path.getsize(data / table / name) for table, name in files)
            # bytes read from storage: at most the files' bytes (the footer and column chunks)
            assert 0 < operator.metrics["bytes_scanned"] <= size, (operator.display, size)
            rows = operator.metrics.get("output_rows", 0)
            # the time it took: scanning in total (opening, reading, decoding) and decoding
            took = max(
                operator.metrics.get("time_elapsed_scanning_total", 0),
                operator.metrics.get("time_elapsed_processing", 0),
            )
            assert took > 0 or rows == 0, operator.display
            if min_rows_for_1ms is not None and rows > min_rows_for_1ms:
                assert took >= 1_000_000, (stage_id, operator.display, operator.metrics)
    lines = text.splitlines()
    scans = [i for i, line in enumerate(lines) if re.search(r"DataSourceExec: \w+/", line)]
    assert scans
    for i in scans:
        # beside the display, or on the line below it when the tree is too deep for both
        shown = lines[i] if "metrics=[" in lines[i] else lines[i + 1]
        assert "time_elapsed_scanning_total=" in shown, lines[i]
        assert "bytes_scanned=" in shown or "output_rows=0," in shown, lines[i]


def check_no_temp_paths(tree: ExplainTree) -> None:
    outputs = {
        "text": render_text(tree),
        "verbose": render_text(tree, verbose=True),
        "json": json.dumps(tree_to_dict(tree)),
        "html": render_html(tree),
    }
    for name, output in outputs.items():
        assert not TEMP_PATH.search(output), (name, TEMP_PATH.search(output))


def check_width(tree: ExplainTree) -> None:
    for width in (100, 160):
        lines = render_text(tree, width=width).splitlines()
        assert max(len(line) for line in lines) <= width
    verbose = render_text(tree, verbose=True)
    # the full displays are there under VERBOSE
    for stage in tree.all_stages():
        for operator in walk(stage.operators):
            assert " ".join(operator.display.split()) in verbose


def _check_all(
    runs: dict[int, tuple[QueryResult, ExplainTree]], data: Path, min_rows: int | None
) -> None:
    for number, (result, tree) in runs.items():
        try:
            check_time_parts(tree)
            check_critical_path(tree, result.plan.root.stage_id)
            check_exchange_bytes(result, tree)
            check_scans(tree, data, min_rows)
            check_no_temp_paths(tree)
            check_width(tree)
        except AssertionError as error:
            raise AssertionError(f"TPC-H Q{number}: {error}") from error


def test_tpch_explain_numbers_hold_up(
    runs: dict[int, tuple[QueryResult, ExplainTree]], tpch_dir: Path
) -> None:
    _check_all(runs, tpch_dir, None)


def test_parts_sum_in_the_synthetic_clock() -> None:
    from otel_dist.worker.timing import TaskClock

    clock = TaskClock()
    clock.add("planning", 10)
    first, second = clock.drain(), clock.drain()
    first.operators_ns, first.output_ns, first.spill_ns, first.total_ns = 60, 30, 10, 100
    second.operators_ns, second.output_ns, second.total_ns = 100, 0, 100
    clock.run_finished(100)  # two threads of 100 ns each over 100 ns of wall time
    parts = clock.breakdown(120)
    assert parts["operators"] == 80 and parts["output"] == 10 and parts["spill"] == 5
    assert sum(parts.values()) == 120 and parts["other"] == 120 - 10 - 80 - 10 - 5


@pytest.mark.slow
def test_tpch_sf01_explain_numbers_hold_up() -> None:
    data = generate(0.1, default_cache_dir(0.1), show_progress=False)
    for settings in ({"min_task_bytes": 0}, {}):
        with LocalCluster(workers=3, data=data, **settings) as cluster:  # type: ignore[arg-type]
            _check_all(_run_all(cluster), data, 100_000)


def test_spilled_output_shows_as_spill_time(tpch_dir: Path) -> None:
    scan = "select l_orderkey, l_linenumber, l_comment from lineitem where l_quantity > 10"
    with LocalCluster(workers=2, data=tpch_dir, memory_budget_bytes=64 * 1024) as small:
        result = small.execute(scan)
    assert result.telemetry is not None
    tree = build_tree(result.telemetry.spans, result.query_id)
    check_time_parts(tree)
    spills = [t.time_breakdown_ns["spill"] for _, t in _tasks(tree)]  # type: ignore[attr-defined]
    assert any(ns > 0 for ns in spills), spills
    assert "spill " in render_text(tree, verbose=True)
