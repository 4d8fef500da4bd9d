"""Every ``OTEL_DIST_*`` setting is declared once (``otel_dist/settings.py``), documented in the
README's table, read the same way everywhere, and a bad value is one line naming it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from otel_dist.coordinator.core import CoordinatorConfig
from otel_dist.explain.recent import QueryLogConfig
from otel_dist.planner.distribute import broadcast_threshold_from_env
from otel_dist.settings import SETTINGS, SettingError, markdown_table, read
from otel_dist.telemetry.setup import TelemetryConfig
from otel_dist.worker.server import WorkerConfig
from tests.support import CLI

ROOT = Path(__file__).resolve().parent.parent


def test_every_variable_the_code_names_is_declared() -> None:
    named = {
        name
        for path in (ROOT / "otel_dist").rglob("*.py")
        for name in re.findall(r"OTEL_DIST_[A-Z_]*[A-Z]", path.read_text())
    }
    assert named - set(SETTINGS) == set()


def test_the_readme_table_is_the_registry() -> None:
    assert markdown_table() in (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("OTEL_DIST_MAX_SQL_BYTES", "1 MiB"),
        ("OTEL_DIST_MAX_SQL_DEPTH", "0"),
        ("OTEL_DIST_BROADCAST_THRESHOLD", "-1"),
        ("OTEL_DIST_TELEMETRY", "maybe"),
        ("OTEL_DIST_EXPLAIN_LOG", "loud"),
        ("OTEL_DIST_EXPLAIN_LOG_SLOW_MS", "slow"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(name: str, bad: str) -> None:
    with pytest.raises(SettingError) as caught:
        read(name, {name: bad})
    message = str(caught.value)
    assert message.startswith(f"{name} must be ") and "\n" not in message
    assert repr(bad) in message


def test_every_reader_goes_through_the_registry() -> None:
    env = {
        "OTEL_DIST_TELEMETRY": "off",
        "OTEL_DIST_TELEMETRY_MAX_BYTES": "4096",
        "OTEL_DIST_EXPLAIN_LOG": "ALL",
        "OTEL_DIST_EXPLAIN_LOG_SLOW_MS": "250",
    }
    telemetry = TelemetryConfig.from_env("x", env)
    assert not telemetry.enabled and telemetry.envelope_limit_bytes == 4096
    assert QueryLogConfig.from_env("off", env) == QueryLogConfig("all", 250.0)
    assert QueryLogConfig.from_env("off", {}) == QueryLogConfig("off", 1000.0)
    with pytest.raises(SettingError, match="OTEL_DIST_TELEMETRY_MAX_BYTES"):
        TelemetryConfig.from_env("x", {"OTEL_DIST_TELEMETRY_MAX_BYTES": "lots"})


def test_the_library_honours_the_limits_the_cli_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_DIST_MAX_SQL_BYTES", "77")
    monkeypatch.setenv("OTEL_DIST_BROADCAST_THRESHOLD", "5")
    assert CoordinatorConfig(workers=(), data="x").max_sql_bytes == 77
    assert CoordinatorConfig(workers=(), data="x", max_sql_bytes=9).max_sql_bytes == 9
    assert broadcast_threshold_from_env() == 5


def test_the_cli_says_a_bad_setting_in_one_line() -> None:
    done = subprocess.run(
        [*CLI, "query", "--coordinator", "127.0.0.1:1", "-e", "select 1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"OTEL_DIST_MAX_RESULT_BYTES": "2GB", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "otel-dist: error: OTEL_DIST_MAX_RESULT_BYTES must be a positive whole number, got '2GB'"
    )


def test_reads_between_workers_outlast_the_query_timeout() -> None:
    """A long stage is ended by its query's timeout, never by a read's deadline first (300 s
    reads failed TPC-DS Q72 at SF 1 in the middle of a query the coordinator still ran)."""
    worker = WorkerConfig()
    coordinator = CoordinatorConfig(workers=(), data=".")
    assert worker.read_timeout_s > coordinator.query_timeout_s
    assert worker.query_ttl_s >= worker.read_timeout_s
