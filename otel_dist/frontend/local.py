"""A local cluster: N worker processes on 127.0.0.1 and an in-process coordinator.

The workers may read only the cluster's data folder (``--data-root``). With ``security``,
they serve TLS with its certificate and require an internal secret that only the cluster holds
(generated unless given), which reaches them through their environment
(``OTEL_DIST_INTERNAL_SECRET``), never their command line; its client token, if any, guards
their ``/metrics``.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import selectors
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pyarrow as pa

from otel_dist.coordinator.core import (
    DEFAULT_MAX_TOTAL_RESULT_BYTES,
    Coordinator,
    CoordinatorConfig,
    QueryResult,
)
from otel_dist.coordinator.streaming import stream_result
from otel_dist.exchange.security import (
    AUTH_TOKEN_ENV,
    INTERNAL_SECRET_ENV,
    INTERNAL_SECRET_FILE_ENV,
    NO_SECURITY,
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    SecurityConfig,
)
from otel_dist.explain.statements import ExplainAnalysis, explain_analyze, run_sql
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.model import DistributedPlan
from otel_dist.session import plain_schema
from otel_dist.settings import read
from otel_dist.telemetry.metrics import MetricsConfig, start_process_telemetry
from otel_dist.telemetry.setup import EXPORT_ERRORS_ENV
from otel_dist.worker.allocator import LOCAL_CLUSTER_ALLOCATOR_ENV, with_allocator_settings
from otel_dist.worker.memory import default_execution_memory
from otel_dist.worker.process import METRICS_PREFIX, READY_PREFIX


class ClusterError(RuntimeError):
    """The local cluster could not start."""


class LocalCluster:
    """``with LocalCluster(workers=3, data=DIR) as cluster: table = cluster.sql(sql)``."""

    def __init__(
        self,
        workers: int = 3,
        data: str | os.PathLike[str] = ".",
        *,
        tasks_per_stage: int | None = None,
        target_partitions: int = 2,
        broadcast_threshold: int | None = None,
        min_task_bytes: int | None = None,
        memory_budget_bytes: int | None = None,
        start_timeout_s: float = 30.0,
        env: dict[str, str] | None = None,
        metrics_ports: bool | Sequence[int] = False,
        security: SecurityConfig | None = None,
        internal_secret: bool | None = None,
        max_sql_bytes: int | None = None,
        max_result_bytes: int | None = None,
        max_total_result_bytes: int = DEFAULT_MAX_TOTAL_RESULT_BYTES,
        max_sql_depth: int | None = None,
        max_sql_operators: int | None = None,
        redact_sql: bool = False,
        worker_args: Sequence[str] = (),
    ) -> None:
        """``env`` is the environment of the workers and of the coordinator's telemetry
        settings (the ``OTEL_*`` variables); it defaults to this process's environment.

        ``metrics_ports`` serves Prometheus ``/metrics`` from every worker and the coordinator
        (unless telemetry is off): ``True`` chooses free ports; a sequence gives one port per
        worker, then optionally the coordinator's (0: a free port). ``metrics_urls`` lists the
        endpoints once started, the coordinator's first. When ``env`` selects the Prometheus
        exporter (``OTEL_METRICS_EXPORTER``), free ports are chosen too: processes on one host
        cannot share ``OTEL_EXPORTER_PROMETHEUS_PORT``.

        ``broadcast_threshold`` is the largest estimated join side (bytes) the planner
        broadcasts; larger sides are hash-shuffled (default: ``OTEL_DIST_BROADCAST_THRESHOLD``
        or 64 MB). ``min_task_bytes`` is the least a scan task reads: a table whose scanned
        columns are smaller is read by fewer tasks (default: ``OTEL_DIST_MIN_TASK_BYTES`` or
        64 MB; 0 splits every table into one task per worker).

        ``security`` turns on TLS and/or authentication (default: neither). The workers take
        calls carrying the internal secret only: ``security.internal_secret``, else a random
        one generated when ``internal_secret`` is true, or by default when ``security`` has a
        token or TLS (``otel-dist local`` and ``demo`` always generate one). The coordinator
        holds it; ``internal_security`` is what a test needs to call a worker itself.
        ``max_sql_bytes`` and ``max_result_bytes`` are the
        coordinator's limits, ``max_sql_depth`` and ``max_sql_operators`` the coordinator's
        and the workers' (``otel_dist.sql_limits``); unset, each is its ``OTEL_DIST_*``
        setting (``otel_dist.settings``); ``redact_sql`` replaces literals in ``db.query.text`` (as
        ``OTEL_DIST_REDACT_SQL=true`` does); ``worker_args`` are extra ``otel-dist worker``
        options."""
        if workers < 1:
            raise ClusterError("a local cluster needs at least one worker")
        if metrics_ports is False and "prometheus" in MetricsConfig.from_env(env).exporters:
            metrics_ports = True
        ports = _metrics_ports(metrics_ports, workers)
        Catalog.from_folder(data)  # fail fast on a bad data folder, before starting processes
        self.worker_count = workers
        self.data = str(Path(data).expanduser().resolve())
        self.tasks_per_stage = tasks_per_stage
        self.target_partitions = target_partitions
        self.broadcast_threshold = broadcast_threshold
        self.min_task_bytes = min_task_bytes
        self.memory_budget_bytes = memory_budget_bytes
        self.start_timeout_s = start_timeout_s
        self.env = env
        security = security or NO_SECURITY
        if internal_secret is None:
            internal_secret = security.enabled
        if internal_secret and security.internal_secret is None:
            security = dataclasses.replace(security, internal_secret=secrets.token_urlsafe(32))
        self.security = security
        self.max_sql_bytes: int = (
            read("OTEL_DIST_MAX_SQL_BYTES") if max_sql_bytes is None else max_sql_bytes
        )
        self.max_result_bytes: int = (
            read("OTEL_DIST_MAX_RESULT_BYTES") if max_result_bytes is None else max_result_bytes
        )
        self.max_total_result_bytes = max_total_result_bytes
        self.max_sql_depth: int = (
            read("OTEL_DIST_MAX_SQL_DEPTH") if max_sql_depth is None else max_sql_depth
        )
        self.max_sql_operators: int = (
            read("OTEL_DIST_MAX_SQL_OPERATORS") if max_sql_operators is None else max_sql_operators
        )
        self.redact_sql = redact_sql
        self.worker_args = tuple(worker_args)
        self.worker_metrics_ports = ports[:workers] if ports else None
        self.coordinator_metrics_port = ports[workers] if ports else None
        self.processes: list[subprocess.Popen[str]] = []
        self.worker_urls: list[str] = []
        self.worker_metrics_urls: list[str] = []
        self.coordinator_metrics_url: str | None = None
        self._coordinator: Coordinator | None = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def coordinator(self) -> Coordinator:
        if self._coordinator is None:
            raise ClusterError("the cluster is not started")
        return self._coordinator

    def start(self) -> None:
        try:
            for index in range(self.worker_count):
                self.processes.append(self._spawn(index))
            deadline = time.monotonic() + self.start_timeout_s
            ready = [self._await_ready(p, deadline) for p in self.processes]
            self.worker_urls = [url for url, _ in ready]
            self.worker_metrics_urls = [metrics for _, metrics in ready if metrics]
            telemetry, metrics = start_process_telemetry(
                "otel-dist-coordinator",
                self._child_env(),
                prometheus_port=self.coordinator_metrics_port,
                prometheus_host="127.0.0.1",
                prometheus_token=self.security.token,
            )
            self.coordinator_metrics_url = metrics.prometheus_url
            self._coordinator = Coordinator(
                CoordinatorConfig(
                    workers=tuple(self.worker_urls),
                    data=self.data,
                    tasks_per_stage=self.tasks_per_stage,
                    target_partitions=self.target_partitions,
                    broadcast_threshold=self.broadcast_threshold,
                    min_task_bytes=self.min_task_bytes,
                    max_sql_bytes=self.max_sql_bytes,
                    max_result_bytes=self.max_result_bytes,
                    max_total_result_bytes=self.max_total_result_bytes,
                    max_sql_depth=self.max_sql_depth,
                    max_sql_operators=self.max_sql_operators,
                    security=self.security,
                ),
                telemetry,
                metrics,
            )
        except BaseException:
            self.stop()
            raise

    @property
    def internal_security(self) -> SecurityConfig:
        """What a call to one of the workers needs (TLS settings, the internal secret)."""
        return self.security.internal()

    @property
    def metrics_urls(self) -> list[str]:
        """Every Prometheus ``/metrics`` endpoint of the cluster, the coordinator's first."""
        coordinator = [self.coordinator_metrics_url] if self.coordinator_metrics_url else []
        return coordinator + self.worker_metrics_urls

    def _spawn(self, index: int = 0) -> subprocess.Popen[str]:
        command = [
            sys.executable,
            "-m",
            "otel_dist.cli",
            "worker",
            "--port",
            "0",
            "--target-partitions",
            str(self.target_partitions),
            "--parent-pid",
            str(os.getpid()),
            "--data-root",
            self.data,
            "--max-sql-depth",
            str(self.max_sql_depth),
            "--max-sql-operators",
            str(self.max_sql_operators),
            # The coordinator in this process reports what fails, once: the workers' own
            # warnings would repeat it on the same terminal.
            "--log-level",
            "error",
        ]
        security = self.security
        if security.tls_cert and security.tls_key:
            command += ["--tls-cert", security.tls_cert, "--tls-key", security.tls_key]
        if security.tls_ca:
            command += ["--tls-ca", security.tls_ca]
        if security.verify_client:
            command.append("--tls-verify-client")
        if self.memory_budget_bytes is not None:
            command += ["--memory-budget", str(self.memory_budget_bytes)]
        if self.worker_metrics_ports is not None:
            command += ["--metrics-port", str(self.worker_metrics_ports[index])]
        if "--execution-memory" not in self.worker_args:
            # The workers share this machine: each gets its part of the default.
            command += ["--execution-memory", str(default_execution_memory(self.worker_count))]
        command += self.worker_args
        # A session of their own: a terminal's Ctrl-C reaches this process only, which stops
        # the workers itself (a worker still importing would otherwise print a traceback).
        return subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self._child_env(),
            start_new_session=True,
        )

    def _child_env(self) -> dict[str, str]:
        """The workers' environment (also the coordinator's telemetry settings): the given
        one, with this cluster's security and redaction settings in place of any inherited."""
        env = with_allocator_settings(
            os.environ if self.env is None else self.env, LOCAL_CLUSTER_ALLOCATOR_ENV
        )
        inherited = (AUTH_TOKEN_ENV, INTERNAL_SECRET_ENV, INTERNAL_SECRET_FILE_ENV)
        for name in (*inherited, TLS_CERT_ENV, TLS_KEY_ENV, TLS_CA_ENV):
            env.pop(name, None)
        if self.security.token is not None:  # guards the workers' /metrics
            env[AUTH_TOKEN_ENV] = self.security.token
        if self.security.internal_secret is not None:
            env[INTERNAL_SECRET_ENV] = self.security.internal_secret
        if self.redact_sql:
            env["OTEL_DIST_REDACT_SQL"] = "true"
        # A collector that is down is said once, by the coordinator (this process), not again
        # by every worker.
        env.setdefault(EXPORT_ERRORS_ENV, "off")
        return env

    @staticmethod
    def _await_ready(process: subprocess.Popen[str], deadline: float) -> tuple[str, str | None]:
        """The worker's Flight URL and its ``/metrics`` URL (announced first, if served)."""
        assert process.stdout is not None
        metrics_url: str | None = None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ClusterError("a worker process did not start in time")
                if not selector.select(remaining):
                    continue
                line = process.stdout.readline()
                if not line:
                    raise ClusterError(f"a worker process exited with code {process.wait(5)}")
                if line.startswith(METRICS_PREFIX):
                    metrics_url = line[len(METRICS_PREFIX) :].strip()
                    # The ready line follows at once and may already sit in the read buffer,
                    # where the selector cannot see it: read it without waiting for the pipe.
                    line = process.stdout.readline()
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX) :].strip(), metrics_url
        finally:
            selector.close()

    def stop(self) -> None:
        if self._coordinator is not None:
            self._coordinator.close()
            self._coordinator = None
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
        self.processes = []

    def sql(self, sql: str) -> pa.Table:
        """Run a statement: a query, or EXPLAIN [ANALYZE] [VERBOSE] returning its plan text."""
        return run_sql(self.coordinator, sql)

    def stream(self, sql: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """A query's schema and its batches as they are produced, a few held at a time
        whatever the result's size; closing the iterator early cancels the query. Planning
        errors are raised here, before any batch."""
        schema = plain_schema(self.coordinator.plan(sql).output_schema)
        return schema, stream_result(self.coordinator, sql, uuid.uuid4().hex)

    def explain_analyze(self, sql: str) -> ExplainAnalysis:
        """Run ``sql`` and return its distributed EXPLAIN ANALYZE (``.text()``, ``.to_dict()``,
        ``.html()``, ``.table``); a failed query's error carries ``.analysis``."""
        return explain_analyze(self.coordinator, sql)

    def execute(self, sql: str, query_id: str | None = None) -> QueryResult:
        return self.coordinator.execute(sql, query_id)

    def cancel(self, query_id: str) -> bool:
        return self.coordinator.cancel(query_id)

    def plan(self, sql: str) -> DistributedPlan:
        return self.coordinator.plan(sql)


def _metrics_ports(option: bool | Sequence[int], workers: int) -> list[int] | None:
    """One port per worker then the coordinator's, from ``LocalCluster(metrics_ports=...)``."""
    if isinstance(option, bool):
        return [0] * (workers + 1) if option else None
    ports = [int(port) for port in option]
    if len(ports) not in (workers, workers + 1) or any(p < 0 or p > 65535 for p in ports):
        raise ClusterError(
            f"metrics_ports needs {workers} or {workers + 1} ports in 0..65535, got {ports}"
        )
    return ports + [0] * (workers + 1 - len(ports))
