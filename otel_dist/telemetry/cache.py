"""The worker's cache of finished tasks' telemetry: bounded in entries, expired after a TTL.

The coordinator fetches from it (Flight action ``get_task_telemetry``) the telemetry of every
task whose final Flight message it did not receive: LIMIT, cancellation, failures. It does so
before it releases the query, so a release drops the query's entries; the bound and the TTL
cover queries whose release never arrives (a coordinator that died).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from otel_dist.telemetry.envelope import TaskRef


class TelemetryCache:
    """Task key -> serialized OTLP request of the task's own spans, LRU with a TTL."""

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 900.0) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[tuple[str, TaskRef], tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def put(self, query_id: str, task: TaskRef, payload: bytes) -> None:
        with self._lock:
            self._entries[(query_id, task)] = (time.monotonic(), payload)
            self._entries.move_to_end((query_id, task))
            self._expire_locked()

    def get(self, query_id: str, task: TaskRef) -> bytes | None:
        with self._lock:
            self._expire_locked()
            entry = self._entries.get((query_id, task))
            return entry[1] if entry is not None else None

    def drop_query(self, query_id: str) -> int:
        """Forget every task of a query; how many entries that was."""
        with self._lock:
            keys = [key for key in self._entries if key[0] == query_id]
            for key in keys:
                del self._entries[key]
            return len(keys)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _expire_locked(self) -> None:
        deadline = time.monotonic() - self.ttl_s
        while self._entries:
            key, (stored, _) = next(iter(self._entries.items()))
            if stored >= deadline and len(self._entries) <= self.max_entries:
                break
            del self._entries[key]
            self.evicted += 1
