"""One task on a worker: register its inputs, run its plan (Substrait, or SQL for fallback
stages) with DataFusion, fill its buckets,
then record its spans and the final telemetry message its bucket streams end with."""

from __future__ import annotations

import gc
import logging
import operator
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import wait
from dataclasses import dataclass, field
from functools import reduce

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
from datafusion import DataFrame, Expr, RuntimeEnvBuilder, SessionContext
from datafusion.substrait import Consumer, Serde
from opentelemetry.trace import SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_dist.background import run_in_background
from otel_dist.errors import one_line
from otel_dist.exchange.reader import read_bucket, read_record
from otel_dist.exchange.router import StreamStats
from otel_dist.exchange.security import NO_SECURITY, SecurityConfig
from otel_dist.protocol import ROW_ID_COLUMN, BucketSource, KeyBounds, TaskInput, TaskSpec
from otel_dist.session import QUERY_ONLY, conform, new_session
from otel_dist.telemetry import rpc
from otel_dist.telemetry.cache import TelemetryCache
from otel_dist.telemetry.collector import SpanCollector
from otel_dist.telemetry.envelope import TaskRef
from otel_dist.telemetry.metrics import TaskOutcome, WorkerMetrics, stage_kind_of
from otel_dist.telemetry.otlp_encode import encode_spans
from otel_dist.telemetry.setup import Telemetry
from otel_dist.telemetry.task_spans import (
    OperatorMetrics,
    ReadRecord,
    TaskRecord,
    operator_metrics,
    record_task_spans,
    with_scan_names,
    without_details,
)
from otel_dist.worker.admission import Admission, admitted
from otel_dist.worker.buckets import Bucket, MemoryBudget
from otel_dist.worker.inputs import StageInputs, pull
from otel_dist.worker.join_sides import KeyFacts, choose_plan
from otel_dist.worker.memory import execution_runtime
from otel_dist.worker.stalls import StallWatch, TaskStalled, stall_window_s
from otel_dist.worker.streams import POLL_S, StreamCancelled, batches
from otel_dist.worker.timing import (
    PLANNING,
    QUEUED,
    TELEMETRY,
    Stopwatch,
    TaskClock,
    wait_part,
)

log = logging.getLogger(__name__)

HASH_SEED = 0x6F74656C
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: spreads consecutive keys
# How long a finished task waits for its upstream tasks' telemetry before forwarding what it
# has; what is missing then is fetched by the coordinator.
UPSTREAM_TELEMETRY_WAIT_S = 5.0
STALL_CHECK_S = 5.0  # how often a running plan's progress is read (worker/stalls.py)
_UPSTREAM_FAILURE = re.compile(r"^stage \d+ task \d+ on \S+ (failed|was cancelled)")


class TaskCancelled(RuntimeError):
    """The task was cancelled before it finished."""


@dataclass
class TaskSettings:
    """Worker-wide settings and services a task runs with."""

    worker_url: str
    target_partitions: int
    read_timeout_s: float
    spill_dir: str
    budget: MemoryBudget
    telemetry: Telemetry
    telemetry_cache: TelemetryCache
    metrics: WorkerMetrics | None = None
    security: SecurityConfig = NO_SECURITY
    admission: Admission | None = None  # turns to execute (worker/admission.py)
    runtime: RuntimeEnvBuilder | None = None  # each session's memory pool and spill folder
    pool_bytes: int | None = None  # the size of that pool
    execution_memory_bytes: int | None = None  # the worker's: a task run again alone gets it


@dataclass
class InputRead:
    """What a task read from one upstream bucket."""

    source: BucketSource
    stats: StreamStats
    started_ns: int
    ended_ns: int = 0
    span_id: int = field(default_factory=rpc.new_span_id)  # the read's CLIENT span

    def record(self) -> ReadRecord:
        return read_record(self.source, self.stats, self.started_ns, self.ended_ns, self.span_id)


@dataclass
class Task:
    """A running or finished task and its output buckets."""

    spec: TaskSpec
    settings: TaskSettings
    buckets: list[Bucket] = field(default_factory=list)
    state: str = "pending"
    error: str | None = None
    error_type: str | None = None
    upstream_failed: bool = False  # stopped by an upstream task's failure (not the root cause)
    started_ns: int = 0
    ended_ns: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    input_reads: list[InputRead] = field(default_factory=list)
    final_message: bytes | None = None
    # What the task is doing now, for live progress (``worker/progress.py``): "reading stage
    # N", "planning", "executing"; ``live_plan`` is the plan while it executes.
    phase: str = "queued"
    live_plan: object | None = None
    queued_ns: int | None = None  # waited for a turn to execute (None: never got that far)
    ran_again_alone: bool = False  # out of memory in its share of the pool, run again alone

    def __post_init__(self) -> None:
        self._span_context: SpanContext | None = None  # the task span's, once recorded
        self._cancel = threading.Event()  # cancelled from outside: the query is being stopped
        self._abort = threading.Event()  # one partition failed: its siblings stop too
        self._done = threading.Event()
        self._inputs_done = threading.Event()
        # Per stage input: one event per upstream source, set once it sent a batch or ended.
        self._sources_started: dict[str, list[threading.Event]] = {}
        self._pull_here = False
        self._emit_lock = threading.Lock()
        self.collector = SpanCollector(self.spec.query_id)
        schema = self.spec.output_schema()
        tag = f"{self.spec.query_id}-{self.spec.stage_id}-{self.spec.task_index}"
        self.buckets = [
            Bucket(
                schema, self.settings.budget, os.path.join(self.settings.spill_dir, f"{tag}-{b}")
            )
            for b in range(self.spec.output.buckets)
        ]
        self._tag = tag
        self._scratch: str | None = None  # links to the task's files, made when it has some
        self._operators: OperatorMetrics | None = None
        self.clock = TaskClock()  # where the task's wall time goes (worker/timing.py)

    @property
    def operators(self) -> OperatorMetrics | None:
        """The operator metrics read when the task ended (None without telemetry)."""
        return self._operators

    @property
    def ref(self) -> TaskRef:
        return TaskRef(self.spec.stage_id, self.spec.task_index)

    def start(self) -> None:
        run_in_background(self._run)

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def close(self) -> None:
        self.cancel()
        for bucket in self.buckets:
            bucket.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    # ---- execution -----------------------------------------------------------------------

    def _run(self) -> None:
        self.state, self.phase = "running", "starting"
        self.started_ns = time.time_ns()
        plan: object | None = None
        try:
            again = False
            try:
                plan = self._attempt(alone=False)
            except Exception as error:
                if not self._may_run_again_alone(error):
                    raise
                log.warning(
                    "%s of query %s failed before it sent any rows; running it again alone "
                    "with the worker's whole execution memory: %s",
                    self.spec.key,
                    self.spec.query_id,
                    one_line(error, 300),
                )
                again = True
            if again:
                self.live_plan, self.ran_again_alone = None, True
                # The failed attempt's session and plan (gigabytes of DataFusion memory) are
                # held by a reference cycle through the error's traceback; the workers' GC
                # thresholds are high (worker/process.py), so free them before running again.
                gc.collect()
                plan = self._attempt(alone=True)
            self.state = "finished"
        except Exception as error:
            self.state = "cancelled" if self._cancel.is_set() else "failed"
            self.error_type = type(error).__name__
            message = one_line(error)
            # An upstream task's failure is the root cause: pass it on rather than wrap it.
            if _UPSTREAM_FAILURE.match(message):
                self.upstream_failed = True
                self.error = message
            else:
                verb = "was cancelled" if self.state == "cancelled" else "failed"
                self.error = (
                    f"stage {self.spec.stage_id} task {self.spec.task_index} on "
                    f"{self.settings.worker_url} {verb}: {message}"
                )
            if self.state == "failed":
                log.warning("%s", self.error)
        self.ended_ns = time.time_ns()
        self._inputs_done.set()  # input streams the plan did not read to the end stop
        self.live_plan, self.phase = None, self.state
        for bucket in self.buckets:
            if self.state == "finished":
                bucket.finish()
            else:
                bucket.fail(self.error or self.state)
        # The plan holds the task's inputs, and (its repartitions) the DataFusion tasks that
        # still run after a cancel until it is dropped: read its metrics and drop it now, not
        # after the wait for upstream telemetry, and never keep it on the task (which lives
        # until the query is released).
        telemetry_started = time.time_ns()
        operators = self._operator_metrics(plan)
        plan = None
        self._record_telemetry(operators, telemetry_started)
        self._done.set()
        self._record_metrics()  # after the data is complete: never delays a reader
        if self.state != "finished":
            gc.collect()  # the failed plan's memory, held by the error's traceback (see above)

    def _attempt(self, alone: bool) -> object:
        """Read the inputs, take a turn and run the plan; ``alone``: take every turn of the
        worker and its whole execution memory (a second attempt, see ``_may_run_again_alone``)."""
        settings = self.settings
        if alone:
            self._start_again()
        runtime, pool_bytes = settings.runtime, settings.pool_bytes
        if alone and settings.execution_memory_bytes:
            pool_bytes = settings.execution_memory_bytes
            runtime = execution_runtime(pool_bytes, settings.spill_dir)
        turns = settings.admission.limit if alone and settings.admission else 1
        partitions = self.spec.threads or self.settings.target_partitions
        with Stopwatch(self.clock, PLANNING):
            ctx = new_session(partitions, runtime, pool_bytes)
        inputs = StageInputs(partitions)  # worker/inputs.py
        for task_input in self.spec.inputs:
            part = PLANNING
            if task_input.is_stage_input and task_input.sources:
                part = wait_part(task_input.sources[0].stage_id)
            with Stopwatch(self.clock, part):
                self._register(ctx, task_input, inputs, part)
        self._await_streamed_sources(inputs)
        self.phase = "queued"
        with admitted(settings.admission, self._stopped, self._queued, turns):
            self.phase = "planning"
            planning_started = time.perf_counter_ns()
            session = ctx
            assert session is not None
            facts = KeyFacts(
                inputs.held,
                {i.table_name: i.files for i in self.spec.inputs if not i.is_stage_input},
            )
            plan = inputs.plan(
                session,
                lambda: choose_plan(
                    session,
                    lambda: stage_frame(session, self.spec).execution_plan(),
                    facts,
                ),
            )
            planning_ns = time.perf_counter_ns() - planning_started
            for part, ns in inputs.drained_ns.items():  # a held input read to its end
                self.clock.add(part, min(ns, planning_ns))
                planning_ns -= min(ns, planning_ns)
            self.clock.add(PLANNING, planning_ns)
            self.live_plan, self.phase = plan, "executing"
            self._pull_here = inputs.streaming  # worker/inputs.py: never on tokio's threads
            run_started = time.perf_counter_ns()
            try:
                self._execute(ctx, plan)
            finally:
                self.clock.run_finished(time.perf_counter_ns() - run_started, inputs.wait_ns())
        return plan

    def _may_run_again_alone(self, error: Exception) -> bool:
        """DataFusion refused a hash join's build side (it cannot spill) or another operator
        memory within the task's share of the pool, or the plan stalled spilling under that
        limit (``worker/stalls.py``), before the task sent a row: it can run again, alone on
        the worker with all of its execution memory. Nothing read its output
        yet, so no task waits for it (``_await_streamed_sources``), and its inputs can be read
        again (buckets serve any number of readers until the query is released)."""
        return (
            not self.ran_again_alone
            and not self._cancel.is_set()
            and ("Resources exhausted" in str(error) or isinstance(error, TaskStalled))
            and all(bucket.batches == 0 for bucket in self.buckets)
            and (self.settings.pool_bytes or 0) < (self.settings.execution_memory_bytes or 0)
        )

    def _start_again(self) -> None:
        """Stop the first attempt's input reads and forget its file links and session."""
        self._inputs_done.set()
        self._inputs_done = threading.Event()
        self._abort.clear()
        self._sources_started = {}
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _execute(self, ctx: SessionContext, plan: object) -> None:
        """Run every output partition of the physical plan, concurrently, into the buckets;
        a plan that reads no streamed input is stopped once it stops making progress
        (``worker/stalls.py``)."""
        partitions = plan.partition_count  # type: ignore[attr-defined]
        window_s = 0.0 if self._pull_here else stall_window_s()
        if partitions == 1 and not window_s:
            self._drain(ctx, plan, 0)
            return
        errors: list[BaseException] = []
        drains = [
            run_in_background(self._drain_guarded, ctx, plan, p, errors) for p in range(partitions)
        ]
        watch = StallWatch(plan, window_s) if window_s else None
        while wait(drains, timeout=min(window_s, STALL_CHECK_S) or None).not_done:
            if watch is not None and watch.stalled():
                errors.insert(
                    0,
                    TaskStalled(
                        f"its plan made no progress for {window_s:g} s (DataFusion 55 can "
                        "park a plan that spills a repartition under a memory limit, "
                        "apache/datafusion#24883; OTEL_DIST_STALL_S sets the wait)"
                    ),
                )
                self._abort.set()  # the partitions stop within POLL_S
                wait(drains)
                break
        if errors:
            raise next((e for e in errors if not isinstance(e, TaskCancelled)), errors[0])

    def _drain_guarded(
        self, ctx: SessionContext, plan: object, partition: int, errors: list[BaseException]
    ) -> None:
        try:
            self._drain(ctx, plan, partition)
        except BaseException as error:
            errors.append(error)
            self._abort.set()

    def _drain(self, ctx: SessionContext, plan: object, partition: int) -> None:
        schema = self.spec.output_schema()
        times = self.clock.drain()
        clock = time.perf_counter_ns
        stream = ctx.execute(plan, partition)  # type: ignore[arg-type]
        try:
            mark = clock()
            pulled_batches = (pull if self._pull_here else batches)(stream, self._stopped)
            for raw in pulled_batches:
                pulled = clock()
                times.operators_ns += pulled - mark
                batch = conform(raw.to_pyarrow(), schema)  # type: ignore[attr-defined]
                if batch.num_rows:
                    times.spill_ns += self._emit(batch)
                mark = clock()
                times.output_ns += mark - pulled
            times.operators_ns += clock() - mark
        except StreamCancelled:
            if self._cancel.is_set():
                raise TaskCancelled("cancelled") from None
            return  # a sibling partition failed: its error is the task's
        finally:
            times.stop()
            del stream  # dropping it aborts DataFusion's work on the partition

    def _queued(self, waited_ns: int) -> None:
        self.queued_ns = (self.queued_ns or 0) + waited_ns  # both attempts' waits
        if waited_ns:
            self.clock.add(QUEUED, waited_ns)

    def _stopped(self) -> bool:
        return self._cancel.is_set() or self._abort.is_set()

    def _emit(self, batch: pa.RecordBatch) -> int:
        """Append the batch to the buckets; return the nanoseconds spent on appends that
        spilled."""
        output = self.spec.output
        if output.buckets == 1 or output.kind not in ("hash", "range"):
            parts = [batch]
        elif output.kind == "range":
            parts = range_partition(batch, output.keys[0], output.bounds)
        else:
            parts = hash_partition(batch, output.keys, output.buckets)
        spill_ns = 0
        with self._emit_lock:
            self.rows_out += batch.num_rows
            self.bytes_out += batch.nbytes
            for bucket, part in zip(self.buckets, parts, strict=False):
                if part.num_rows:
                    spilled_before = bucket.spilled_bytes
                    appending = time.perf_counter_ns()
                    bucket.append(part)
                    if bucket.spilled_bytes != spilled_before:
                        spill_ns += time.perf_counter_ns() - appending
        return spill_ns

    # ---- inputs --------------------------------------------------------------------------

    def _register(
        self, ctx: SessionContext, task_input: TaskInput, inputs: StageInputs, part: str
    ) -> None:
        if not task_input.is_stage_input:
            if self._scratch is None:
                self._scratch = tempfile.mkdtemp(
                    prefix=f"task-{self._tag}-", dir=self.settings.spill_dir
                )
            folder = os.path.join(self._scratch, task_input.table_name)
            os.makedirs(folder, exist_ok=True)
            for index, path in enumerate(task_input.files):
                os.symlink(path, os.path.join(folder, f"{index:05d}-{os.path.basename(path)}"))
            # The coordinator's schema spares reading every file's footer to infer it: under
            # load that took 11 ms a table (a third of a task's planning at TPC-H SF 1).
            schema = task_input.schema() if task_input.schema_ipc else None
            if not task_input.key_column:
                ctx.register_parquet(task_input.table_name, folder, schema=schema)
                return
            # The task's key ranges of the table: DataFusion prunes the row groups outside them.
            files_name = f"__files_{task_input.table_name}"
            ctx.register_parquet(files_name, folder, schema=schema)
            ranged = ctx.table(files_name).filter(
                _within(task_input.key_column, task_input.key_bounds)
            )
            ctx.register_view(task_input.table_name, ranged)
            return
        # Upstream buckets are read concurrently as they are produced; a large input is
        # streamed into the plan, a small one held in memory (worker/inputs.py).
        self.phase = (
            f"reading stage {task_input.sources[0].stage_id}" if task_input.sources else "reading"
        )
        schema = task_input.schema()
        inputs.register(
            ctx,
            task_input,
            self._read_sources(task_input, schema),
            schema,
            part,
            _with_row_ids if task_input.row_ids else None,
        )

    def _await_streamed_sources(self, inputs: StageInputs) -> None:
        """Before taking a turn to execute, wait until every upstream task of a streamed
        input has sent a batch or ended, so it holds a turn itself or is done: a task that
        held the worker's turn while it streamed from a task queued behind it would wait
        forever (worker/admission.py)."""
        for task_input in self.spec.inputs:
            if task_input.table_name not in inputs.streamed_names:
                continue
            stage_id = task_input.sources[0].stage_id
            self.phase = f"waiting for stage {stage_id} to start"
            with Stopwatch(self.clock, wait_part(stage_id)):
                for started in self._sources_started.get(task_input.table_name, []):
                    while not started.wait(POLL_S):
                        if self._cancel.is_set():
                            raise TaskCancelled("cancelled")

    def _read_sources(self, task_input: TaskInput, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """Merge the upstream buckets into one stream, reading them concurrently."""
        merged: queue.Queue[pa.RecordBatch | BaseException | None] = queue.Queue(maxsize=16)
        remaining = len(task_input.sources)
        done = self._inputs_done  # this attempt's (``_start_again``)
        started = {id(source): threading.Event() for source in task_input.sources}
        self._sources_started[task_input.table_name] = list(started.values())

        def pump(source: BucketSource) -> None:
            read = InputRead(source, StreamStats(), time.time_ns())
            self.input_reads.append(read)
            try:
                for batch in read_bucket(
                    source,
                    self.spec.query_id,
                    self.settings.read_timeout_s,
                    self.collector.add_message,
                    read.stats,
                    rpc.with_span_id(self.spec.trace_context, read.span_id)[0],
                    self.settings.security,
                ):
                    started[id(source)].set()
                    if done.is_set():
                        return  # the plan ended without reading all of it (a LIMIT)
                    _put(merged, conform(batch, schema), self._cancel, done)
                _put(merged, None, self._cancel, done)
            except (flight.FlightUnavailableError, flight.FlightTimedOutError) as error:
                # Name the upstream task and its worker: that is where the query failed.
                reason = (
                    f"is unreachable ({one_line(error, 200)})"
                    if isinstance(error, flight.FlightUnavailableError)
                    else "did not answer in time"
                )
                _put(
                    merged,
                    RuntimeError(
                        f"stage {source.stage_id} task {source.task_index} on {source.worker_url} "
                        f"failed: worker {source.worker_url} {reason}"
                    ),
                    self._cancel,
                )
            except BaseException as error:
                _put(merged, error, self._cancel)
            finally:
                started[id(source)].set()
                read.ended_ns = time.time_ns()

        for source in task_input.sources:
            run_in_background(pump, source)
        while remaining:
            try:
                item = merged.get(timeout=POLL_S)  # a cancel is seen at once
            except queue.Empty:
                if self._cancel.is_set():
                    raise TaskCancelled("cancelled") from None
                continue
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    # ---- telemetry -----------------------------------------------------------------------

    def _operator_metrics(self, plan: object | None) -> OperatorMetrics | None:
        if plan is None or not self.settings.telemetry.enabled:
            return None
        try:
            self._operators = operator_metrics(plan)
        except Exception:
            log.warning("operator metrics of %s could not be read", self.spec.key, exc_info=True)
        return self._operators

    def _record_telemetry(self, operators: OperatorMetrics | None, telemetry_started: int) -> None:
        """Spans, cache entry and final message; a failure here never affects the data.
        ``telemetry_started``: when the task began reading its metrics (unix ns)."""
        telemetry = self.settings.telemetry
        if not telemetry.enabled:
            return
        try:
            if operators is not None and self._scratch is not None:
                operators = with_scan_names(operators, self._scratch)
            if operators is not None and telemetry.config.redact_sql:
                operators = without_details(operators)
            deadline = time.monotonic() + UPSTREAM_TELEMETRY_WAIT_S
            for read in self.input_reads:
                read.stats.wait_for_telemetry(max(0.0, deadline - time.monotonic()))
            # The task span ends when its spans are built: reading metrics and waiting for the
            # upstream telemetry it forwards are its `telemetry` part; building and encoding
            # the spans come after its end, when its output is long complete.
            span_end = time.time_ns()
            self.clock.add(TELEMETRY, span_end - telemetry_started)
            record = TaskRecord(
                query_id=self.spec.query_id,
                stage_id=self.spec.stage_id,
                task_index=self.spec.task_index,
                partitions=self.spec.partitions,
                worker_url=self.settings.worker_url,
                status=self.state,
                error=self.error,
                started_ns=self.started_ns,
                ended_ns=span_end,
                output_rows=self.rows_out,
                output_bytes=self.bytes_out,
                reads=[read.record() for read in self.input_reads],
                time_breakdown=self.clock.breakdown(span_end - self.started_ns),
                output_done_ns=self.ended_ns,
                error_type=self.error_type,
                upstream_failed=self.upstream_failed,
                queued_ns=self.queued_ns,
                ran_again_alone=self.ran_again_alone,
            )
            parent = TraceContextTextMapPropagator().extract(self.spec.trace_context)
            spans = record_task_spans(telemetry, parent, record, operators)
            if not spans:
                return
            self._span_context = spans[-1].get_span_context()  # the task span's
            own = encode_spans(spans).SerializeToString()
            self.settings.telemetry_cache.put(self.spec.query_id, self.ref, own)
            self.final_message = self.collector.forwarding_envelope(
                self.ref, own, telemetry.config.envelope_limit_bytes
            )
        except Exception:
            log.warning("telemetry of %s could not be recorded", self.spec.key, exc_info=True)

    def _record_metrics(self) -> None:
        """The task's metrics, once at its end, from what it already counted; never raises."""
        metrics = self.settings.metrics
        if metrics is None or not metrics.enabled:
            return
        try:
            outcome = TaskOutcome(
                stage_kind=stage_kind_of(self.spec.trace_context),
                status=self.state,
                duration_s=(self.ended_ns - self.started_ns) / 1e9,
                output_rows=self.rows_out,
                output_bytes=self.bytes_out,
                worker_url=self.settings.worker_url,
                operators=self._operators,
                reads=[read.record() for read in self.input_reads],
                final_message_bytes=len(self.final_message) if self.final_message else None,
                malformed_messages=self.collector.malformed,
                span_context=self._span_context,
                queued_s=None if self.queued_ns is None else self.queued_ns / 1e9,
            )
        except Exception:
            log.warning("metrics of %s could not be recorded", self.spec.key, exc_info=True)
            return
        metrics.record_task(outcome)


def stage_frame(ctx: SessionContext, spec: TaskSpec) -> DataFrame:
    """The task's work over its registered inputs: its stage's Substrait plan, or (fallback
    stages) its SQL. A plan naming anything but the registered inputs fails here."""
    if spec.plan:
        logical = Consumer.from_substrait_plan(ctx, Serde.deserialize_bytes(spec.plan_bytes()))
        return ctx.create_dataframe_from_logical_plan(logical)
    return ctx.sql_with_options(spec.sql, QUERY_ONLY)


def _put(
    target: queue.Queue, item: object, cancel: threading.Event, done: threading.Event | None = None
) -> None:
    while not cancel.is_set() and not (done is not None and done.is_set()):
        try:
            target.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


def hash_partition(
    batch: pa.RecordBatch, keys: tuple[str, ...], buckets: int
) -> list[pa.RecordBatch]:
    """Split a batch into ``buckets`` parts by a stable hash of its key columns."""
    assignment = _bucket_of_rows(batch, keys, buckets)
    # A filter per bucket keeps the rows' order and costs about 40% less than a take.
    return [batch.filter(pa.array(assignment == b)) for b in range(buckets)]


def range_partition(
    batch: pa.RecordBatch, key: str, bounds: tuple[KeyBounds, ...]
) -> list[pa.RecordBatch]:
    """Split a batch by the integer ``key``: bucket ``i`` takes the rows whose key is in one
    of ``bounds[i]``, intervals that together cover every value once. NULL keys, which
    match no row of a join, go to bucket 0 so that an outer join still keeps them."""
    starts = sorted(
        (-(2**63) if low is None else low, bucket)
        for bucket, intervals in enumerate(bounds)
        for low, _ in intervals
    )
    lows = np.array([low for low, _ in starts], dtype=np.int64)
    owners = np.array([bucket for _, bucket in starts], dtype=np.int64)
    column = batch.column(key)
    values = pc.fill_null(column.cast(pa.int64(), safe=False), -(2**63)).to_numpy()
    assignment = owners[np.maximum(np.searchsorted(lows, values, side="right") - 1, 0)]
    if column.null_count:
        assignment[column.is_null().to_numpy(zero_copy_only=False)] = 0
    return [batch.filter(pa.array(assignment == b)) for b in range(len(bounds))]


def _bucket_of_rows(batch: pa.RecordBatch, keys: tuple[str, ...], buckets: int) -> np.ndarray:
    """Each row's bucket. Integer keys (most join and group keys) are hashed in numpy, as
    int64 whatever their width, so equal values land together however each side typed them;
    other keys by polars' row hash, which hands each batch to its thread pool and back and
    cost a third of a shuffling task's output time."""
    columns = [batch.column(key) for key in keys]
    if all(pa.types.is_integer(column.type) for column in columns):
        hashed = np.full(batch.num_rows, HASH_SEED, dtype=np.uint64)
        for column in columns:
            values = pc.fill_null(column, 0).cast(pa.int64(), safe=False).to_numpy()
            values = values.view(np.uint64)
            hashed = (hashed ^ values) * _MIX
            hashed ^= hashed >> np.uint64(29)
        return hashed % np.uint64(buckets)
    frame = pl.from_arrow(pa.Table.from_batches([batch.select(list(keys))]))
    assert isinstance(frame, pl.DataFrame)
    return (frame.hash_rows(seed=HASH_SEED) % buckets).to_numpy()


def _with_row_ids(
    batches: list[pa.RecordBatch], schema: pa.Schema
) -> tuple[list[pa.RecordBatch], pa.Schema]:
    """Number the rows read, so views of one input can be joined back row by row."""
    numbered = schema.append(pa.field(ROW_ID_COLUMN, pa.int64(), nullable=False))
    start = 0
    result = []
    for batch in batches:
        ids = pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64))
        result.append(pa.RecordBatch.from_arrays([*batch.columns, ids], schema=numbered))
        start += batch.num_rows
    return result, numbered


def _within(column: str, bounds: KeyBounds) -> Expr:
    """``column`` in any of ``bounds``, each ``[low, high)`` (None: unbounded)."""
    value = Expr.column(column)
    ranges: list[Expr] = []
    for low, high in bounds:
        conditions = [value >= Expr.literal(low)] if low is not None else []
        conditions += [value < Expr.literal(high)] if high is not None else []
        ranges.append(reduce(operator.and_, conditions, Expr.literal(True)))
    return reduce(operator.or_, ranges, Expr.literal(False))
