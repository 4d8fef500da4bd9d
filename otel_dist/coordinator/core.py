"""The coordinator: plans a query, submits its tasks to workers, reads the root stage's output."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.flight as flight

from otel_dist.coordinator.scheduler import assign, task_specs
from otel_dist.errors import one_line
from otel_dist.exchange.clients import call_options, client_for
from otel_dist.exchange.router import StreamStats
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.distribute import Planner, PlannerOptions
from otel_dist.planner.model import DistributedPlan
from otel_dist.protocol import (
    ACTION_CANCEL_QUERY,
    ACTION_HEALTH,
    ACTION_RELEASE_QUERY,
    ACTION_SUBMIT_TASK,
    BucketSource,
    TaskSpec,
    encode_json,
)
from otel_dist.session import conform, plain_schema
from otel_dist.worker.task import read_bucket

log = logging.getLogger(__name__)


class QueryError(RuntimeError):
    """A query failed; the message names the cause (stage, task, worker, table...)."""


class WorkerUnreachable(QueryError):
    """A worker did not answer."""


@dataclass(frozen=True)
class CoordinatorConfig:
    """Settings of a coordinator."""

    workers: tuple[str, ...]
    data: str
    tasks_per_stage: int | None = None
    target_partitions: int = 2
    rpc_timeout_s: float = 10.0
    query_timeout_s: float = 600.0


@dataclass
class QueryResult:
    """A finished query: its data and how it ran."""

    query_id: str
    table: pa.Table
    plan: DistributedPlan
    started_ns: int
    ended_ns: int

    @property
    def duration_ns(self) -> int:
        return self.ended_ns - self.started_ns


class Coordinator:
    """Runs SQL over a static list of workers."""

    def __init__(self, config: CoordinatorConfig) -> None:
        if not config.workers:
            raise QueryError("no worker URLs given")
        self.config = config
        self.catalog = Catalog.from_folder(config.data)
        tasks = config.tasks_per_stage or len(config.workers)
        self.planner = Planner(self.catalog, PlannerOptions(tasks, config.target_partitions))
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="coordinator")

    def check_workers(self) -> None:
        """Raise ``WorkerUnreachable`` naming the first worker that does not answer."""
        for url in self.config.workers:
            self._action(url, ACTION_HEALTH, b"")

    def plan(self, sql: str) -> DistributedPlan:
        return self.planner.plan(sql)

    def execute(self, sql: str) -> QueryResult:
        started = time.time_ns()
        query_id = uuid.uuid4().hex
        plan = self.plan(sql)
        placement = assign(plan, list(self.config.workers))
        specs = task_specs(plan, query_id, placement)
        try:
            self._submit(specs)
            table = self._read_root(plan, query_id, placement)
        except BaseException:
            self._broadcast(query_id, ACTION_CANCEL_QUERY)
            raise
        finally:
            self._broadcast(query_id, ACTION_RELEASE_QUERY)
        return QueryResult(query_id, table, plan, started, time.time_ns())

    def sql(self, sql: str) -> pa.Table:
        return self.execute(sql).table

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- internals -----------------------------------------------------------------------

    def _submit(self, specs: list[TaskSpec]) -> None:
        futures = [
            self._pool.submit(self._action, spec.worker_url, ACTION_SUBMIT_TASK, spec.to_json())
            for spec in specs
        ]
        for future in futures:
            future.result(timeout=self.config.rpc_timeout_s * 2)

    def _read_root(
        self, plan: DistributedPlan, query_id: str, placement: dict[tuple[int, int], str]
    ) -> pa.Table:
        root = plan.root
        deadline = time.monotonic() + self.config.query_timeout_s
        sources = [
            BucketSource(placement[(root.stage_id, t)], root.stage_id, t, 0)
            for t in range(root.task_count)
        ]
        futures = [
            self._pool.submit(self._read_source, source, query_id, root.schema)
            for source in sources
        ]
        batches: list[pa.RecordBatch] = []
        for future in futures:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                batches.extend(future.result(timeout=remaining))
            except TimeoutError:
                raise QueryError(
                    f"query {query_id} timed out after {self.config.query_timeout_s:.0f}s"
                ) from None
        output = plain_schema(plan.output_schema)
        table = pa.Table.from_batches([conform(b, output) for b in batches], schema=output)
        return table

    def _read_source(
        self, source: BucketSource, query_id: str, schema: pa.Schema
    ) -> list[pa.RecordBatch]:
        try:
            return list(
                read_bucket(source, query_id, self.config.query_timeout_s, None, StreamStats())
            )
        except flight.FlightUnavailableError:
            raise WorkerUnreachable(f"worker {source.worker_url} is unreachable") from None
        except flight.FlightError as error:
            raise QueryError(one_line(error)) from None

    def _action(self, url: str, action: str, body: bytes) -> bytes:
        client = client_for(url)
        try:
            results = client.do_action(
                flight.Action(action, body), options=call_options(self.config.rpc_timeout_s)
            )
            return b"".join(r.body.to_pybytes() for r in results)
        except (flight.FlightUnavailableError, flight.FlightTimedOutError):
            raise WorkerUnreachable(f"worker {url} is unreachable") from None
        except flight.FlightError as error:
            raise QueryError(f"worker {url}: {one_line(error)}") from None

    def _broadcast(self, query_id: str, action: str) -> None:
        """Tell every worker about a query's end; failures are logged, never raised."""

        def send(url: str) -> None:
            try:
                self._action(url, action, encode_json({"query_id": query_id}))
            except QueryError as error:
                log.info("%s for query %s not delivered: %s", action, query_id, error)

        threads = [threading.Thread(target=send, args=(url,)) for url in self.config.workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.config.rpc_timeout_s)

    def health(self) -> list[dict[str, object]]:
        return [json.loads(self._action(url, ACTION_HEALTH, b"")) for url in self.config.workers]
