"""Live progress, watched while a slow query runs on real processes (two ``otel-dist worker``
processes and an ``otel-dist coordinator`` with its HTTP pages): ``/queries.json`` lists it
as running, its live tree shows tasks running and rows growing, ``otel-dist top --once``
lists every worker and the query, the worker gauges agree with top, the terminal display
under tmux, and the live page in headless Chromium (screenshot kept in ``test-artifacts/``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otel_dist.exchange.security import AUTH_TOKEN_ENV
from otel_dist.frontend.local import LocalCluster
from otel_dist.telemetry import conventions as c
from tests.support import CLI, remote_cluster, scrape, stop, wait_until
from tests.test_profile_page import ARTIFACTS, CHROMIUM_FLAGS
from tests.test_profile_page import _chromium as chromium

# A self-join on a two-valued key: about 900 million joined rows at SF 0.01, several seconds;
# without the filter twice as many, for the test that watches the most while it runs.
HEAVY_SQL = "select count(*) from lineitem a join lineitem b on a.l_linestatus = b.l_linestatus"
SLOW_SQL = f"{HEAVY_SQL} where a.l_orderkey < 30000"
TASK_STATUSES = {"queued", "running", "finished", "failed", "cancelled"}


@dataclass
class Cluster:
    coordinator: str
    pages: str
    workers: list[str]
    worker_metrics: list[str]


def _read_prefixed(process: subprocess.Popen[str], prefixes: list[str]) -> dict[str, str]:
    """Values of the lines starting with each prefix, read from the process's stdout."""
    assert process.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(found) < len(prefixes) and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"process exited: {process.poll()}")
        for prefix in prefixes:
            if line.startswith(prefix):
                found[prefix] = line[len(prefix) :].strip()
    return found


@pytest.fixture(scope="module")
def expected_count(tpch_dir: Path) -> dict[str, str]:
    """The slow queries' answers, counted cheaply: per key, rows on one side times the other."""
    from datafusion import SessionContext

    ctx = SessionContext()
    ctx.register_parquet("lineitem", str(tpch_dir / "lineitem"))
    sides = ctx.sql(
        "select l_linestatus, count(*) filter (where l_orderkey < 30000) as a, count(*) as b "
        "from lineitem group by l_linestatus"
    ).to_pylist()
    return {
        SLOW_SQL: str(sum(row["a"] * row["b"] for row in sides)),
        HEAVY_SQL: str(sum(row["b"] * row["b"] for row in sides)),
    }


@pytest.fixture(scope="module")
def live_cluster(tpch_dir: Path) -> Iterator[Cluster]:
    processes: list[subprocess.Popen[str]] = []
    try:
        workers, metrics = [], []
        for _ in range(2):
            worker = subprocess.Popen(
                [*CLI, "worker", "--port", "0", "--metrics-port", "0", "--data-root", tpch_dir],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            processes.append(worker)
            lines = _read_prefixed(
                worker, ["otel-dist worker metrics on ", "otel-dist worker listening on "]
            )
            workers.append(lines["otel-dist worker listening on "])
            metrics.append(lines["otel-dist worker metrics on "])
        coordinator = subprocess.Popen(
            [
                *CLI,
                "coordinator",
                "--port",
                "0",
                "--http-port",
                "0",
                "--explain-log",
                "off",
                "--workers",
                ",".join(workers),
                "--data",
                str(tpch_dir),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        processes.append(coordinator)
        lines = _read_prefixed(
            coordinator,
            ["otel-dist coordinator listening on ", "otel-dist coordinator query pages on "],
        )
        pages = lines["otel-dist coordinator query pages on "].removesuffix("/queries")
        yield Cluster(lines["otel-dist coordinator listening on "], pages, workers, metrics)
    finally:
        for process in reversed(processes):
            stop(process)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
    return json.loads(body) if url.endswith(".json") else body


def _start_query(cluster: Cluster, *extra: str, sql: str = SLOW_SQL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "query", "--coordinator", cluster.coordinator, "-e", sql, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _running_query(cluster: Cluster, sql: str = SLOW_SQL) -> str:
    def running() -> str | None:
        listed = _get(f"{cluster.pages}/queries.json")
        ids = [q["query_id"] for q in listed if q["status"] == "running" and q["sql"] == sql]
        return ids[0] if ids else None

    return wait_until(running, 60, "the slow query listed as running", every=0.2)


def _tasks(tree: dict[str, Any]) -> list[dict[str, Any]]:
    pending, tasks = list(tree["stages"]), []
    while pending:
        stage = pending.pop()
        tasks.extend(stage["tasks"])
        pending.extend(stage["children"])
    return tasks


def _rows_so_far(tree: dict[str, Any]) -> int:
    """Rows produced so far: for each task, the most any of its operators produced."""
    total = 0
    for task in _tasks(tree):
        best, pending = task["metrics"].get("output_rows", 0), list(task["operators"])
        while pending:
            operator = pending.pop()
            best = max(best, operator["metrics"].get("output_rows", 0))
            pending.extend(operator["children"])
        total += best
    return total


def _top_once(cluster: Cluster) -> str:
    done = subprocess.run(
        [*CLI, "top", "--coordinator", cluster.coordinator, "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_running_query_is_watched_live(
    live_cluster: Cluster, expected_count: dict[str, str]
) -> None:
    query = _start_query(live_cluster, sql=HEAVY_SQL)
    try:
        query_id = _running_query(live_cluster, HEAVY_SQL)

        def growing() -> tuple[dict[str, Any], dict[str, Any]] | None:
            first = _get(f"{live_cluster.pages}/queries/{query_id}.json")
            if not any(t["status"] == "running" for t in _tasks(first)):
                return None
            time.sleep(0.5)
            second = _get(f"{live_cluster.pages}/queries/{query_id}.json")
            return (first, second) if _rows_so_far(second) > _rows_so_far(first) > 0 else None

        first, second = wait_until(growing, 60, "rows growing between two polls", every=0.2)
        assert first["status"] == second["status"] == "running"
        assert first["query_id"] == query_id and first["sql"] == HEAVY_SQL
        for task in _tasks(second):
            assert task["status"] in TASK_STATUSES
            assert task["worker"] in live_cluster.workers
            assert isinstance(task["metrics"], dict)
        assert any(t["status"] == "running" and t["duration_ns"] > 0 for t in _tasks(second))

        # the worker gauges Prometheus scrapes count what top shows
        def gauges_agree() -> bool:
            status = _cluster_status(live_cluster)
            running = {w["url"]: w["running_tasks"] for w in status["workers"]}
            scraped = {
                url: scrape(metrics).get("otel_dist_task_active", -1.0)
                for url, metrics in zip(
                    live_cluster.workers, live_cluster.worker_metrics, strict=True
                )
            }
            again = {w["url"]: w["running_tasks"] for w in _cluster_status(live_cluster)["workers"]}
            return (
                running == again
                and scraped == {u: float(n) for u, n in running.items()}
                and sum(running.values()) > 0
            )

        wait_until(gauges_agree, 30, "task gauges equal to top's running tasks", every=0.3)
        assert f"data-query='{query_id}' data-status='running'" in _get(
            f"{live_cluster.pages}/queries"
        )

        # the console, from the coordinator's address alone
        top = _top_once(live_cluster)
        for worker in live_cluster.workers:
            assert worker in top
        assert query_id in top

        out, err = query.communicate(timeout=300)
        assert query.returncode == 0, err
        assert expected_count[HEAVY_SQL] in out.replace(",", "")
        assert "tasks done" not in err  # stderr is no terminal: no progress drawn
        listed = {q["query_id"]: q for q in _get(f"{live_cluster.pages}/queries.json")}
        assert listed[query_id]["status"] == "ok"
        assert f"data-query='{query_id}'" in _get(f"{live_cluster.pages}/queries")
        assert "no query in flight" in _top_once(live_cluster)
    finally:
        stop(query)


def _cluster_status(cluster: Cluster) -> dict[str, Any]:
    import pyarrow.flight as flight

    client = flight.connect(cluster.coordinator)
    try:
        results = client.do_action(flight.Action("cluster_status", b""))
        return json.loads(b"".join(r.body.to_pybytes() for r in results))
    finally:
        client.close()


def _cancel(cluster: Cluster, query_id: str) -> None:
    import pyarrow.flight as flight

    client = flight.connect(cluster.coordinator)
    try:
        body = json.dumps({"query_id": query_id}).encode()
        list(client.do_action(flight.Action("cancel_query", body)))
    finally:
        client.close()


def test_the_live_page_in_chromium(live_cluster: Cluster, tmp_path: Path) -> None:
    query = _start_query(live_cluster, "--no-progress")
    try:
        query_id = _running_query(live_cluster)
        wait_until(
            lambda: any(
                t["status"] == "running"
                for t in _tasks(_get(f"{live_cluster.pages}/queries/{query_id}.json"))
            ),
            60,
            "a running task",
        )
        page = f"{live_cluster.pages}/queries/{query_id}"
        html = _get(page)
        assert "http-equiv='refresh'" in html  # reloads itself while the query runs
        dom = _chromium(page, tmp_path / "dom", "--dump-dom").stdout
        assert "status-running" in dom and query_id in dom
        assert re.search(r'class="bar running"[^>]*data-task="\d+/\d+"', dom)
        assert _get(f"{live_cluster.pages}/queries/{query_id}.json")["status"] == "running"
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "live-query-page.png"
        _chromium(page, tmp_path / "shot", f"--screenshot={screenshot}")
        assert screenshot.stat().st_size > 10_000
        _cancel(live_cluster, query_id)
        query.communicate(timeout=60)
        assert query.returncode != 0
    finally:
        stop(query)


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a page of the coordinator (the profile page test opens files)."""
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)


def _tmux(socket: str, *args: str) -> str:
    """A tmux command on the test's own server (started with this process's environment)."""
    return subprocess.run(
        ["tmux", "-L", socket, *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def _pane_with(socket: str, *patterns: str) -> str | None:
    """The screen, once every pattern (a regular expression) is on it."""
    pane = _tmux(socket, "capture-pane", "-p", "-t", "main")
    return pane if all(re.search(p, pane, re.MULTILINE) for p in patterns) else None


def test_terminal_progress_under_tmux(
    live_cluster: Cluster, expected_count: dict[str, str]
) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: run `apt-get install -y tmux`")
    socket = f"otel-dist-test-{os.getpid()}"
    command = " ".join(
        [*CLI, "query", "--coordinator", live_cluster.coordinator, "-e", f'"{SLOW_SQL}"']
    )
    _tmux(socket, "new-session", "-d", "-s", "main", "-x", "150", "-y", "40")
    try:
        _tmux(socket, "send-keys", "-t", "main", f"{command}; echo EXIT=$?", "Enter")
        screen = wait_until(
            lambda: _pane_with(socket, "tasks done", r"^\d+ .*join.* \d+/\d+ "),
            60,
            "the progress display",
            every=0.2,
        )
        assert re.search(r"^query [0-9a-f]{12}  running", screen, re.MULTILINE), screen
        finished = wait_until(
            lambda: _pane_with(socket, r"^EXIT=\d+"), 300, "the query to end", every=0.5
        )
        assert re.search(r"^EXIT=0", finished, re.MULTILINE), finished
        assert expected_count[SLOW_SQL] in finished.replace(",", "")
        assert "tasks done" not in finished  # the display is gone once the result prints

        # --no-progress: nothing drawn while it runs
        _tmux(socket, "send-keys", "-t", "main", "clear", "Enter")
        _tmux(socket, "send-keys", "-t", "main", f"{command} --no-progress; echo DONE=$?", "Enter")
        _running_query(live_cluster)
        time.sleep(1.5)
        assert "tasks done" not in _tmux(socket, "capture-pane", "-p", "-t", "main")
        _tmux(socket, "send-keys", "-t", "main", "C-c")  # cancels the query: no need to wait
        wait_until(lambda: _pane_with(socket, r"^DONE=130"), 60, "the cancelled query", every=0.3)
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], check=False, timeout=30)


def test_stage_state_changes_are_span_events(cluster: LocalCluster) -> None:
    result = cluster.execute("select l_returnflag, count(*) from lineitem group by l_returnflag")
    assert result.telemetry is not None
    stages = [s for s in result.telemetry.spans if s.name == c.SPAN_STAGE]
    assert len(stages) == len(result.plan.stages)
    for span in stages:
        assert span.events == ("scheduled", "running", "finished")


@pytest.mark.slow  # a second cluster and a whole slow query; query's display is the same code
def test_local_draws_progress_under_tmux(tpch_dir: Path, expected_count: dict[str, str]) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: run `apt-get install -y tmux`")
    socket = f"otel-dist-local-{os.getpid()}"
    command = " ".join(
        [*CLI, "local", "--workers", "2", "--data", str(tpch_dir), "-e", f'"{SLOW_SQL}"']
    )
    _tmux(socket, "new-session", "-d", "-s", "main", "-x", "150", "-y", "40")
    try:
        _tmux(socket, "send-keys", "-t", "main", f"{command}; echo EXIT=$?", "Enter")
        wait_until(
            lambda: _pane_with(socket, "tasks done", r"^\d+ .*join.* \d+/\d+ "),
            90,
            "the progress display of otel-dist local",
            every=0.2,
        )
        ended = wait_until(lambda: _pane_with(socket, r"^EXIT=\d+"), 300, "local to end", every=0.5)
        assert re.search(r"^EXIT=0", ended, re.MULTILINE), ended
        assert expected_count[SLOW_SQL] in ended.replace(",", "")
        assert "tasks done" not in ended  # gone once the result prints
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], check=False, timeout=30)


def test_top_names_an_unreachable_coordinator_in_one_line() -> None:
    done = subprocess.run(
        [*CLI, "top", "--coordinator", "grpc://127.0.0.1:9", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "otel-dist: error: coordinator grpc://127.0.0.1:9 is unreachable"
    ]


def test_top_takes_the_token(tpch_dir: Path, tmp_path: Path) -> None:
    token = "live-progress-test-token"
    env = {k: v for k, v in os.environ.items() if k != AUTH_TOKEN_ENV}
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    with remote_cluster(tpch_dir, env={**env, AUTH_TOKEN_ENV: token}) as (coordinator, worker):

        def top(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*CLI, "top", "--coordinator", coordinator, "--once", *extra],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )

        allowed = top("--auth-token-file", str(token_file))
        assert allowed.returncode == 0, allowed.stderr
        assert worker in allowed.stdout and "no query in flight" in allowed.stdout
        refused = top()
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1
        assert "unauthenticated" in refused.stderr.lower() or "token" in refused.stderr.lower()


def test_top_refreshes_until_interrupted(live_cluster: Cluster) -> None:
    socket = f"otel-dist-top-{os.getpid()}"
    command = " ".join(
        [*CLI, "top", "--coordinator", live_cluster.coordinator, "--interval", "0.5"]
    )
    _tmux(socket, "new-session", "-d", "-s", "main", "-x", "150", "-y", "40")
    try:
        _tmux(socket, "send-keys", "-t", "main", f"{command}; echo EXIT=$?", "Enter")
        workers = [re.escape(url) + r".* up " for url in live_cluster.workers]
        wait_until(lambda: _pane_with(socket, *workers), 60, "top's worker rows", every=0.2)
        query = _start_query(live_cluster, "--no-progress")
        try:
            query_id = _running_query(live_cluster)
            wait_until(lambda: _pane_with(socket, query_id), 30, "the query in top", every=0.2)
            _cancel(live_cluster, query_id)
            query.communicate(timeout=60)
        finally:
            stop(query)
        wait_until(
            lambda: _pane_with(socket, "no query in flight"), 30, "top to drop it", every=0.2
        )
        _tmux(socket, "send-keys", "-t", "main", "C-c")
        wait_until(lambda: _pane_with(socket, r"^EXIT=0"), 30, "top to exit", every=0.2)
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], check=False, timeout=30)
