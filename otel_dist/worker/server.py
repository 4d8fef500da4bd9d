"""The worker: a Flight server that runs tasks and serves their output buckets via ``do_get``.

It answers malformed input with INVALID_ARGUMENT (actions: an error saying ``invalid
argument``; never a traceback, see ``exchange/server_errors.py``), refuses tasks that name files outside its
data roots (``data_roots``; none configured means no file at all, unless ``allow_any_path``)
with PERMISSION_DENIED, and with an internal secret (or a token) configured refuses every
call without it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.flight as flight
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_dist.deep_stack import deep_native_stacks
from otel_dist.errors import one_line
from otel_dist.exchange.security import (
    NO_SECURITY,
    SecurityConfig,
    server_location,
    server_options,
)
from otel_dist.exchange.server_errors import (
    UnsupportedCalls,
    failed_stream,
    for_client,
    get_error,
)
from otel_dist.exchange.tracing import MIDDLEWARE_KEY, TraceServerMiddlewareFactory, traceparent_of
from otel_dist.protocol import (
    ACTION_CANCEL_QUERY,
    ACTION_GET_TASK_TELEMETRY,
    ACTION_HEALTH,
    ACTION_RELEASE_QUERY,
    ACTION_SUBMIT_TASKS,
    ACTION_TASK_PROGRESS,
    ACTION_WORKER_STATUS,
    MAX_TICKET_BYTES,
    NOT_A_COORDINATOR,
    BucketTicket,
    ProtocolError,
    TaskKey,
    TaskSpec,
    decode_json_object,
    decode_query_id,
    decode_submission,
    invalid_argument,
    not_found,
    permission_denied,
    submission_data_roots,
)
from otel_dist.sql_limits import (
    DEFAULT_MAX_SQL_DEPTH,
    DEFAULT_MAX_SQL_OPERATORS,
    SqlLimits,
    SqlTooComplex,
)
from otel_dist.sql_limits import check as check_sql
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry import envelope, rpc
from otel_dist.telemetry.cache import TelemetryCache
from otel_dist.telemetry.envelope import DATA_END, TaskRef
from otel_dist.telemetry.metrics import Metrics, WorkerObservers, start_process_telemetry
from otel_dist.telemetry.setup import Telemetry
from otel_dist.worker.admission import Admission, default_max_running_tasks
from otel_dist.worker.buckets import Bucket, BucketError, MemoryBudget
from otel_dist.worker.limits import DEFAULT_MAX_OPEN_STREAMS, DEFAULT_MAX_WAITING_CALLS, CallLimit
from otel_dist.worker.memory import (
    IdleTrimmer,
    default_execution_memory,
    execution_runtime,
    idle_trim_from_env,
    task_pool_bytes,
)
from otel_dist.worker.progress import WorkerProgress, task_progress
from otel_dist.worker.spill import SpillFolder
from otel_dist.worker.task import Task, TaskSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of one worker process."""

    host: str = "127.0.0.1"
    port: int = 0
    memory_budget_bytes: int = 1 << 30
    target_partitions: int = 2
    # The longest a bucket read waits for its next batch, and a read's whole-call deadline:
    # longer than the coordinator's query timeout (600 s), so a long stage is ended by its
    # query's own timeout, not by a read (300 s failed TPC-DS Q72 at SF 1 mid-query).
    read_timeout_s: float = 900.0
    task_wait_s: float = 30.0
    query_ttl_s: float = 900.0
    telemetry_wait_s: float = 10.0
    telemetry_cache_entries: int = 10_000
    spill_dir: str | None = None
    metrics_port: int | None = None  # Prometheus /metrics (0: a free port); None: env settings
    redact_sql: bool = False  # as OTEL_DIST_REDACT_SQL=true: operator spans without literals
    data_roots: tuple[str, ...] = ()  # folders tasks may read files from; empty: none
    allow_any_path: bool = False  # read any file the process can (--allow-any-path)
    max_sql_depth: int = DEFAULT_MAX_SQL_DEPTH  # task SQL beyond these is refused
    max_sql_operators: int = DEFAULT_MAX_SQL_OPERATORS
    max_running_tasks: int | None = None  # executing at once, the rest queued; None: 2 a core
    # DataFusion, all tasks; None: half the machine's (or container's) memory
    execution_memory_bytes: int | None = None
    max_waiting_calls: int = DEFAULT_MAX_WAITING_CALLS  # calls waiting for a task to exist
    max_open_streams: int = DEFAULT_MAX_OPEN_STREAMS  # bucket streams served at once
    # Idle this long: memory handed back to the OS (OTEL_DIST_IDLE_TRIM_S; 0: never).
    idle_trim_s: float = field(default_factory=idle_trim_from_env)
    security: SecurityConfig = NO_SECURITY


class WorkerServer(UnsupportedCalls, flight.FlightServerBase):
    """Runs tasks submitted by a coordinator and serves their buckets to any reader."""

    def __init__(
        self,
        config: WorkerConfig,
        telemetry: Telemetry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Spans and metrics default to the process environment's settings; a caller passing
        its own ``telemetry`` and no ``metrics`` gets no metrics."""
        options = server_options(config.security, internal=True)
        options["middleware"] = {
            **options.get("middleware", {}),
            MIDDLEWARE_KEY: TraceServerMiddlewareFactory(),
        }
        super().__init__(
            location=server_location(config.host, config.port, config.security), **options
        )
        self.config = config
        deep_native_stacks()  # before any task starts DataFusion's runtime
        self.sql_limits = SqlLimits(config.max_sql_depth, config.max_sql_operators)
        self.url = server_location(config.host, self.port, config.security)
        self.data_roots = _roots(config.data_roots)
        if telemetry is None:
            telemetry, default_metrics = start_process_telemetry(
                "otel-dist-worker",
                {**os.environ, "OTEL_DIST_REDACT_SQL": "true"} if config.redact_sql else None,
                prometheus_port=config.metrics_port,
                prometheus_host=config.host,
                prometheus_token=config.security.token,
            )
            metrics = metrics or default_metrics
        self.telemetry = telemetry
        self.metrics = metrics or Metrics.off()
        self.telemetry_cache = TelemetryCache(config.telemetry_cache_entries, config.query_ttl_s)
        self.budget = MemoryBudget(config.memory_budget_bytes)
        self.admission = Admission(config.max_running_tasks or default_max_running_tasks())
        self.execution_memory_bytes = config.execution_memory_bytes or default_execution_memory()
        self.task_pool_bytes = task_pool_bytes(self.execution_memory_bytes, self.admission.limit)
        self.waiting_calls = CallLimit(
            config.max_waiting_calls, "calls wait for a task", "max_waiting_calls"
        )
        self.open_streams = CallLimit(
            config.max_open_streams, "bucket streams are open", "max_open_streams"
        )
        self.spill = SpillFolder.create(config.spill_dir)  # removes dead workers' folders
        self._spill_root = self.spill.path
        self._tasks: dict[TaskKey, Task] = {}
        self._query_seen: dict[str, float] = {}
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self.progress = WorkerProgress(self._all_tasks).start()
        self.task_metrics = self.metrics.worker(
            WorkerObservers(
                active_tasks=lambda: self.progress.counts()[0],
                queued_tasks=lambda: self.progress.counts()[1],
                memory_used_bytes=lambda: self.budget.used_bytes,
                memory_limit_bytes=lambda: self.budget.limit_bytes,
                spilled_bytes=lambda: self.budget.spilled_bytes,
            )
        )
        threading.Thread(target=self._expire_loop, name="worker-ttl", daemon=True).start()
        self.trimmer = IdleTrimmer(self._busy, config.idle_trim_s).start()

    # ---- actions -------------------------------------------------------------------------

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return [
            (ACTION_SUBMIT_TASKS, "Run tasks of one query (JSON: {tasks: [TaskSpec]})"),
            (ACTION_CANCEL_QUERY, "Cancel a query's tasks ({query_id})"),
            (ACTION_RELEASE_QUERY, "Drop a query's tasks and buffers ({query_id})"),
            (ACTION_HEALTH, "Liveness and load"),
            (
                ACTION_GET_TASK_TELEMETRY,
                "A finished task's spans ({query_id, stage_id, task_index})",
            ),
            (ACTION_TASK_PROGRESS, "A query's tasks here, live ({query_id})"),
            (ACTION_WORKER_STATUS, "Running and queued tasks, CPU %, RSS, rows/s"),
        ]

    def do_action(
        self, context: flight.ServerCallContext, action: flight.Action
    ) -> Iterator[bytes]:
        span = self._server_span(context, rpc.DO_ACTION, action.type)
        try:
            answer = iter([self._action(action, self._trusts_declared_roots(context))])
        except ProtocolError as error:
            raised = for_client(invalid_argument(str(error)), "action")
            _failed(span, error, raised)
            raise raised from None
        except Exception as error:  # never a Python traceback to the caller
            raised = for_client(error, f"action {action.type[:40]!r}")
            _failed(span, error, raised)
            raise raised from None
        else:
            if span is not None:
                span.set_attribute(rpc.RPC_GRPC_STATUS_CODE, rpc.GRPC_OK)
            return answer
        finally:
            if span is not None:
                span.end()

    def _server_span(
        self,
        context: flight.ServerCallContext,
        method: str,
        action: str | None = None,
        attributes: dict[str, object] | None = None,
    ) -> trace.Span | None:
        """The SERVER span of a traced call (one whose caller sent a ``traceparent``)."""
        parent = rpc.extract(traceparent_of(context)) if self.telemetry.enabled else None
        if parent is None:
            return None
        return self.telemetry.tracer.start_span(
            rpc.span_name(method),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={**rpc.rpc_attributes(method, action), **(attributes or {})},  # type: ignore[dict-item]
        )

    def _trusts_declared_roots(self, context: flight.ServerCallContext) -> bool:
        """Whether a submission's declared data folders may stand in for ``--data-root``:
        only on a worker started without one, and only from a caller that proved it holds
        the internal secret or, on a worker without authentication, from this host."""
        if self.data_roots or self.config.allow_any_path:
            return False
        if self.config.security.internal().token is not None:
            return True  # the middleware let only internal-secret holders through
        peer = context.peer()
        return peer.startswith(("ipv4:127.", "ipv6:[::1]", "ipv6:%5B::1%5D", "unix:"))

    def _action(self, action: flight.Action, trusted_roots: bool = False) -> bytes:
        body = action.body.to_pybytes() if action.body is not None else b""
        if action.type == ACTION_SUBMIT_TASKS:
            specs = decode_submission(body)
            declared = _roots(submission_data_roots(body)) if trusted_roots else ()
            self.submit_all(specs, declared)
            return b"{}"
        if action.type == ACTION_CANCEL_QUERY:
            self.cancel_query(decode_query_id(body))
            return b"{}"
        if action.type == ACTION_RELEASE_QUERY:
            self.release_query(decode_query_id(body))
            return b"{}"
        if action.type == ACTION_HEALTH:
            return json.dumps(self.health()).encode()
        if action.type == ACTION_GET_TASK_TELEMETRY:
            return self.task_telemetry(body)
        if action.type == ACTION_TASK_PROGRESS:
            query_id = decode_query_id(body)
            redact = self.telemetry.config.redact_sql
            tasks = [task_progress(task, redact) for task in self._tasks_of(query_id)]
            return json.dumps({"worker": self.url, "tasks": tasks}).encode()
        if action.type == ACTION_WORKER_STATUS:
            return json.dumps({"url": self.url, **self.progress.status()}).encode()
        raise ProtocolError(f"unknown action {action.type[:100]!r}")

    def submit(self, spec: TaskSpec) -> Task:
        return self.submit_all([spec])[0]

    def submit_all(self, specs: list[TaskSpec], declared_roots: tuple[str, ...] = ()) -> list[Task]:
        """Start tasks, all of them or (on any error) none. ``declared_roots``: the data
        folders a trusted coordinator declared, read when the worker has no roots of its own."""
        if self._stopping.is_set():
            raise flight.FlightUnavailableError("unavailable: the worker is stopping")
        for spec in specs:
            self._check_paths(spec, self.data_roots or declared_roots)
            try:
                if spec.sql:
                    check_sql(spec.sql, self.sql_limits)
            except SqlTooComplex as error:
                raise ProtocolError(f"{spec.key} of query {spec.query_id[:100]}: {error}") from None
        settings = TaskSettings(
            worker_url=self.url,
            target_partitions=self.config.target_partitions,
            read_timeout_s=self.config.read_timeout_s,
            spill_dir=self._spill_root,
            budget=self.budget,
            telemetry=self.telemetry,
            telemetry_cache=self.telemetry_cache,
            metrics=self.task_metrics,
            security=self.config.security.internal(),  # reads from other workers
            admission=self.admission,
            runtime=execution_runtime(self.task_pool_bytes, self._spill_root),
            pool_bytes=self.task_pool_bytes,
            execution_memory_bytes=self.execution_memory_bytes,
        )
        self.trimmer.touch()
        with self._lock:
            keys = [spec.key for spec in specs]
            for index, key in enumerate(keys):
                if key in self._tasks or key in keys[:index]:
                    raise ProtocolError(f"{key} of query {key.query_id} was already submitted")
            tasks = [Task(spec, settings) for spec in specs]
            for task in tasks:
                self._tasks[task.spec.key] = task
                self._query_seen[task.spec.query_id] = time.monotonic()
            self._lock.notify_all()
        for task in tasks:
            task.start()
        return tasks

    def _check_paths(self, spec: TaskSpec, roots: tuple[str, ...]) -> None:
        """Refuse a task that names a file outside the data roots (any file, without roots,
        unless ``allow_any_path``). Paths are normalised (``..`` removed, relative paths
        refused); symbolic links inside a root are trusted, since only the operator can place
        them there."""
        if self.config.allow_any_path:
            return
        for task_input in spec.inputs:
            for path in task_input.files:
                if not roots:
                    raise permission_denied(
                        f"{spec.key} of query {spec.query_id} names {path[:300]}, but this "
                        "worker reads no files: start it with --data-root DIR "
                        "(or --allow-any-path)"
                    )
                if not os.path.isabs(path) or not _inside(os.path.normpath(path), roots):
                    raise permission_denied(
                        f"{spec.key} of query {spec.query_id} names {path[:300]}, "
                        "outside the worker's data roots"
                    )

    def cancel_query(self, query_id: str) -> None:
        tasks = self._tasks_of(query_id)
        log.info("cancelling query %s: %d task(s) here", query_id, len(tasks))
        for task in tasks:
            task.cancel()

    def release_query(self, query_id: str) -> None:
        with self._lock:
            keys = [key for key in self._tasks if key.query_id == query_id]
            tasks = [self._tasks.pop(key) for key in keys]
            self._query_seen.pop(query_id, None)
        self.progress.released(tasks)
        for task in tasks:
            task.close()
        self.telemetry_cache.drop_query(query_id)

    def task_telemetry(self, body: bytes) -> bytes:
        """The envelope of one task's own spans, waiting (bounded) for a task still running."""
        if len(body) > MAX_TICKET_BYTES:
            raise ProtocolError(
                f"telemetry request of {len(body)} bytes exceeds {MAX_TICKET_BYTES}"
            )
        request = decode_json_object(body, "telemetry request")
        query_id, stage_id, task_index = (
            request.get("query_id"),
            request.get("stage_id"),
            request.get("task_index"),
        )
        if not isinstance(query_id, str) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in (stage_id, task_index)
        ):
            raise ProtocolError("telemetry request needs query_id, stage_id and task_index")
        assert isinstance(stage_id, int) and isinstance(task_index, int)  # checked just above
        task_ref = TaskRef(stage_id, task_index)
        with self._lock:
            task = self._tasks.get(TaskKey(query_id, stage_id, task_index))
        if task is not None and not task.done:
            with self.waiting_calls.slot():
                task.wait(self.config.telemetry_wait_s)
        payload = self.telemetry_cache.get(query_id, task_ref)
        if payload is None:
            raise not_found(f"no telemetry for task {task_ref} of {query_id[:100]}")
        return envelope.encode(query_id, [(task_ref, payload)])

    def health(self) -> dict[str, object]:
        """Liveness and load; ``healthy`` is false (with ``unhealthy`` saying why) when the
        worker should get no new work: its spill folder cannot take a spill."""
        problem = self.spill.problem()
        with self._lock:
            running = sum(1 for t in self._tasks.values() if not t.done)
            return {
                "url": self.url,
                "healthy": problem is None,
                "unhealthy": problem,
                "spill_dir": self._spill_root,
                "pid": os.getpid(),
                "tasks": len(self._tasks),
                "running_tasks": running,
                "executing_tasks": self.admission.running,
                "admission_queue": self.admission.queued,
                "max_running_tasks": self.admission.limit,
                "task_memory_pool_bytes": self.task_pool_bytes,
                "memory_trims": self.trimmer.trims,
                "queries": len(self._query_seen),
                "memory_used_bytes": self.budget.used_bytes,
                "spilled_bytes": self.budget.spilled_bytes,
                "telemetry_cache_entries": len(self.telemetry_cache),
                "telemetry_cache_limit": self.telemetry_cache.max_entries,
                "threads": threading.active_count(),
            }

    def _busy(self) -> bool:
        with self._lock:
            return any(not task.done for task in self._tasks.values())

    def _all_tasks(self) -> list[Task]:
        with self._lock:
            return list(self._tasks.values())

    def _tasks_of(self, query_id: str) -> list[Task]:
        with self._lock:
            return [task for key, task in self._tasks.items() if key.query_id == query_id]

    # ---- data ----------------------------------------------------------------------------

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        try:
            request = BucketTicket.from_bytes(ticket.ticket)
            task = self._wait_for_task(request.task_key)
            if request.bucket >= len(task.buckets):
                raise invalid_argument(
                    f"bucket {request.bucket} out of range for {request.task_key}"
                )
        except ProtocolError as error:
            if b'"sql"' in ticket.ticket[:MAX_TICKET_BYTES]:  # a query client's ticket
                return failed_stream(invalid_argument(NOT_A_COORDINATOR))
            return failed_stream(invalid_argument(str(error)))
        except Exception as error:  # never a Python traceback to the caller
            return get_error(error, "bucket read")
        bucket = task.buckets[request.bucket]
        span = self._server_span(
            context,
            rpc.DO_GET,
            # No otel_dist.query.id: the spans of a query that carry it are those EXPLAIN
            # is built from (and counted against); this one is found by its trace.
            attributes={
                c.READ_STAGE_ID: request.stage_id,
                c.READ_TASK_INDEX: request.task_index,
                c.READ_BUCKET: request.bucket,
            },
        )
        return flight.GeneratorStream(
            bucket.schema, self._serve(task, bucket, request.telemetry, span)
        )

    def _serve(
        self, task: Task, bucket: Bucket, with_telemetry: bool, span: trace.Span | None = None
    ) -> Iterator[pa.RecordBatch | tuple[pa.RecordBatch, pa.Buffer]]:
        """The bucket's batches; for the reader that asked for it, a data-end marker, then
        the task's telemetry as a zero-row final message once it is recorded (which no
        reader's data waits for). ``span`` (the call's SERVER span) ends when the data
        does, before the reader can have seen its end."""
        ended: int | None = None
        # The call's gRPC status, on its span: UNKNOWN for an error passed on (the producing
        # task's span is the error: one root cause, so this span's status stays unset),
        # CANCELLED when the reader stopped reading.
        code = rpc.GRPC_OK
        try:
            try:
                with self.open_streams.slot():
                    yield from self._stream_data(bucket)
            except BucketError as error:
                # The producing task failed or the query was released; the call only passes
                # that on.
                code = rpc.GRPC_UNKNOWN
                raise flight.FlightServerError(str(error)) from None
            except Exception as error:  # never a Python traceback to the reader
                raised = for_client(error, "bucket read")
                code = rpc.grpc_status_code(raised)
                raise raised from None
            if not self.telemetry.enabled or not with_telemetry:
                ended = time.time_ns()
                return
            empty = pa.RecordBatch.from_pylist([], schema=bucket.schema)
            # The call's data ends here; the reader's span (clamped into its task's time,
            # which may end before the telemetry that follows arrives) covers that much.
            ended = time.time_ns()
            yield empty, pa.py_buffer(DATA_END)
            task.wait(self.config.telemetry_wait_s)
            if task.final_message is not None:
                yield empty, pa.py_buffer(task.final_message)
        except GeneratorExit:
            code = rpc.GRPC_CANCELLED
            raise
        finally:
            if span is not None:
                span.set_attribute(rpc.RPC_GRPC_STATUS_CODE, code)
                span.end(end_time=ended)

    def _stream_data(self, bucket: Bucket) -> Iterator[pa.RecordBatch]:
        yield from bucket.read(self.config.read_timeout_s)

    def _wait_for_task(self, key: TaskKey) -> Task:
        """The task, waiting (bounded, and at most ``max_waiting_calls`` calls at once) for
        one not submitted yet: readers may ask before the coordinator's submission lands."""
        with self._lock:
            task = self._tasks.get(key)
            if task is not None:
                self._query_seen[key.query_id] = time.monotonic()
                return task
        with self.waiting_calls.slot():
            return self._wait_for_submission(key)

    def _wait_for_submission(self, key: TaskKey) -> Task:
        deadline = time.monotonic() + self.config.task_wait_s
        with self._lock:
            while key not in self._tasks:
                if self._stopping.is_set():
                    raise flight.FlightUnavailableError("unavailable: the worker is stopping")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise not_found(f"{key} of query {key.query_id[:100]}")
                self._lock.wait(min(remaining, 1.0))
            self._query_seen[key.query_id] = time.monotonic()
            return self._tasks[key]

    # ---- lifecycle -----------------------------------------------------------------------

    def _expire_loop(self) -> None:
        while not self._stopping.wait(min(30.0, self.config.query_ttl_s / 4)):
            now = time.monotonic()
            with self._lock:
                expired = [
                    q
                    for q, seen in self._query_seen.items()
                    if now - seen > self.config.query_ttl_s
                ]
            for query_id in expired:
                log.info("releasing expired query %s", query_id)
                self.release_query(query_id)

    def begin_shutdown(self) -> None:
        """Stop taking work and drop every query, so that calls in progress (readers waiting
        for data or for a task) end now and ``shutdown()`` does not wait for them."""
        self._stopping.set()
        with self._lock:
            queries = {key.query_id for key in self._tasks} | set(self._query_seen)
            self._lock.notify_all()
        for query_id in queries:
            self.release_query(query_id)

    def close_all(self) -> None:
        self.begin_shutdown()
        self.progress.stop()
        self.trimmer.stop()
        self.spill.remove()
        self.telemetry.shutdown()
        self.metrics.shutdown()


def _roots(folders: tuple[str, ...]) -> tuple[str, ...]:
    """Each data root as given (made absolute) and resolved: the coordinator may name files
    through either form."""
    forms = (
        form
        for folder in folders
        for form in (os.path.normpath(os.path.abspath(folder)), os.path.realpath(folder))
    )
    return tuple(dict.fromkeys(forms))


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _failed(span: trace.Span | None, error: BaseException, raised: BaseException) -> None:
    """A SERVER span's failure, as the RPC conventions say: the gRPC status code of the error
    ``raised`` to the caller; ERROR and ``error.type`` (the cause's) when that code is a
    server's error."""
    if span is None:
        return
    code = rpc.grpc_status_code(raised)
    span.set_attribute(rpc.RPC_GRPC_STATUS_CODE, code)
    if code in rpc.SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, one_line(error)))
        span.set_attribute("error.type", type(error).__name__)
