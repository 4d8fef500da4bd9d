"""A local cluster: N worker processes on 127.0.0.1 and an in-process coordinator."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pyarrow as pa

from otel_dist.coordinator.core import Coordinator, CoordinatorConfig, QueryResult
from otel_dist.explain.statements import ExplainAnalysis, explain_analyze, run_sql
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.model import DistributedPlan
from otel_dist.telemetry.metrics import MetricsConfig, start_process_telemetry
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
        memory_budget_bytes: int | None = None,
        start_timeout_s: float = 30.0,
        env: dict[str, str] | None = None,
        metrics_ports: bool | Sequence[int] = False,
    ) -> None:
        """``env`` is the environment of the workers and of the coordinator's telemetry
        settings (the ``OTEL_*`` variables); it defaults to this process's environment.

        ``metrics_ports`` serves Prometheus ``/metrics`` from every worker and the coordinator
        (unless telemetry is off): ``True`` chooses free ports; a sequence gives one port per
        worker, then optionally the coordinator's (0: a free port). ``metrics_urls`` lists the
        endpoints once started, the coordinator's first. When ``env`` selects the Prometheus
        exporter (``OTEL_METRICS_EXPORTER``), free ports are chosen too: processes on one host
        cannot share ``OTEL_EXPORTER_PROMETHEUS_PORT``."""
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
        self.memory_budget_bytes = memory_budget_bytes
        self.start_timeout_s = start_timeout_s
        self.env = env
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
                self.env,
                prometheus_port=self.coordinator_metrics_port,
                prometheus_host="127.0.0.1",
            )
            self.coordinator_metrics_url = metrics.prometheus_url
            self._coordinator = Coordinator(
                CoordinatorConfig(
                    workers=tuple(self.worker_urls),
                    data=self.data,
                    tasks_per_stage=self.tasks_per_stage,
                    target_partitions=self.target_partitions,
                ),
                telemetry,
                metrics,
            )
        except BaseException:
            self.stop()
            raise

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
        ]
        if self.memory_budget_bytes is not None:
            command += ["--memory-budget", str(self.memory_budget_bytes)]
        if self.worker_metrics_ports is not None:
            command += ["--metrics-port", str(self.worker_metrics_ports[index])]
        env = dict(os.environ if self.env is None else self.env)
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env
        )

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
