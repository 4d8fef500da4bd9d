"""Configured limits: SQL text and results beyond them end with a clear error (Python API,
the coordinator's Flight server, and the command line through its environment variable),
and the workers drop the query."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from otel_dist.coordinator.core import Coordinator, CoordinatorConfig, QueryError, QueryRejected
from otel_dist.frontend.local import LocalCluster
from otel_dist.frontend.server import CoordinatorServer
from otel_dist.telemetry.setup import Telemetry, TelemetryConfig
from tests.support import CLI, wait_until, worker_health

SMALL = "select count(*) as n from region"


@pytest.fixture(scope="module")
def limited(cluster: LocalCluster, tpch_dir: Path) -> Iterator[Coordinator]:
    coordinator = Coordinator(
        CoordinatorConfig(
            workers=tuple(cluster.worker_urls),
            data=str(tpch_dir),
            max_sql_bytes=2_000,
            max_result_bytes=200_000,
        ),
        Telemetry(TelemetryConfig.from_env("otel-dist-coordinator", {})),
    )
    yield coordinator
    coordinator.close()


def test_sql_beyond_the_limit_is_refused(limited: Coordinator) -> None:
    long_sql = SMALL + " where " + " or ".join(["r_regionkey = 1"] * 200)
    with pytest.raises(QueryRejected, match=r"exceeds the limit of 2000 bytes \(max_sql_bytes\)"):
        limited.execute(long_sql)
    assert limited.execute(SMALL).table.column("n")[0].as_py() == 5


def test_results_beyond_the_limit_fail_and_are_dropped(
    limited: Coordinator, cluster: LocalCluster
) -> None:
    with pytest.raises(QueryError, match=r"max_result_bytes"):
        limited.execute("select * from lineitem")
    wait_until(
        lambda: all(worker_health(u)["tasks"] == 0 for u in cluster.worker_urls),
        10,
        "the workers to drop the query",
    )
    assert limited.execute(SMALL).table.num_rows == 1


def test_the_flight_server_answers_invalid_argument(limited: Coordinator) -> None:
    server = CoordinatorServer(limited)
    client = flight.FlightClient(server.url)
    options = flight.FlightCallOptions(timeout=30)
    try:
        huge = flight.Ticket(json.dumps({"sql": "select 1" + " " * 50_000}).encode())
        with pytest.raises(pa.ArrowInvalid, match="max_sql_bytes"):
            client.do_get(huge, options=options).read_all()
        long_sql = flight.Ticket(json.dumps({"sql": SMALL + " " * 3_000}).encode())
        with pytest.raises(pa.ArrowInvalid, match="max_sql_bytes"):
            client.do_get(long_sql, options=options).read_all()
        too_big = flight.Ticket(json.dumps({"sql": "select * from orders"}).encode())
        with pytest.raises(flight.FlightServerError, match="max_result_bytes"):
            client.do_get(too_big, options=options).read_all()
    finally:
        client.close()
        server.shutdown()


def test_the_command_line_takes_limits_from_the_environment(tpch_dir: Path) -> None:
    env = {**os.environ, "OTEL_DIST_MAX_RESULT_BYTES": "10000"}
    result = subprocess.run(
        [*CLI, "local", "--workers", "2", "--data", str(tpch_dir), "-e", "select * from orders"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "max_result_bytes" in lines[0], result.stderr
    result = subprocess.run(
        [*CLI, "local", "--data", str(tpch_dir), "--max-sql-bytes", "10", "-e", SMALL],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "max_sql_bytes" in result.stderr, result.stderr
