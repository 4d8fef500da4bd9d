"""Faults with real processes: a worker killed mid-query, workers that leave and come back,
a collector that is down, slow or absent, and clients that go away (Flight disconnect and
Ctrl-C on ``otel-dist query``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.flight as flight
import pytest

from otel_dist import tpch
from otel_dist.coordinator.core import (
    Coordinator,
    CoordinatorConfig,
    FinishedQuery,
    QueryError,
)
from otel_dist.frontend.local import LocalCluster
from otel_dist.frontend.server import CoordinatorServer
from otel_dist.protocol import BucketTicket
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.setup import Telemetry, TelemetryConfig
from otel_dist.testing.otlp_receiver import OtlpReceiver
from tests.flight_proxy import FlightProxy
from tests.oracle import assert_same_rows, single_node
from tests.support import (
    CLI,
    free_port,
    metric_sum,
    scrape,
    start_worker,
    stop,
    wait_until,
    worker_health,
)

CROSS_JOIN = "select a.l_orderkey, b.l_comment from lineitem a cross join lineitem b"
FAIL_BOUND_S = 15.0


def _quiet_telemetry() -> Telemetry:
    return Telemetry(TelemetryConfig.from_env("otel-dist-coordinator", {}))


def _task_workers(result: object) -> set[str]:
    spans = result.telemetry.spans  # type: ignore[attr-defined]
    return {str(s.attributes[c.WORKER_URL]) for s in spans if s.name == c.SPAN_TASK}


def _idle(urls: list[str]) -> bool:
    """Every worker holds no task and no query any more."""
    return all(worker_health(url)["tasks"] == 0 for url in urls)


def _run_in_thread(target: object, *args: object) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(target(*args))  # type: ignore[operator]
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# ---- a worker killed mid-query ---------------------------------------------------------------


def test_killed_worker_fails_the_query_fast_and_the_next_runs_elsewhere(tpch_dir: Path) -> None:
    with OtlpReceiver() as receiver:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with LocalCluster(workers=3, data=tpch_dir, env=env, min_task_bytes=0) as cluster:
            urls = list(cluster.worker_urls)
            victim, survivors = urls[1], [urls[0], urls[2]]
            thread, outcome = _run_in_thread(cluster.explain_analyze, CROSS_JOIN)
            wait_until(
                lambda: any(worker_health(u)["running_tasks"] for u in urls),
                20,
                "the cross join to run",
            )
            time.sleep(0.5)  # well inside the query: its leaves are done, the join runs
            cluster.processes[1].kill()
            killed = time.monotonic()
            thread.join(FAIL_BOUND_S + 30)
            elapsed = time.monotonic() - killed
            assert not thread.is_alive(), "the query never ended"
            error = outcome[0]
            assert isinstance(error, QueryError), error
            assert elapsed < FAIL_BOUND_S, f"the query failed only after {elapsed:.1f}s"
            message = str(error)
            assert victim in message, message
            assert re.search(r"stage \d+ task \d+", message), message

            # EXPLAIN ANALYZE of the failed query: what ran, and where it failed.
            analysis = error.analysis  # type: ignore[attr-defined]
            text = analysis.text()
            assert "Error:" in text and victim in text, text
            assert "finished" in text or "cancelled" in text, text

            # The surviving workers dropped the query's tasks and buffers.
            wait_until(lambda: _idle(survivors), 10, "the survivors to drop the query")

            # The spans of tasks that finished on the survivors reached the collector.
            query_id = error.telemetry.query_id  # type: ignore[attr-defined]

            def finished_task_spans() -> list[object]:
                return [
                    s
                    for s in receiver.spans()
                    if s.name == c.SPAN_TASK
                    and s.attributes.get(c.QUERY_ID) == query_id
                    and s.attributes.get(c.TASK_STATUS) == "finished"
                    and s.attributes.get(c.WORKER_URL) in survivors
                ]

            wait_until(finished_task_spans, 15, "finished tasks' spans at the collector")

            # The next query runs on the healthy workers, correctly.
            sql = tpch.query(1)
            started = time.monotonic()
            result = cluster.execute(sql)
            assert time.monotonic() - started < 30
            assert_same_rows(result.table, single_node(tpch_dir, sql), ordered=True)
            assert _task_workers(result) <= set(survivors)
            assert result.telemetry is not None and not result.telemetry.lost_tasks
            assert cluster.coordinator.worker_health.healthy() == survivors


def test_unreachable_worker_is_left_out_when_submitting(
    cluster: LocalCluster, tpch_dir: Path
) -> None:
    """No background probe has run yet: the submission finds the dead worker, and the query
    is placed again on the others."""
    dead = f"grpc://127.0.0.1:{free_port()}"
    coordinator = Coordinator(
        CoordinatorConfig(
            workers=(dead, *cluster.worker_urls), data=str(tpch_dir), health_interval_s=0
        ),
        _quiet_telemetry(),
    )
    try:
        sql = tpch.query(6)
        result = coordinator.execute(sql)
        assert_same_rows(result.table, single_node(tpch_dir, sql), ordered=False)
        assert dead not in _task_workers(result)
        assert coordinator.worker_health.healthy() == list(cluster.worker_urls)
    finally:
        coordinator.close()


def test_a_read_refused_before_its_first_message_is_retried(
    cluster: LocalCluster, tpch_dir: Path
) -> None:
    """A connection that fails before a bucket's first message (seen once in CI between two
    healthy workers) costs a retry, not the query: every first read of every bucket, by the
    workers and by the coordinator, is refused once."""
    proxies = [FlightProxy(url, refuse_first_reads=True) for url in cluster.worker_urls]
    coordinator = Coordinator(
        CoordinatorConfig(workers=tuple(p.url for p in proxies), data=str(tpch_dir)),
        _quiet_telemetry(),
    )
    try:
        sql = tpch.query(5)
        result = coordinator.execute(sql)
        assert_same_rows(result.table, single_node(tpch_dir, sql), ordered=True)
        stages = {BucketTicket.from_bytes(t).stage_id for p in proxies for t in p.refused}
        assert len(stages) == len(result.plan.stages), "every stage's reads were refused once"
    finally:
        coordinator.close()
        for proxy in proxies:
            proxy.shutdown()


def test_a_worker_that_returns_is_used_again(cluster: LocalCluster, tpch_dir: Path) -> None:
    port = free_port()
    args = ("--port", str(port), "--data-root", str(tpch_dir))
    process, url = start_worker(*args)
    coordinator = Coordinator(
        CoordinatorConfig(
            workers=(url, *cluster.worker_urls), data=str(tpch_dir), health_interval_s=0.2
        ),
        _quiet_telemetry(),
    )
    sql = "select l_returnflag, count(*) as n from lineitem group by l_returnflag"
    expected = single_node(tpch_dir, sql)
    try:
        result = coordinator.execute(sql)
        assert_same_rows(result.table, expected, ordered=False)
        assert url in _task_workers(result)

        stop(process)
        wait_until(lambda: url not in coordinator.worker_health.healthy(), 10, "the worker down")
        result = coordinator.execute(sql)
        assert_same_rows(result.table, expected, ordered=False)
        assert url not in _task_workers(result)

        process, again = start_worker(*args)
        assert again == url
        wait_until(lambda: url in coordinator.worker_health.healthy(), 10, "the worker back")
        result = coordinator.execute(sql)
        assert_same_rows(result.table, expected, ordered=False)
        assert url in _task_workers(result)
    finally:
        coordinator.close()
        stop(process)


def _with_worker_to_hang(
    cluster: LocalCluster, tpch_dir: Path
) -> tuple[subprocess.Popen[str], str, Coordinator]:
    """A worker of its own (to stop with SIGSTOP) and a coordinator over it and the cluster's
    workers, probing every 0.2 s with 0.5 s to answer; RPCs keep their 10 s timeout."""
    process, url = start_worker("--port", "0", "--data-root", str(tpch_dir))
    coordinator = Coordinator(
        CoordinatorConfig(
            workers=(url, *cluster.worker_urls),
            data=str(tpch_dir),
            min_task_bytes=0,  # every worker gets a scan task, the hung one too
            health_interval_s=0.2,
            health_timeout_s=0.5,
            rpc_timeout_s=10.0,
        ),
        _quiet_telemetry(),
    )
    return process, url, coordinator


def test_a_hung_worker_fails_the_query_in_bounded_time(
    cluster: LocalCluster, tpch_dir: Path
) -> None:
    """A stopped process (SIGSTOP) accepts connections but never answers: its probes time out
    and after a few of them the worker is down, failing the query that has tasks there."""
    process, url, coordinator = _with_worker_to_hang(cluster, tpch_dir)
    try:
        thread, outcome = _run_in_thread(coordinator.execute, CROSS_JOIN)
        wait_until(lambda: worker_health(url)["running_tasks"], 20, "the query to run")
        process.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        thread.join(FAIL_BOUND_S + 30)
        assert not thread.is_alive(), "the query never ended"
        assert time.monotonic() - stopped < FAIL_BOUND_S
        assert isinstance(outcome[0], QueryError) and url in str(outcome[0]), outcome[0]
        assert url not in coordinator.worker_health.healthy()
        process.send_signal(signal.SIGCONT)
        wait_until(lambda: url in coordinator.worker_health.healthy(), 10, "the worker back")
        # The release it missed while stopped reaches it now that it is back.
        wait_until(lambda: worker_health(url)["tasks"] == 0, 10, "the worker to drop the query")
    finally:
        process.send_signal(signal.SIGCONT)
        coordinator.close()
        stop(process)
    wait_until(lambda: _idle(cluster.worker_urls), 10, "the workers to drop the query")


def test_a_worker_that_hangs_during_submission_is_left_out_without_waiting_for_the_rpc(
    cluster: LocalCluster, tpch_dir: Path
) -> None:
    """Stopped just before a query, a worker is still up as far as the coordinator knows, so
    tasks are placed on it and their submission hangs. As soon as its probes find it down, the
    query is placed again on the others, well within the 10 s RPC timeout."""
    process, url, coordinator = _with_worker_to_hang(cluster, tpch_dir)
    sql = tpch.query(6)
    try:
        process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        result = coordinator.execute(sql)
        assert time.monotonic() - started < 5.0
        assert url not in coordinator.worker_health.healthy()
        assert_same_rows(result.table, single_node(tpch_dir, sql), ordered=False)
    finally:
        # Killed while still stopped: resumed, it would take in the submissions still in flight
        # to it after the query ended, which only its query TTL drops.
        process.kill()
        coordinator.close()
        stop(process)


# ---- the collector down, slow or absent -----------------------------------------------------


@pytest.mark.parametrize("fault", ["unavailable", "slow", "closed port"])
def test_collector_faults_leave_results_and_latency_alone(
    tpch_dir: Path, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queries = [tpch.query(1), tpch.query(6)]
    expected = [single_node(tpch_dir, sql) for sql in queries]
    batching = {
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_BSP_MAX_QUEUE_SIZE": "16",  # a small queue that the slow collector fills
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8",
    }
    for name, value in batching.items():  # the in-process coordinator's span processor
        monkeypatch.setenv(name, value)
    with OtlpReceiver(slow_seconds=5) as receiver:
        endpoint = receiver.endpoint if fault != "closed port" else f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "500",  # ms, per export including retries
            "OTEL_METRICS_EXPORTER": "prometheus",
        }
        with LocalCluster(workers=2, data=tpch_dir, env=env, metrics_ports=True) as cluster:

            def run_all() -> float:
                started = time.monotonic()
                for sql, want in zip(queries, expected, strict=True):
                    result = cluster.execute(sql)
                    assert_same_rows(result.table, want, ordered=True)
                    assert result.telemetry is not None and not result.telemetry.lost_tasks
                return time.monotonic() - started

            baseline = run_all() if fault != "closed port" else None
            receiver.mode = "slow" if fault == "slow" else "unavailable"
            degraded = max(run_all() for _ in range(2))
            if baseline is not None:
                assert degraded < baseline * 5 + 5, (baseline, degraded)
            assert degraded < 30

            def counted() -> bool:
                lost = 0.0
                for url in cluster.worker_metrics_urls:
                    samples = scrape(url)
                    lost += metric_sum(samples, "otel_dist_telemetry_spans_exported_total", "fail")
                    lost += metric_sum(samples, "otel_dist_telemetry_spans_dropped_total")
                return lost > 0

            wait_until(counted, 20, "failed or dropped spans in the workers' metrics", every=0.5)
            stats = cluster.coordinator.metrics.span_stats
            assert stats is not None
            wait_until(
                lambda: stats.snapshot()["failed"] + stats.snapshot()["dropped"] > 0,
                20,
                "failed or dropped spans in the coordinator's counters",
                every=0.5,
            )
            if fault == "slow":
                drops = sum(
                    metric_sum(scrape(u), "otel_dist_telemetry_spans_dropped_total")
                    for u in cluster.worker_metrics_urls
                )
                assert drops + stats.snapshot()["dropped"] > 0, "a full queue drops, counted"
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 20, "stopping waited on the collector"


# ---- clients that go away -------------------------------------------------------------------


@pytest.fixture
def served(cluster: LocalCluster, tpch_dir: Path) -> Iterator[tuple[CoordinatorServer, list]]:
    coordinator = Coordinator(
        CoordinatorConfig(workers=tuple(cluster.worker_urls), data=str(tpch_dir)),
        _quiet_telemetry(),
    )
    finished: list[FinishedQuery] = []
    coordinator.add_listener(finished.append)
    server = CoordinatorServer(coordinator)
    try:
        yield server, finished
    finally:
        server.shutdown()
        coordinator.close()


def test_a_client_that_disconnects_cancels_its_query(
    served: tuple[CoordinatorServer, list[FinishedQuery]], cluster: LocalCluster
) -> None:
    server, finished = served
    client = flight.FlightClient(server.url)
    query_id = uuid.uuid4().hex
    ticket = flight.Ticket(json.dumps({"sql": CROSS_JOIN, "query_id": query_id}).encode())
    with pytest.raises(flight.FlightTimedOutError):
        client.do_get(ticket, options=flight.FlightCallOptions(timeout=1.5)).read_all()
    client.close()
    outcome = wait_until(
        lambda: next((q for q in finished if q.query_id == query_id), None),
        FAIL_BOUND_S,
        "the abandoned query to end",
    )
    assert outcome.error is not None and "cancelled" in outcome.error
    wait_until(lambda: _idle(cluster.worker_urls), 10, "the workers to drop the query")


def test_ctrl_c_on_query_cancels_it_everywhere(
    served: tuple[CoordinatorServer, list[FinishedQuery]], cluster: LocalCluster
) -> None:
    server, finished = served
    process = subprocess.Popen(
        [*CLI, "query", "--coordinator", server.url, "-e", CROSS_JOIN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_until(
            lambda: any(worker_health(u)["running_tasks"] for u in cluster.worker_urls),
            20,
            "the query to run",
        )
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=FAIL_BOUND_S)
        assert time.monotonic() - interrupted < 10
    finally:
        stop(process)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    outcome = wait_until(lambda: finished[-1] if finished else None, 10, "the query to end")
    assert outcome.error is not None and "cancelled" in outcome.error, outcome.error
    wait_until(lambda: _idle(cluster.worker_urls), 10, "the workers to drop the query")
