"""One task on a worker: register its inputs, run its SQL with DataFusion, fill its buckets."""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
from datafusion import SessionContext

from otel_dist.errors import one_line
from otel_dist.exchange.clients import call_options, client_for
from otel_dist.exchange.router import StreamStats, TelemetrySink, route
from otel_dist.protocol import BucketSource, BucketTicket, TaskInput, TaskSpec
from otel_dist.session import conform, new_session
from otel_dist.worker.buckets import Bucket, MemoryBudget

log = logging.getLogger(__name__)

HASH_SEED = 0x6F74656C
_UPSTREAM_FAILURE = re.compile(r"^stage \d+ task \d+ on \S+ failed: ")


class TaskCancelled(RuntimeError):
    """The task was cancelled before it finished."""


@dataclass
class TaskSettings:
    """Worker-wide settings a task runs with."""

    worker_url: str
    target_partitions: int
    read_timeout_s: float
    spill_dir: str
    budget: MemoryBudget


@dataclass
class InputRead:
    """What a task read from one upstream bucket."""

    source: BucketSource
    stats: StreamStats
    started_ns: int
    ended_ns: int = 0


@dataclass
class Task:
    """A running or finished task and its output buckets."""

    spec: TaskSpec
    settings: TaskSettings
    on_telemetry: TelemetrySink | None = None
    buckets: list[Bucket] = field(default_factory=list)
    state: str = "pending"
    error: str | None = None
    started_ns: int = 0
    ended_ns: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    input_reads: list[InputRead] = field(default_factory=list)
    ctx: SessionContext | None = None
    physical_plan: object | None = None
    on_finish: list[Callable[[Task], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cancel = threading.Event()
        self._done = threading.Event()
        schema = self.spec.output_schema()
        tag = f"{self.spec.query_id}-{self.spec.stage_id}-{self.spec.task_index}"
        self.buckets = [
            Bucket(
                schema, self.settings.budget, os.path.join(self.settings.spill_dir, f"{tag}-{b}")
            )
            for b in range(self.spec.output.buckets)
        ]
        self._scratch = tempfile.mkdtemp(prefix=f"task-{tag}-", dir=self.settings.spill_dir)

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"task-{self.spec.key}", daemon=True).start()

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
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _run(self) -> None:
        self.state = "running"
        self.started_ns = time.time_ns()
        try:
            ctx = new_session(self.settings.target_partitions)
            self.ctx = ctx
            for task_input in self.spec.inputs:
                self._register(ctx, task_input)
            frame = ctx.sql(self.spec.sql)
            self.physical_plan = frame.execution_plan()
            stream = frame.execute_stream()
            schema = self.spec.output_schema()
            for raw in stream:
                if self._cancel.is_set():
                    raise TaskCancelled("cancelled")
                batch = conform(raw.to_pyarrow(), schema)
                if batch.num_rows:
                    self._emit(batch)
            for bucket in self.buckets:
                bucket.finish()
            self.state = "finished"
        except Exception as error:
            self.state = "cancelled" if self._cancel.is_set() else "failed"
            message = one_line(error)
            # An upstream task's failure is the root cause: pass it on rather than wrap it.
            self.error = (
                message
                if _UPSTREAM_FAILURE.match(message)
                else (
                    f"stage {self.spec.stage_id} task {self.spec.task_index} on "
                    f"{self.settings.worker_url} failed: {message}"
                )
            )
            if self.state == "failed":
                log.warning("%s", self.error)
            for bucket in self.buckets:
                bucket.fail(self.error)
        finally:
            self.ended_ns = time.time_ns()
            self._done.set()
            for callback in self.on_finish:
                try:
                    callback(self)
                except Exception:
                    log.warning("task finish callback failed", exc_info=True)

    def _emit(self, batch: pa.RecordBatch) -> None:
        self.rows_out += batch.num_rows
        self.bytes_out += batch.nbytes
        output = self.spec.output
        if output.kind != "hash" or output.buckets == 1:
            self.buckets[0].append(batch)
            return
        for bucket_index, part in enumerate(hash_partition(batch, output.keys, output.buckets)):
            if part.num_rows:
                self.buckets[bucket_index].append(part)

    def _register(self, ctx: SessionContext, task_input: TaskInput) -> None:
        if not task_input.is_stage_input:
            folder = os.path.join(self._scratch, task_input.table_name)
            os.makedirs(folder, exist_ok=True)
            for index, path in enumerate(task_input.files):
                os.symlink(path, os.path.join(folder, f"{index:05d}-{os.path.basename(path)}"))
            ctx.register_parquet(task_input.table_name, folder)
            return
        # DataFusion's Python API has no streaming table provider: upstream buckets are read
        # concurrently as they are produced, then handed to DataFusion as in-memory partitions.
        schema = task_input.schema()
        batches = list(self._read_sources(task_input, schema))
        partitions: list[list[pa.RecordBatch]] = [
            [] for _ in range(self.settings.target_partitions)
        ]
        for index, batch in enumerate(batches):
            partitions[index % len(partitions)].append(batch)
        partitions = [p for p in partitions if p] or [
            [pa.RecordBatch.from_pylist([], schema=schema)]
        ]
        ctx.register_record_batches(task_input.table_name, partitions)

    def _read_sources(self, task_input: TaskInput, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """Merge the upstream buckets into one stream, reading them concurrently."""
        merged: queue.Queue[pa.RecordBatch | BaseException | None] = queue.Queue(maxsize=16)
        remaining = len(task_input.sources)

        def pump(source: BucketSource) -> None:
            read = InputRead(source, StreamStats(), time.time_ns())
            self.input_reads.append(read)
            try:
                for batch in read_bucket(
                    source,
                    self.spec.query_id,
                    self.settings.read_timeout_s,
                    self.on_telemetry,
                    read.stats,
                    self.spec.trace_context,
                ):
                    _put(merged, conform(batch, schema), self._cancel)
                _put(merged, None, self._cancel)
            except BaseException as error:
                _put(merged, error, self._cancel)
            finally:
                read.ended_ns = time.time_ns()

        for source in task_input.sources:
            threading.Thread(target=pump, args=(source,), daemon=True).start()
        while remaining:
            try:
                item = merged.get(timeout=1.0)
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


def _put(target: queue.Queue, item: object, cancel: threading.Event) -> None:
    while not cancel.is_set():
        try:
            target.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


def read_bucket(
    source: BucketSource,
    query_id: str,
    timeout_s: float,
    on_telemetry: TelemetrySink | None,
    stats: StreamStats,
    headers: dict[str, str] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream one upstream bucket through the router."""
    ticket = BucketTicket(query_id, source.stage_id, source.task_index, source.bucket)
    client = client_for(source.worker_url)
    reader = client.do_get(
        pa.flight.Ticket(ticket.to_bytes()), options=call_options(timeout_s, headers)
    )
    yield from route(reader, on_telemetry, stats)


def hash_partition(
    batch: pa.RecordBatch, keys: tuple[str, ...], buckets: int
) -> list[pa.RecordBatch]:
    """Split a batch into ``buckets`` parts by a stable hash of its key columns."""
    frame = pl.from_arrow(pa.Table.from_batches([batch.select(list(keys))]))
    assert isinstance(frame, pl.DataFrame)
    assignment = (frame.hash_rows(seed=HASH_SEED) % buckets).to_numpy()
    return [batch.take(pa.array(np.flatnonzero(assignment == b))) for b in range(buckets)]
