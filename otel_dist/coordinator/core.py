"""The coordinator: plans a query, submits its tasks to workers, reads the root stage's output,
and collects every task's telemetry (in-band, then by fetching what did not arrive).

Membership: the workers come from a static list, from workers that announce themselves and
from DNS names (``membership.py``); none of them needs to be up when the coordinator starts.
Faults: tasks are placed on the workers the health monitor (``health.py``) sees up; a worker
found unreachable while tasks are submitted is left out and the query placed again; a worker
that goes down while a query runs fails that query at once, with an error naming the stage,
the task and the worker, and the other workers are told to cancel and drop the query.
Limits: SQL longer than ``max_sql_bytes``, chaining or nesting operators deeper than
``max_sql_depth`` or holding more than ``max_sql_operators`` (``sql_limits.py``), and results
larger than ``max_result_bytes`` are refused; only queries run (no DDL, DML or SET statements).
Planning runs on a thread with a deep native stack (``deep_stack.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait

import pyarrow as pa
import pyarrow.flight as flight
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_dist.background import run_in_background
from otel_dist.coordinator.health import ProbeFailed, WorkerHealth, WorkerUnhealthy
from otel_dist.coordinator.membership import (
    Membership,
)
from otel_dist.coordinator.progress import ProgressTracker
from otel_dist.coordinator.query import (
    DEFAULT_MAX_TOTAL_RESULT_BYTES,
    CoordinatorConfig,
    FinishedQuery,
    QueryError,
    QueryRejected,
    QueryResult,
    QueryRun,
    QueryTelemetry,
    WorkerUnreachable,
)
from otel_dist.coordinator.query_spans import QuerySpans, stage_event
from otel_dist.coordinator.results import HeldResults, ResultReader
from otel_dist.coordinator.scheduler import assign, task_specs
from otel_dist.deep_stack import call_with_deep_stack, deep_native_stacks
from otel_dist.errors import one_line
from otel_dist.exchange.clients import REMOTE_ERRORS, call_options, client_for
from otel_dist.exchange.security import secure_url
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.distribute import (
    NotAQuery,
    Planner,
    PlannerOptions,
    broadcast_threshold_from_env,
    min_task_bytes_from_env,
)
from otel_dist.planner.model import DistributedPlan
from otel_dist.protocol import (
    ACTION_CANCEL_QUERY,
    ACTION_HEALTH,
    ACTION_RELEASE_QUERY,
    ACTION_SUBMIT_TASKS,
    TaskSpec,
    encode_json,
    encode_submission,
)
from otel_dist.sql_limits import (
    SqlLimits,
    SqlTooComplex,
)
from otel_dist.sql_limits import check as check_sql
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry import rpc
from otel_dist.telemetry.collector import SpanCollector
from otel_dist.telemetry.metrics import (
    Metrics,
    start_process_telemetry,
)
from otel_dist.telemetry.redaction import operation_name, redact_sql
from otel_dist.telemetry.relay import SpanRelay
from otel_dist.telemetry.setup import Telemetry
from otel_dist.worker.memory import IdleTrimmer

# The coordinator's public API: the class, its settings, and what a query ends with.
__all__ = [
    "DEFAULT_MAX_TOTAL_RESULT_BYTES",
    "Coordinator",
    "CoordinatorConfig",
    "FinishedQuery",
    "QueryError",
    "QueryRejected",
    "QueryResult",
    "QueryTelemetry",
    "WorkerUnreachable",
]

log = logging.getLogger(__name__)

# How often a submission in flight checks whether its worker was found down meanwhile.
_SUBMIT_POLL_S = 0.1

MAX_UNDELIVERED_RELEASES = 10_000
# Query ids of finished queries remembered so that none is reused while workers may still hold
# its tasks, telemetry or a pending release.
RECENT_QUERY_IDS = 10_000


QueryListener = Callable[[FinishedQuery], None]


class Coordinator:
    """Runs SQL over its workers (a list, registered ones, DNS names), on those that are up."""

    def __init__(
        self,
        config: CoordinatorConfig,
        telemetry: Telemetry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Spans and metrics default to the process environment's settings; a caller passing
        its own ``telemetry`` and no ``metrics`` gets no metrics."""
        self.config = config
        self.security = config.security.internal()  # what it presents to workers
        self.catalog = Catalog.from_folder(config.data)
        self._data_roots = (os.path.realpath(config.data),)  # declared in every submission
        deep_native_stacks()  # before the planner's session starts DataFusion's runtime
        # Without a fixed count, each query gets as many tasks per stage as workers are known.
        tasks = config.tasks_per_stage or max(1, len(config.workers))
        threshold = config.broadcast_threshold
        if threshold is None:
            threshold = broadcast_threshold_from_env()
        min_task_bytes = config.min_task_bytes
        if min_task_bytes is None:
            min_task_bytes = min_task_bytes_from_env()
        self.planner = Planner(
            self.catalog,
            PlannerOptions(tasks, config.target_partitions, threshold, min_task_bytes),
        )
        if telemetry is None:
            telemetry, default_metrics = start_process_telemetry(
                "otel-dist-coordinator", prometheus_token=config.security.token
            )
            metrics = metrics or default_metrics
        self.telemetry = telemetry
        self.metrics = metrics or Metrics.off()
        self.relay = (
            SpanRelay(telemetry.config) if telemetry.enabled and telemetry.config.relay else None
        )
        # Short calls to workers (submissions, releases, telemetry fetches, probes).
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="coordinator")
        self._running: dict[str, QueryRun] = {}
        self._running_lock = threading.Lock()
        self.held_results = HeldResults(config.max_total_result_bytes)
        self._finishing: set[Future[QueryTelemetry | None]] = set()  # failed, completing
        # Results and plans freed after a burst of queries go back to the operating system.
        self.trimmer = IdleTrimmer(lambda: bool(self._running)).start()
        self._listeners: list[QueryListener] = []
        self.query_metrics = self.metrics.coordinator(lambda: len(self._running))
        self.worker_health = WorkerHealth(
            [secure_url(url, config.security) for url in config.workers],
            self._probe,
            config.health_interval_s,
            config.health_timeout_s,
        )
        self.spans = QuerySpans(
            telemetry,
            self.query_metrics,
            self.relay,
            config.telemetry_fetch_timeout_s,
            self.worker_health.is_up,
            self._rpc_action,
            self._pool,
        )
        self.results = ResultReader(
            config,
            self.security,
            self.held_results,
            self.worker_health.mark_down,
            self._check_run,
        )
        self.worker_health.add_listener(self._worker_down)
        self.worker_health.add_up_listener(self._worker_back)
        self._undelivered: dict[str, dict[str, None]] = {}  # url -> queries to release there
        self.progress = ProgressTracker(self)  # live state of running queries, for watchers
        self._used_ids: dict[str, None] = {}  # running and recent query ids, oldest first
        self.worker_health.start()
        self.membership = Membership(
            self.worker_health,
            config.dns_names,
            lambda url: secure_url(url, config.security),
            heartbeat_s=config.heartbeat_s,
            dns_interval_s=config.dns_interval_s,
        ).start()

    @property
    def workers(self) -> tuple[str, ...]:
        """Every worker known now, up or not."""
        return self.worker_health.urls

    def register_worker(self, url: str) -> bool:
        """A worker's heartbeat (``register_worker`` action); True when it is new."""
        return self.membership.register(url)

    def unregister_worker(self, url: str) -> bool:
        return self.membership.unregister(url)

    def check_workers(self) -> None:
        """Raise ``WorkerUnreachable`` naming the first worker that does not answer."""
        for url in self.workers:
            self._action(url, ACTION_HEALTH, b"")

    def plan(self, sql: str) -> DistributedPlan:
        """The distributed plan of a query; refuses SQL too long or that is not a query."""
        size = len(sql.encode("utf-8", "replace"))
        if size > self.config.max_sql_bytes:
            raise QueryRejected(
                f"the SQL text of {size} bytes exceeds the limit of "
                f"{self.config.max_sql_bytes} bytes (max_sql_bytes)"
            )
        if self.config.tasks_per_stage is None:  # one task per known worker, as they change
            known = len(self.workers)
            if known and known != self.planner.options.tasks_per_stage:
                self.planner.options = dataclasses.replace(
                    self.planner.options, tasks_per_stage=known
                )
        try:
            sql.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate: no engine can read it
            raise QueryRejected(
                f"the SQL text is not valid Unicode: {error.object[error.start]!r} at "
                f"character {error.start} is half of a surrogate pair"
            ) from None
        try:
            check_sql(sql, SqlLimits(self.config.max_sql_depth, self.config.max_sql_operators))
            return call_with_deep_stack(self.planner.plan, sql)
        except SqlTooComplex as error:
            raise QueryRejected(str(error)) from None
        except NotAQuery as error:
            raise QueryRejected(str(error)) from None

    def cancel(self, query_id: str) -> bool:
        """Cancel a running query on every worker; False when it is not running here."""
        with self._running_lock:
            run = self._running.get(query_id)
        if run is None:
            return False
        run.cancelled.set()
        self._broadcast(query_id, ACTION_CANCEL_QUERY, run.workers())
        return True

    def add_listener(self, listener: QueryListener) -> None:
        """Call ``listener`` with every finished query's outcome (explain log, query pages)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: QueryListener) -> None:
        self._listeners.remove(listener)

    def _notify(self, outcome: FinishedQuery) -> None:
        for listener in list(self._listeners):
            try:
                listener(outcome)
            except Exception:
                log.warning("query listener %r failed", listener, exc_info=True)

    def execute(
        self,
        sql: str,
        query_id: str | None = None,
        sink: Callable[[pa.RecordBatch], None] | None = None,
        *,
        claimed: bool = False,
    ) -> QueryResult:
        """Run SQL and return its result; ``query_id`` lets a caller name (and cancel) it.
        A name in use by a running or recent query is refused (``QueryRejected``) without
        touching that query: ids are what workers, cancellation and telemetry go by.
        ``claimed``: the caller has already claimed the id with ``claim``.

        With ``sink``, every batch of the result goes to it as it arrives (from the reading
        threads, one at a time, in the output schema) and the returned table is empty: the
        coordinator holds no result (``max_result_bytes`` still applies, as the contract of
        what a query may return). A sink that raises fails the query (and cancels it)."""
        started = time.time_ns()
        query_id = query_id or uuid.uuid4().hex
        if not claimed:
            self.claim(query_id)
        text = redact_sql(sql) if self.telemetry.config.redact_sql else sql
        query_span = self.telemetry.tracer.start_span(
            c.SPAN_QUERY,  # renamed after db.query.summary once planned
            start_time=started,
            attributes={
                c.QUERY_ID: query_id,
                c.DB_SYSTEM_NAME: c.DB_SYSTEM,
                c.DB_QUERY_TEXT: text,
                c.DB_OPERATION_NAME: operation_name(sql),
            },
        )
        run = QueryRun(
            query_id, sql, SpanCollector(query_id), query_span, started_ns=started, sink=sink
        )
        with self._running_lock:
            self._running[query_id] = run
        self.trimmer.touch()
        failure: BaseException | None = None
        table: pa.Table | None = None
        try:
            run.plan = self.plan(sql)
            query_span.set_attribute(c.QUERY_STRATEGY, run.plan.strategy)
            _name_query_span(query_span, run.plan, sql)
            self.spans.start_stage_spans(run)
            self._place_and_submit(run)
            table = self.results.read_root(run)
            query_span.set_attribute(c.QUERY_ROWS, table.num_rows + run.result_rows)
            query_span.set_attribute(c.DB_RETURNED_ROWS, table.num_rows + run.result_rows)
        except BaseException as error:
            failure = error
        finally:
            self.held_results.drop(run)  # handed to the caller (its table), or dropped
        if failure is None:
            telemetry = self._finish(run, None)
            assert run.plan is not None and table is not None
            return QueryResult(query_id, table, run.plan, started, time.time_ns(), telemetry)
        # A failure reaches the caller at once (within a second of the coordinator noticing
        # it): cancelling the tasks, completing the telemetry (waiting for in-band messages,
        # fetching the missing ones), releasing and notifying run in the background, and the
        # error's ``telemetry`` waits for them when read.
        if run.cancelled.is_set():
            failure = QueryError(f"query {query_id} was cancelled")
        completion: Future[QueryTelemetry | None] = run_in_background(
            self._finish, run, failure, cancel=True
        )
        with self._running_lock:
            self._finishing.add(completion)
        completion.add_done_callback(self._finished_in_background)
        if isinstance(failure, QueryError):
            failure.telemetry = completion
            raise failure
        if isinstance(failure, Exception) and not isinstance(failure, ValueError):
            wrapped = QueryError(one_line(failure))
            wrapped.telemetry = completion
            raise wrapped from failure
        raise failure

    def _finish(
        self, run: QueryRun, failure: BaseException | None, cancel: bool = False
    ) -> QueryTelemetry | None:
        """End a query: cancel its tasks (when it failed), complete its telemetry, record
        its metrics, release it on its workers and tell the listeners."""
        telemetry: QueryTelemetry | None = None
        try:
            if cancel:
                self._broadcast(run.query_id, ACTION_CANCEL_QUERY, run.workers())
            telemetry = self.spans.finish(run, failure)
            self.spans.record_metrics(run, telemetry, failure, run.started_ns)
        finally:
            self._broadcast(run.query_id, ACTION_RELEASE_QUERY, run.workers())
            with self._running_lock:
                self._running.pop(run.query_id, None)
            self._notify(
                FinishedQuery(
                    run.query_id,
                    run.sql,
                    time.time_ns() - run.started_ns,
                    None if failure is None else one_line(failure),
                    telemetry,
                )
            )
        return telemetry

    def wait_finished(self, query_id: str, timeout_s: float) -> bool:
        """Wait (bounded) until a query is no longer running or finishing here."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._running_lock:
                if query_id not in self._running:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def sql(self, sql: str) -> pa.Table:
        return self.execute(sql).table

    def claim(self, query_id: str) -> None:
        """Reserve a query id for one query, or raise ``QueryRejected`` when it is taken."""
        with self._running_lock:
            if query_id in self._used_ids:
                raise QueryRejected(
                    f"query id {query_id[:100]!r} is already used by another query; "
                    "leave it out and the coordinator assigns one"
                )
            self._used_ids[query_id] = None
            while len(self._used_ids) > RECENT_QUERY_IDS + len(self._running):
                oldest = next(iter(self._used_ids))
                if oldest in self._running:  # still running: keep it, drop the next one
                    self._used_ids[oldest] = self._used_ids.pop(oldest)
                    continue
                del self._used_ids[oldest]

    def _finished_in_background(self, completion: Future[QueryTelemetry | None]) -> None:
        with self._running_lock:
            self._finishing.discard(completion)

    def close(self) -> None:
        """Stop; failed queries still completing in the background get a bounded wait (their
        workers are told to release them before the caller stops the workers)."""
        with self._running_lock:
            finishing = list(self._finishing)
        if finishing:
            wait(finishing, timeout=self.config.rpc_timeout_s + 2)
        if self.relay is not None:
            self.relay.shutdown()
        self.membership.close()
        self.trimmer.stop()
        self.worker_health.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.telemetry.shutdown()
        self.metrics.shutdown()

    # ---- workers -------------------------------------------------------------------------

    def _probe(self, url: str, timeout_s: float) -> None:
        """One health probe for the monitor."""
        try:
            report = self._action(url, ACTION_HEALTH, b"", timeout_s)
        except WorkerUnreachable as error:
            raise ProbeFailed(str(error), definite=not error.timed_out) from None
        except QueryError as error:  # it answers, but refuses us (token, TLS): unusable
            raise ProbeFailed(str(error), definite=True) from None
        try:
            unhealthy = json.loads(report).get("unhealthy")
        except (ValueError, AttributeError):
            unhealthy = None
        if unhealthy:  # there, but no new work for it (it cannot spill, say)
            raise WorkerUnhealthy(str(unhealthy)[:300])

    def _worker_down(self, url: str, reason: str) -> None:
        """Fail the running queries that have tasks on a worker that went down."""
        with self._running_lock:
            runs = list(self._running.values())
        for run in runs:
            with run.lock:
                run.lost_workers.setdefault(url, reason)

    def _worker_back(self, url: str) -> None:
        """Release, on a worker that answers again, the queries that ended while it did not."""
        with self._running_lock:
            queries = list(self._undelivered.pop(url, {}))
        if queries:
            log.info("releasing %d queries on %s, which is back", len(queries), url)
            self._pool.submit(self._release_all, url, queries)

    def _release_all(self, url: str, queries: list[str]) -> None:
        for query_id in queries:
            try:
                self._action(url, ACTION_RELEASE_QUERY, encode_json({"query_id": query_id}))
            except QueryError:
                self._remember_release(url, query_id)

    def _remember_release(self, url: str, query_id: str) -> None:
        with self._running_lock:
            pending = self._undelivered.setdefault(url, {})
            pending[query_id] = None
            while len(pending) > MAX_UNDELIVERED_RELEASES:  # the worker's TTL does the rest
                del pending[next(iter(pending))]

    def _check_run(self, run: QueryRun) -> None:
        """Raise if the query was cancelled or lost a worker that runs some of its tasks."""
        if run.cancelled.is_set():
            raise QueryError(f"query {run.query_id} was cancelled")
        with run.lock:
            lost = [(url, why) for url, why in run.lost_workers.items() if url in run.workers()]
        if lost:
            url, reason = lost[0]
            raise WorkerUnreachable(_lost_worker_message(run, url, reason), url)

    def _healthy_workers(self) -> list[str]:
        """Workers that are up; when none is, every worker is probed once more right now."""
        healthy = self.worker_health.healthy()
        if healthy:
            return healthy
        list(self._pool.map(self.worker_health.check, self.workers))
        healthy = self.worker_health.healthy()
        if not healthy:
            tried = "; ".join(
                f"{s.url}: {s.reason if not s.up else s.unhealthy}"
                for s in self.worker_health.states()
            )
            raise WorkerUnreachable(
                f"no worker is usable (tried {tried or 'none'}; from {self.membership.describe()})"
            )
        return healthy

    def _place_and_submit(self, run: QueryRun) -> None:
        """Place the tasks on healthy workers and submit them; a worker that turns out to be
        unreachable is left out and the query placed again (nothing has run yet)."""
        assert run.plan is not None
        contexts = self.spans.stage_contexts(run)
        excluded: set[str] = set()
        while True:
            workers = [url for url in self._healthy_workers() if url not in excluded]
            if not workers:
                raise WorkerUnreachable(
                    f"no reachable worker left for query {run.query_id} "
                    f"(unreachable: {', '.join(sorted(excluded))})"
                )
            with run.lock:
                run.placement = assign(run.plan, workers)
            specs = task_specs(
                run.plan, run.query_id, run.placement, contexts, self.config.target_partitions
            )
            submitted = time.time_ns()
            try:
                self._submit(specs, run.query_span)
                stage_event(run, "scheduled", at_ns=submitted)
                return
            except WorkerUnreachable as error:
                if not error.url or error.url in excluded:
                    raise
                excluded.add(error.url)
                self._remember_release(error.url, run.query_id)  # what reached it, once back
                log.warning(
                    "query %s: worker %s unreachable while submitting, placing again: %s",
                    run.query_id,
                    error.url,
                    error,
                )
                self._broadcast(run.query_id, ACTION_RELEASE_QUERY, run.workers() - excluded)

    # ---- data ----------------------------------------------------------------------------

    def _submit(self, specs: list[TaskSpec], parent: trace.Span | None = None) -> None:
        """Submit every task, one call per worker; wait for all answers (bounded), then raise
        the first failure, an unreachable worker first, so that no submission is still in
        flight after it. The one exception: a worker the health checker finds down meanwhile
        (a hung process accepts connections but never answers) fails the submission at once
        rather than at the RPC timeout, and what is still in flight to it is left to its
        query TTL."""
        by_worker: dict[str, list[TaskSpec]] = {}
        for spec in specs:
            by_worker.setdefault(spec.worker_url, []).append(spec)
        futures = {
            self._pool.submit(
                self._rpc_action,
                parent,
                url,
                ACTION_SUBMIT_TASKS,
                encode_submission(worker_specs, self._data_roots),
            ): url
            for url, worker_specs in by_worker.items()
        }
        deadline = time.monotonic() + self.config.rpc_timeout_s * 2
        pending = set(futures)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QueryError(
                    f"submitting tasks timed out after {self.config.rpc_timeout_s * 2:.0f}s"
                )
            _, pending = wait(pending, timeout=min(left, _SUBMIT_POLL_S))
            down = next(
                (futures[f] for f in pending if not self.worker_health.is_up(futures[f])), None
            )
            if down is not None:
                raise WorkerUnreachable(
                    f"worker {down} went down while its tasks were submitted", down, timed_out=True
                )
        errors = [f.exception() for f in futures if f.exception() is not None]
        unreachable = [e for e in errors if isinstance(e, WorkerUnreachable)]
        if unreachable or errors:
            raise (unreachable or errors)[0]  # type: ignore[misc]

    def _rpc_action(
        self,
        parent: trace.Span | None,
        url: str,
        action: str,
        body: bytes,
        timeout_s: float | None = None,
    ) -> bytes:
        """``_action`` as a query's call: a CLIENT span under ``parent``, named to the
        worker in the call's ``traceparent`` (the worker's SERVER span is its child)."""
        if parent is None or not self.telemetry.enabled:
            return self._action(url, action, body, timeout_s)
        span = self.telemetry.tracer.start_span(
            rpc.span_name(rpc.DO_ACTION),
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes=rpc.client_attributes(url, rpc.DO_ACTION, action),  # type: ignore[arg-type]
        )
        try:
            answer = self._action(
                url, action, body, timeout_s, rpc.traceparent_of(span.get_span_context())
            )
        except BaseException as error:
            span.set_attribute(rpc.RPC_GRPC_STATUS_CODE, rpc.grpc_status_code(error))
            span.set_status(Status(StatusCode.ERROR, one_line(error)))
            span.set_attribute("error.type", type(error).__name__)
            raise
        else:
            span.set_attribute(rpc.RPC_GRPC_STATUS_CODE, rpc.GRPC_OK)
            return answer
        finally:
            span.end()

    def _action(
        self,
        url: str,
        action: str,
        body: bytes,
        timeout_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        try:
            client = client_for(url, self.security)
        except (pa.ArrowException, ValueError) as error:  # not a Flight address
            raise WorkerUnreachable(f"worker {url}: {one_line(error)}", url) from None
        try:
            results = client.do_action(
                flight.Action(action, body),
                options=call_options(timeout_s or self.config.rpc_timeout_s, headers),
            )
            return b"".join(r.body.to_pybytes() for r in results)
        except flight.FlightUnavailableError as error:
            # gRPC's message ends with the cause ("... Failed to connect to remote host:
            # Connection refused"): keep that, not the whole chain.
            self.worker_health.mark_down(url, one_line(error, 300).rsplit(": ", 1)[-1])
            raise WorkerUnreachable(f"worker {url} is unreachable", url) from None
        except flight.FlightTimedOutError:
            raise WorkerUnreachable(
                f"worker {url} did not answer {action} in time", url, timed_out=True
            ) from None
        except REMOTE_ERRORS as error:
            raise QueryError(f"worker {url}: {one_line(error)}") from None

    def _broadcast(self, query_id: str, action: str, urls: Iterable[str]) -> None:
        """Tell the query's workers about its end; failures are logged, never raised.
        Workers that are down get a short timeout: they most likely will not answer."""

        def send(url: str) -> None:
            up = self.worker_health.is_up(url)
            timeout = self.config.rpc_timeout_s if up else self.config.health_timeout_s
            try:
                self._action(url, action, encode_json({"query_id": query_id}), timeout)
            except QueryError as error:
                log.info("%s for query %s not delivered: %s", action, query_id, error)
                if action == ACTION_RELEASE_QUERY:  # delivered when the worker is back
                    self._remember_release(url, query_id)

        sends = [run_in_background(send, url) for url in set(urls)]
        wait(sends, timeout=self.config.rpc_timeout_s + 1)

    @property
    def held_result_bytes(self) -> int:
        """Bytes of gathered results the running queries hold now."""
        return self.held_results.bytes

    def health(self) -> list[dict[str, object]]:
        """Every worker's own health report, or why it is unreachable."""
        reports: list[dict[str, object]] = []
        for url in self.workers:
            try:
                report = json.loads(self._action(url, ACTION_HEALTH, b""))
                reports.append({**report, "up": True})
            except QueryError as error:
                reports.append({"url": url, "up": False, "error": str(error)})
        return reports


def _lost_worker_message(run: QueryRun, url: str, reason: str) -> str:
    """Name the lost worker's task nearest the root (the one most likely still running)."""
    order = (
        {stage.stage_id: index for index, stage in enumerate(run.plan.stages)} if run.plan else {}
    )
    tasks = sorted(
        (key for key, worker in run.placement.items() if worker == url),
        key=lambda key: (-order.get(key[0], 0), key[1]),
    )
    head = f"stage {tasks[0][0]} task {tasks[0][1]} on {url} failed: " if tasks else ""
    others = ", ".join(f"stage {s} task {t}" for s, t in tasks[1:4])
    more = f"; its other tasks: {others}" + (", ..." if len(tasks) > 4 else "") if others else ""
    return f"{head}worker {url} is unreachable ({reason}){more}"


def _name_query_span(span: trace.Span, plan: DistributedPlan, sql: str) -> None:
    """``db.query.summary`` (and ``db.collection.name`` for one table) on the query span,
    which takes the summary as its name, as the database conventions name spans."""
    tables = [s.file_scan.table_name for s in plan.stages if s.file_scan is not None]
    tables += [ranged.table_name for s in plan.stages for ranged in s.range_scans]
    tables += [local.table_name for s in plan.stages for local in s.local_scans]
    summary = c.query_summary(operation_name(sql), tables, sql)
    span.set_attribute(c.DB_QUERY_SUMMARY, summary)
    if len(set(tables)) == 1:
        span.set_attribute(c.DB_COLLECTION_NAME, tables[0])
    span.update_name(summary)
