"""Output buckets of a running task: appended by the task, read by any number of consumers.

A bucket keeps batches in memory while the worker's memory budget allows and spills the rest
to an Arrow IPC file, so a consumer that reads late (or never) cannot stall the producer nor
exhaust memory. Readers block, with a bounded wait, until the next batch or the end arrives.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from otel_dist.worker.spill import spill_error, write_fully


class BucketError(RuntimeError):
    """The task producing a bucket failed or was cancelled."""


class MemoryBudget:
    """Bytes of bucket data a worker keeps in memory before spilling, shared by all buckets."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self.spilled_bytes = 0
        self._lock = threading.Lock()

    def try_reserve(self, size: int) -> bool:
        with self._lock:
            if self.used_bytes + size > self.limit_bytes:
                return False
            self.used_bytes += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.used_bytes = max(0, self.used_bytes - size)

    def count_spill(self, size: int) -> None:
        with self._lock:
            self.spilled_bytes += size


@dataclass(frozen=True)
class _Spilled:
    offset: int
    length: int


class Bucket:
    """An append-only sequence of record batches with one writer and many readers."""

    def __init__(self, schema: pa.Schema, budget: MemoryBudget, spill_path: str) -> None:
        self.schema = schema
        self._budget = budget
        self._spill_path = spill_path
        self._spill_file: int | None = None
        self._spill_end = 0
        self._items: list[pa.RecordBatch | _Spilled] = []
        self._memory_bytes = 0
        self._finished = False
        self._error: str | None = None
        self._closed = False
        self._cond = threading.Condition()
        self.rows = 0
        self.bytes = 0
        self.batches = 0

    def append(self, batch: pa.RecordBatch) -> None:
        # The memory the batch holds (a slice holds all of its buffers); nbytes, the logical
        # size, walks every column's offsets and costs some 50 times more.
        size = batch.get_total_buffer_size()
        item: pa.RecordBatch | _Spilled
        if self._budget.try_reserve(size):
            item = batch
            self._memory_bytes += size
        else:
            item = self._spill(batch)
        with self._cond:
            if self._closed:
                self._release(item)
                return
            self._items.append(item)
            self.rows += batch.num_rows
            self.bytes += size
            self.batches += 1
            self._cond.notify_all()

    def _release(self, item: pa.RecordBatch | _Spilled) -> None:
        if isinstance(item, pa.RecordBatch):
            self._budget.release(item.get_total_buffer_size())

    def _spill(self, batch: pa.RecordBatch) -> _Spilled:
        payload = batch.serialize()
        if self._spill_file is None:
            try:
                self._spill_file = os.open(
                    self._spill_path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600
                )
            except OSError as error:
                raise spill_error(error, self._spill_path) from None
        # A short write (a full device, a file size limit) is continued or fails clearly.
        written = write_fully(self._spill_file, payload, self._spill_end, self._spill_path)
        spilled = _Spilled(self._spill_end, written)
        self._spill_end += written
        self._budget.count_spill(written)
        return spilled

    def finish(self) -> None:
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def fail(self, message: str) -> None:
        with self._cond:
            if not self._finished:
                self._error = message
                self._finished = True
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def spilled_bytes(self) -> int:
        """Bytes written to the spill file so far."""
        return self._spill_end

    def read(self, timeout_s: float) -> Iterator[pa.RecordBatch]:
        """Yield every batch from the start; raise ``BucketError`` if the producer failed.

        ``timeout_s`` bounds the wait for each next batch.
        """
        index = 0
        while True:
            with self._cond:
                deadline = time.monotonic() + timeout_s
                while index >= len(self._items) and not self._finished and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BucketError(f"no data from the producing task for {timeout_s:.0f}s")
                    self._cond.wait(min(remaining, 1.0))
                if self._closed:
                    raise BucketError("the query was released")
                if index < len(self._items):
                    item = self._items[index]
                elif self._error is not None:
                    raise BucketError(self._error)
                else:
                    return
            index += 1
            yield item if isinstance(item, pa.RecordBatch) else self._load(item)

    def _load(self, spilled: _Spilled) -> pa.RecordBatch:
        assert self._spill_file is not None
        payload = os.pread(self._spill_file, spilled.length, spilled.offset)
        return pa.ipc.read_record_batch(pa.py_buffer(payload), self.schema)

    def close(self) -> None:
        """Free memory and the spill file; readers still waiting get an error."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._budget.release(self._memory_bytes)
            self._memory_bytes = 0
            self._items = []
            self._cond.notify_all()
        if self._spill_file is not None:
            os.close(self._spill_file)
            self._spill_file = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._spill_path)
