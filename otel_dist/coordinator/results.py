"""Reading a query's result: the root stage's buckets, read concurrently as they arrive, each
batch counted against the query's result limit and, when the result is gathered rather than
streamed, against the coordinator-wide limit on the bytes all running queries hold."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, wait

import pyarrow as pa
import pyarrow.flight as flight

from otel_dist.background import run_in_background
from otel_dist.coordinator.query import CoordinatorConfig, QueryError, QueryRun, WorkerUnreachable
from otel_dist.errors import one_line
from otel_dist.exchange.clients import REMOTE_ERRORS
from otel_dist.exchange.reader import read_bucket, read_record
from otel_dist.exchange.router import StreamStats
from otel_dist.exchange.security import SecurityConfig
from otel_dist.protocol import BucketSource
from otel_dist.session import conform, plain_schema
from otel_dist.telemetry import rpc


class HeldResults:
    """Bytes of gathered results the running queries hold, against the coordinator's limit
    (``max_total_result_bytes``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._lock = threading.Lock()

    def hold(self, run: QueryRun, size: int) -> None:
        """Count ``size`` more bytes of ``run``'s result, or fail the query."""
        with self._lock:
            total = self.bytes + size
            over = total > self.limit
            if not over:
                self.bytes = total
                run.held_bytes += size
        if over:
            raise QueryError(
                f"query {run.query_id}: the results held by the running queries exceed the "
                f"coordinator's limit of {self.limit} bytes "
                "(max_total_result_bytes); retry later, add a LIMIT or raise the limit"
            )

    def drop(self, run: QueryRun) -> None:
        """``run``'s result was handed over (or dropped): it no longer counts."""
        with self._lock:
            self.bytes = max(0, self.bytes - run.held_bytes)
            run.held_bytes = 0


class ResultReader:
    """Reads each query's root stage for the coordinator."""

    def __init__(
        self,
        config: CoordinatorConfig,
        security: SecurityConfig,
        held: HeldResults,
        mark_down: Callable[[str, str], None],
        check_run: Callable[[QueryRun], None],
    ) -> None:
        self.config = config
        self.security = security
        self.held = held
        self.mark_down = mark_down
        self.check_run = check_run

    def read_root(self, run: QueryRun) -> pa.Table:
        """Read the root stage's buckets, watching for cancellation, lost workers and the
        query timeout while they arrive."""
        assert run.plan is not None
        root = run.plan.root
        deadline = time.monotonic() + self.config.query_timeout_s
        sources = [
            BucketSource(run.placement[(root.stage_id, t)], root.stage_id, t, 0)
            for t in range(root.task_count)
        ]
        # Not on the bounded pool: a read lasts as long as its query, and 32 long queries
        # reading would leave every other query's submissions and telemetry fetches waiting.
        futures = [run_in_background(self._read_source, run, source) for source in sources]
        pending: Iterable[Future[list[pa.RecordBatch]]] = futures
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    raise error
            if not pending:
                break  # every byte is here: a worker lost now no longer matters
            self.check_run(run)
            if pending and time.monotonic() > deadline:
                raise QueryError(
                    f"query {run.query_id} timed out after {self.config.query_timeout_s:.0f}s"
                )
        batches = [batch for future in futures for batch in future.result()]
        output = plain_schema(run.plan.output_schema)
        return pa.Table.from_batches([conform(b, output) for b in batches], schema=output)

    def _to_sink(self, run: QueryRun, batch: pa.RecordBatch) -> None:
        """Hand a batch of a streamed result to its sink, one reading thread at a time."""
        assert run.plan is not None and run.sink is not None
        output = plain_schema(run.plan.output_schema)
        with run.sink_lock:
            run.sink(conform(batch, output))
            run.result_rows += batch.num_rows

    def _read_source(self, run: QueryRun, source: BucketSource) -> list[pa.RecordBatch]:
        stats = StreamStats()
        run.read_stats.append(stats)
        started = time.time_ns()
        batches: list[pa.RecordBatch] = []
        span_id = rpc.new_span_id()  # the read's CLIENT span, parent of the worker's span
        stage_span = run.stage_spans.get(source.stage_id, run.query_span)
        headers, _ = rpc.with_span_id(rpc.traceparent_of(stage_span.get_span_context()), span_id)
        with run.lock:
            run.open_reads[span_id] = (source, stats, started)
        try:
            for batch in read_bucket(
                source,
                run.query_id,
                self.config.query_timeout_s,
                run.collector.add_message,
                stats,
                headers,
                security=self.security,
            ):
                if run.cancelled.is_set():
                    raise QueryError(f"query {run.query_id} was cancelled")
                size = batch.get_total_buffer_size()  # received: owns its buffers
                with run.lock:
                    run.result_bytes += size
                    too_large = run.result_bytes > self.config.max_result_bytes
                if run.sink is None and not too_large:
                    self.held.hold(run, size)
                if too_large:
                    raise QueryError(
                        f"query {run.query_id}: the result exceeds the limit of "
                        f"{self.config.max_result_bytes} bytes (max_result_bytes); "
                        "add a LIMIT or raise the limit"
                    )
                if run.sink is not None:
                    self._to_sink(run, batch)
                else:
                    batches.append(batch)
            return batches
        except flight.FlightUnavailableError as error:
            url = source.worker_url
            self.mark_down(url, "unreachable while the query read from it")
            raise WorkerUnreachable(
                f"stage {source.stage_id} task {source.task_index} on {url} failed: "
                f"worker {url} is unreachable ({one_line(error, 200)})",
                url,
            ) from None
        except REMOTE_ERRORS as error:
            raise QueryError(one_line(error)) from None
        finally:
            with run.lock:
                if run.open_reads.pop(span_id, None) is not None:
                    run.reads.append(read_record(source, stats, started, time.time_ns(), span_id))
