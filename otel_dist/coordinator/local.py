"""A local cluster: N worker processes on 127.0.0.1 and an in-process coordinator."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import pyarrow as pa

from otel_dist.coordinator.core import Coordinator, CoordinatorConfig, QueryResult
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.model import DistributedPlan
from otel_dist.telemetry.setup import Telemetry, TelemetryConfig
from otel_dist.worker.process import READY_PREFIX


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
    ) -> None:
        """``env`` is the environment of the workers and of the coordinator's telemetry
        settings (the ``OTEL_*`` variables); it defaults to this process's environment."""
        if workers < 1:
            raise ClusterError("a local cluster needs at least one worker")
        Catalog.from_folder(data)  # fail fast on a bad data folder, before starting processes
        self.worker_count = workers
        self.data = str(Path(data).expanduser().resolve())
        self.tasks_per_stage = tasks_per_stage
        self.target_partitions = target_partitions
        self.memory_budget_bytes = memory_budget_bytes
        self.start_timeout_s = start_timeout_s
        self.env = env
        self.processes: list[subprocess.Popen[str]] = []
        self.worker_urls: list[str] = []
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
            for _ in range(self.worker_count):
                self.processes.append(self._spawn())
            deadline = time.monotonic() + self.start_timeout_s
            self.worker_urls = [self._await_ready(p, deadline) for p in self.processes]
            self._coordinator = Coordinator(
                CoordinatorConfig(
                    workers=tuple(self.worker_urls),
                    data=self.data,
                    tasks_per_stage=self.tasks_per_stage,
                    target_partitions=self.target_partitions,
                ),
                Telemetry(TelemetryConfig.from_env("otel-dist-coordinator", self.env)),
            )
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> subprocess.Popen[str]:
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
        env = dict(os.environ if self.env is None else self.env)
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env
        )

    @staticmethod
    def _await_ready(process: subprocess.Popen[str], deadline: float) -> str:
        assert process.stdout is not None
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
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX) :].strip()
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
        return self.coordinator.sql(sql)

    def execute(self, sql: str, query_id: str | None = None) -> QueryResult:
        return self.coordinator.execute(sql, query_id)

    def cancel(self, query_id: str) -> bool:
        return self.coordinator.cancel(query_id)

    def plan(self, sql: str) -> DistributedPlan:
        return self.coordinator.plan(sql)
