"""A task's stage inputs handed to DataFusion: in memory when small, streamed when large.

DataFusion 55's Python API has no streaming table provider, and what it offers collects:
``ctx.from_arrow(reader)`` and ``ctx.register_dataset(name, pyarrow.dataset.dataset(reader))``
both read the whole reader when the table is registered (``InMemoryDataset`` builds a table).
What does stream is DataFusion's scan of a pyarrow dataset (``DatasetExec``): it asks the
dataset for its fragments at planning, one partition each, and pulls each fragment's
``scanner(...).to_batches()`` batch by batch while the plan runs. ``StreamDataset`` is a
``pyarrow.dataset.Dataset`` whose fragments pull from the merged upstream stream, so the scan
starts while upstream tasks still produce and memory holds a few batches per input.

Rules:

* An input is read until ``OTEL_DIST_STREAM_BYTES`` have arrived; one that ends before is
  registered in memory (``register_record_batches``), as before, which is fastest for small
  inputs. The rest is streamed, the batches already read first.
* A streamed input can be scanned once. The plan is checked after planning; a streamed input
  that it scans more than once, with a filter pushed into the scan, on a join's build side,
  or below an operator that runs its input on DataFusion's own threads (a repartition, a
  merge of partitions) is read to the end and registered in memory, and the SQL is planned
  again. On DataFusion's threads a scan that waits for upstream data would block a thread
  the worker's other tasks, its upstream ones among them, may need.
* A plan that streams is pulled with the stream's blocking ``__next__`` on the task's own
  thread (``pull``), not with ``__anext__`` on tokio's threads (``worker/streams.py``): there
  a scan waiting for upstream data would hold one of the few threads every task of the
  worker, its upstream ones among them, runs on, and the worker would deadlock.
* Time a streamed scan spends waiting for upstream data is counted per stage and moved from
  the task's ``operators`` part to its ``wait_stage_<N>`` part (``worker/timing.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as ds
from datafusion import SessionContext

from otel_dist import settings
from otel_dist.protocol import TaskInput
from otel_dist.worker.streams import StreamCancelled

# Operators that pull their input partitions on DataFusion's threads (spawned tasks): a
# repartition always, a merge of several partitions. (A sort, a join's build side, an
# aggregation pull their input in the stream that polls them: the drain's thread.)
_SPAWNING_ALWAYS = ("RepartitionExec",)
_SPAWNING_MERGES = ("CoalescePartitionsExec", "SortPreservingMergeExec")
# Joins that collect their first input (the build side) whole before reading the other.
_COLLECTING_JOINS = ("HashJoinExec", "NestedLoopJoinExec", "CrossJoinExec")
_SCAN = "DatasetExec"


def stream_threshold() -> int:
    """Inputs with more bytes than this are streamed (``OTEL_DIST_STREAM_BYTES``)."""
    return int(settings.read("OTEL_DIST_STREAM_BYTES"))


@dataclass
class WaitCounter:
    """Nanoseconds scans spent blocked waiting for one upstream stage's batches."""

    part: str
    ns: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ns: int) -> None:
        with self.lock:
            self.ns += ns


class _Shared:
    """One merged upstream stream that several fragments pull from, one batch at a time."""

    def __init__(
        self,
        name: str,
        head: list[pa.RecordBatch],
        rest: Iterator[pa.RecordBatch],
        wait: WaitCounter,
    ) -> None:
        self.name = name
        self.wait_counter = wait
        self._head = head
        self._rest = rest
        self._lock = threading.Lock()
        self._wait = wait
        self.scans = 0

    def next_batch(self) -> pa.RecordBatch | None:
        with self._lock:
            if self._head:
                return self._head.pop(0)
            started = time.perf_counter_ns()
            try:
                return next(self._rest, None)
            finally:
                self._wait.add(time.perf_counter_ns() - started)

    def remaining(self) -> list[pa.RecordBatch]:
        """Everything not pulled yet (for registering the input in memory after all)."""
        with self._lock:
            batches, self._head = self._head, []
            batches.extend(self._rest)
            return batches


class StreamFragment:
    """One partition of a streamed input: what DataFusion's ``DatasetExec`` asks of a
    fragment (``scanner(schema, columns=, filter=, batch_size=)``)."""

    def __init__(self, shared: _Shared, schema: pa.Schema) -> None:
        self._shared = shared
        self._schema = schema

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while (batch := self._shared.next_batch()) is not None:
            yield batch

    def scanner(self, schema: pa.Schema | None = None, **options: object) -> BatchScanner:
        with self._shared._lock:
            self._shared.scans += 1
        return BatchScanner(self._schema, options.get("columns"), self._batches())  # type: ignore[arg-type]


class BatchScanner:
    """What ``DatasetExec`` asks of a scanner: ``projected_schema`` and ``to_batches()``.
    Projection only: plans that push a filter into a streamed scan are not streamed (pyarrow
    would evaluate it with Acero, which warns on every Flight-received batch whose buffers
    are not aligned to their type's width)."""

    def __init__(
        self, schema: pa.Schema, columns: list[str] | None, batches: Iterator[pa.RecordBatch]
    ) -> None:
        self._columns = columns
        self.projected_schema = (
            schema if columns is None else pa.schema([schema.field(c) for c in columns])
        )
        self._source = batches

    def to_batches(self) -> Iterator[pa.RecordBatch]:
        columns = self._columns
        for batch in self._source:
            yield batch if columns is None else batch.select(columns)


class StreamDataset(ds.Dataset):
    """A pyarrow dataset over a one-shot stream; ``width`` fragments share it."""

    def __init__(self, shared: _Shared, schema: pa.Schema, width: int) -> None:
        # ds.Dataset's own constructor refuses direct use; DataFusion only calls the methods
        # below (and checks the type).
        self._shared = shared
        self._stream_schema = schema
        self._fragments = [StreamFragment(shared, schema) for _ in range(max(1, width))]

    @property
    def schema(self) -> pa.Schema:
        return self._stream_schema

    def scanner(self, **options: object) -> BatchScanner:
        """Planning asks for the projected schema only."""
        return BatchScanner(self._stream_schema, options.get("columns"), iter(()))  # type: ignore[arg-type]

    def get_fragments(self, filter: object = None) -> list[StreamFragment]:
        return list(self._fragments)


@dataclass
class _Streamed:
    name: str
    schema: pa.Schema
    shared: _Shared


class StageInputs:
    """Registers a task's stage inputs and plans its SQL so that streamed ones stay safe."""

    def __init__(self, width: int, threshold: int | None = None) -> None:
        self.width = max(1, width)
        self.threshold = stream_threshold() if threshold is None else threshold
        self._streamed: list[_Streamed] = []
        self.waits: list[WaitCounter] = []
        # Time spent reading held inputs to their end while planning, by wait part: waiting
        # for upstream tasks, not planning.
        self.drained_ns: dict[str, int] = {}
        self.held: dict[str, list[pa.RecordBatch]] = {}  # inputs registered in memory

    @property
    def streaming(self) -> bool:
        """Whether any input is (still) streamed."""
        return bool(self._streamed)

    @property
    def streamed_names(self) -> set[str]:
        """The tables of the inputs (still) streamed."""
        return {streamed.name for streamed in self._streamed}

    def register(
        self,
        ctx: SessionContext,
        task_input: TaskInput,
        batches: Iterator[pa.RecordBatch],
        schema: pa.Schema,
        wait_part: str,
        number: Callable[[list[pa.RecordBatch], pa.Schema], tuple[list[pa.RecordBatch], pa.Schema]]
        | None = None,
    ) -> None:
        """Read the input up to the threshold, then register it in memory or streamed.
        ``number``: the row-numbering step for inputs that need it (never streamed)."""
        head: list[pa.RecordBatch] = []
        size = 0
        streamable = number is None and self.threshold > 0
        for batch in batches:
            head.append(batch)
            size += batch.get_total_buffer_size()
            if streamable and size > self.threshold:
                wait = WaitCounter(wait_part)
                self.waits.append(wait)
                shared = _Shared(task_input.table_name, head, batches, wait)
                self._streamed.append(_Streamed(task_input.table_name, schema, shared))
                ctx.register_dataset(
                    task_input.table_name, StreamDataset(shared, schema, self.width)
                )
                return
        if number is not None:
            head, schema = number(head, schema)
        register_in_memory(ctx, task_input.table_name, head, schema, self.width)
        self.held[task_input.table_name] = head

    def plan(self, ctx: SessionContext, make_plan: Callable[[], object]) -> object:
        """``make_plan()``, planned again after registering in memory each streamed input the
        plan cannot stream (``inputs_to_hold``)."""
        plan = make_plan()
        while self._streamed:
            hold = inputs_to_hold(plan, {s.name: s.schema for s in self._streamed})
            if not hold:
                break
            self.materialise(ctx, hold)
            plan = make_plan()
        return plan

    def materialise(self, ctx: SessionContext, names: set[str] | None = None) -> None:
        """Read streamed inputs (``names``, or all) to their end and register them in memory."""
        keep: list[_Streamed] = []
        for streamed in self._streamed:
            if names is not None and streamed.name not in names:
                keep.append(streamed)
                continue
            ctx.deregister_table(streamed.name)
            started = time.perf_counter_ns()
            rest = streamed.shared.remaining()
            part = streamed.shared.wait_counter.part
            self.drained_ns[part] = self.drained_ns.get(part, 0) + time.perf_counter_ns() - started
            register_in_memory(ctx, streamed.name, rest, streamed.schema, self.width)
            self.held[streamed.name] = rest
        self._streamed = keep
        self.waits = [s.shared.wait_counter for s in keep]

    def wait_ns(self) -> dict[str, int]:
        """Time streamed scans waited for upstream data, per wait part."""
        waits: dict[str, int] = {}
        for wait in self.waits:
            waits[wait.part] = waits.get(wait.part, 0) + wait.ns
        return waits


def pull(stream: object, stopped: Callable[[], bool]) -> Iterator[object]:
    """The stream's batches, each polled on this thread; ``StreamCancelled`` once
    ``stopped()`` (checked between batches: a streamed scan waiting for data sees a cancel
    itself, through the task's input reader)."""
    for batch in stream:  # type: ignore[attr-defined]
        if stopped():
            raise StreamCancelled("cancelled")
        yield batch


def register_in_memory(
    ctx: SessionContext, name: str, batches: list[pa.RecordBatch], schema: pa.Schema, width: int
) -> None:
    """The input as in-memory partitions, its batches dealt round-robin."""
    partitions = [batches[i::width] for i in range(width)]
    partitions = [p for p in partitions if p] or [[pa.RecordBatch.from_pylist([], schema=schema)]]
    ctx.register_record_batches(name, partitions)


def inputs_to_hold(plan: object, streamed: dict[str, pa.Schema]) -> set[str]:
    """The streamed inputs (by name, with their schemas) the physical plan cannot stream:
    scanned more than once, with a filter pushed into the scan, on a join's build side, or
    below an operator that runs its input on DataFusion's threads. A scan is told apart by
    its projected columns; one that matches several inputs holds them all."""
    scans: dict[str, int] = {}
    hold: set[str] = set()

    def walk(node: object, unsafe: bool) -> None:
        line = node.display().strip()  # type: ignore[attr-defined]
        name = line.split(":", 1)[0]
        children = node.children()  # type: ignore[attr-defined]
        if name == _SCAN:
            columns = set(_projection(line))
            owners = [t for t, schema in streamed.items() if columns <= set(schema.names)]
            if len(owners) != 1:
                hold.update(owners or streamed)
                return
            scans[owners[0]] = scans.get(owners[0], 0) + 1
            if unsafe or "filter_expr=" in line:
                hold.add(owners[0])
            return
        spawns = name in _SPAWNING_ALWAYS or (
            name in _SPAWNING_MERGES and any(child.partition_count > 1 for child in children)
        )
        for index, child in enumerate(children):
            # A streamed build side saves no memory, and its unknown size (a pyarrow dataset
            # has no statistics) keeps DataFusion from putting the smaller side there.
            build = index == 0 and name in _COLLECTING_JOINS
            walk(child, unsafe or spawns or build)

    walk(plan, False)
    return hold | {t for t, count in scans.items() if count > 1}


def _projection(line: str) -> list[str]:
    """The columns of a ``DatasetExec`` line's ``projection=[a, b]``."""
    _, _, rest = line.partition("projection=[")
    inner = rest.split("]", 1)[0]
    return [c.strip() for c in inner.split(",") if c.strip()]
