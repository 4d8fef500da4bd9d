"""The command line at its edges: every bad address and busy port is one line naming it with
exit code 1, querying a worker's port says so, ``--help`` describes every option, and a
collector that is down costs one warning line and little time."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CLI, free_port, start_worker, stop


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def _one_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("otel-dist: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_busy_ports_are_one_line_naming_them(busy_port: int, tpch_dir: Path) -> None:
    port = str(busy_port)
    _one_line(_cli("worker", "--port", port), "worker port", port, "already in use")
    data = ("--data", str(tpch_dir))
    _one_line(_cli("coordinator", "--port", port, *data), "coordinator port", port, "in use")
    _one_line(_cli("coordinator", "--port", "0", "--http-port", port, *data), "--http-port", port)
    _one_line(
        _cli("coordinator", "--port", "0", "--metrics-port", port, *data), "--metrics-port", port
    )


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("http://127.0.0.1:5", ["--coordinator", "http://"]),
        ("127.0.0.1", ["--coordinator", "host:port"]),
        ("127.0.0.1:notaport", ["--coordinator", "notaport"]),
        ("127.0.0.1:70000", ["--coordinator", "70000"]),
        ("grpc://local host:5", ["--coordinator", "'local host' is not a host name"]),
    ],
)
def test_bad_coordinator_addresses_are_one_line(address: str, words: list[str]) -> None:
    _one_line(_cli("query", "--coordinator", address, "-e", "select 1"), *words)


def test_every_address_form_reaches_the_coordinator(tpch_dir: Path) -> None:
    worker, worker_url = start_worker("--port", "0", "--data-root", str(tpch_dir))
    port = free_port()
    host_port = worker_url.removeprefix("grpc://")
    coordinator = subprocess.Popen(
        [*CLI, "coordinator", "--port", str(port), "--workers", host_port, "--data", str(tpch_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert coordinator.stdout is not None
        assert "listening" in coordinator.stdout.readline()
        for address in (f"127.0.0.1:{port}", f"localhost:{port}", f"grpc://127.0.0.1:{port}"):
            done = _cli("query", "--coordinator", address, "-e", "select count(*) from nation")
            assert done.returncode == 0 and "25" in done.stdout, (address, done.stderr)
        # Nothing listens there: unreachable, in one line.
        _one_line(
            _cli("query", "--coordinator", f"localhost:{free_port()}", "-e", "select 1"),
            "unreachable",
        )
        # A worker's address given as the coordinator's.
        _one_line(
            _cli("query", "--coordinator", host_port, "-e", "select 1"),
            "that address is a worker, not a coordinator",
        )
    finally:
        _, err = stop(coordinator)
        stop(worker)
    assert "Traceback" not in err, err


def test_bad_worker_addresses_are_one_line(tpch_dir: Path) -> None:
    data = ("--data", str(tpch_dir))
    _one_line(_cli("coordinator", "--port", "0", "--workers", "http://x:1", *data), "--workers")
    _one_line(_cli("coordinator", "--port", "0", "--workers", "x", *data), "--workers", "host:port")
    _one_line(_cli("coordinator", "--port", "0", "--workers-dns", "x", *data), "--workers-dns")
    _one_line(_cli("worker", "--port", "0", "--coordinator", "https://x:1"), "--coordinator")


def test_help_describes_every_option() -> None:
    top = _cli("--help")
    assert top.returncode == 0
    assert "OpenTelemetry" in top.stdout and "traces, metrics" in top.stdout
    commands = [
        "demo",
        "tpchgen",
        "tpcdsgen",
        "local",
        "worker",
        "coordinator",
        "query",
        "explain",
        "bench",
    ]
    for command in commands:
        done = _cli(command, "--help")
        assert done.returncode == 0, done.stderr
        text = done.stdout.split("options:", 1)[1]
        # Every option line (two spaces then a dash) is followed by some description.
        entries = [e for e in text.split("\n  -")[1:] if not e.startswith("h, --help")]
        for entry in entries:
            flag, _, rest = entry.strip().partition("  ")
            described = rest.strip() or entry.split("\n", 1)[-1].strip()
            assert described and not described.startswith("-"), (command, flag)
    worker_help = " ".join(_cli("worker", "--help").stdout.split())
    assert "(default: 50051)" in worker_help and "(default: 127.0.0.1)" in worker_help
    query_help = " ".join(_cli("query", "--help").stdout.split())
    assert "seconds" in query_help and "(default: 600.0)" in query_help
    assert ".jsonl" in query_help


def test_a_collector_that_is_down_costs_one_line_and_little_time(tpch_dir: Path) -> None:
    args = ("local", "--workers", "2", "--data", str(tpch_dir), "-e", "select count(*) from nation")
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    started = time.monotonic()
    healthy = _cli(*args, env=base)
    healthy_s = time.monotonic() - started
    assert healthy.returncode == 0, healthy.stderr
    down = {
        **base,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
    }
    started = time.monotonic()
    done = _cli(*args, env=down)
    down_s = time.monotonic() - started
    print(f"collector down: {down_s:.1f}s, without telemetry: {healthy_s:.1f}s")
    assert done.returncode == 0, done.stderr
    assert "25" in done.stdout
    warnings = done.stderr.strip().splitlines()
    assert len(warnings) <= 1, done.stderr
    assert all("telemetry export is failing" in line for line in warnings), warnings
    # Was 20 s against 3 (5 s per exporter shutdown, 10 s for a worker to exit).
    assert down_s < healthy_s + 5, (down_s, healthy_s)


def test_a_failing_query_on_local_is_one_line(tpch_dir: Path) -> None:
    """The workers share local's terminal: the failure is said once, by the coordinator."""
    done = _cli(
        "local",
        "--workers",
        "2",
        "--data",
        str(tpch_dir),
        "-e",
        "select l_orderkey / (l_linenumber - l_linenumber) from lineitem",
    )
    _one_line(done, "Divide by zero", "stage 1 task")


def test_a_query_that_fails_prints_its_error_and_no_table(tpch_dir: Path) -> None:
    """The result's columns arrive before the failure; no empty table is drawn above the
    error (its only worker is not there)."""
    port = free_port()
    coordinator = subprocess.Popen(
        [
            *CLI,
            "coordinator",
            "--port",
            str(port),
            "--workers",
            f"127.0.0.1:{free_port()}",
            "--data",
            str(tpch_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert coordinator.stdout is not None
        assert "listening" in coordinator.stdout.readline()
        done = _cli(
            "query", "--coordinator", f"127.0.0.1:{port}", "-e", "select count(*) from nation"
        )
        _one_line(done, "no worker is usable")
        assert done.stdout == "", done.stdout
    finally:
        stop(coordinator)
