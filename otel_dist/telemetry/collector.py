"""Per-query span collection: telemetry messages in, each task's spans out, once.

Workers use one per task (to forward what their upstream tasks sent), the coordinator one per
query (to build the explain tree and to know which tasks' telemetry never arrived).

A task's spans travel as one chunk, the serialized OTLP request the task made (see
``envelope``). The collector keeps the first chunk of each task (the same bytes may arrive
again by another path, or be fetched) and every distinct chunk of no single task. Nothing is
parsed until spans are asked for, so a worker forwards telemetry by joining bytes; a chunk
that does not parse then is counted as malformed and dropped, its task as not received.
"""

from __future__ import annotations

import logging
import threading

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_dist.telemetry import envelope as envelope_codec
from otel_dist.telemetry.envelope import NO_TASK, Envelope, EnvelopeError, TaskRef
from otel_dist.telemetry.otlp import SpanRecord, span_records

log = logging.getLogger(__name__)


class SpanCollector:
    """Telemetry of one query, by task. Thread-safe; never raises on input."""

    def __init__(self, query_id: str) -> None:
        self.query_id = query_id
        self._lock = threading.Lock()
        self._tasks: dict[TaskRef, bytes] = {}
        self._other: dict[bytes, None] = {}  # chunks of no single task, in arrival order
        self.messages = 0
        self.message_bytes = 0
        self.malformed = 0
        self.truncated = 0

    # ---- input ---------------------------------------------------------------------------

    def add_message(self, data: bytes, in_band: bool = True) -> None:
        """Accept a telemetry envelope (a final Flight message, or a fetched one when not
        ``in_band``); malformed ones are counted and logged, never raised."""
        if in_band:
            with self._lock:
                self.messages += 1
                self.message_bytes += len(data)
        try:
            received = envelope_codec.decode(data)
            if received.query_id != self.query_id:
                raise EnvelopeError(
                    f"telemetry for query {received.query_id[:100]}, not {self.query_id}"
                )
        except EnvelopeError as error:
            with self._lock:
                self.malformed += 1
            log.warning("malformed telemetry message for query %s: %s", self.query_id, error)
            return
        self.add_envelope(received)

    def add_envelope(self, received: Envelope) -> None:
        with self._lock:
            if received.truncated:
                self.truncated += 1
            for task, chunk in received.chunks:
                self._add(task, chunk)

    def _add(self, task: TaskRef, chunk: bytes) -> None:
        if task == NO_TASK:
            self._other.setdefault(chunk)
        else:
            self._tasks.setdefault(task, chunk)

    # ---- output --------------------------------------------------------------------------

    def tasks(self) -> set[TaskRef]:
        with self._lock:
            return set(self._tasks)

    def request(self) -> ExportTraceServiceRequest:
        """Every span held, parsed as one request. Chunks that do not parse are dropped and
        counted as malformed (their tasks then count as not received)."""
        with self._lock:
            chunks = [*self._tasks.items(), *((NO_TASK, chunk) for chunk in self._other)]
        try:
            return envelope_codec.decode_request(b"".join(chunk for _, chunk in chunks))
        except EnvelopeError:
            pass
        good: list[bytes] = []
        for task, chunk in chunks:  # find the damaged ones
            try:
                envelope_codec.decode_request(chunk)
                good.append(chunk)
            except EnvelopeError as error:
                log.warning(
                    "malformed spans of task %s of query %s: %s", task, self.query_id, error
                )
                with self._lock:
                    self.malformed += 1
                    if self._tasks.get(task) is chunk:
                        del self._tasks[task]
                    self._other.pop(chunk, None)
        return envelope_codec.decode_request(b"".join(good))

    def spans(self) -> list[SpanRecord]:
        return span_records([self.request()])

    def forwarding_envelope(self, own_task: TaskRef, own: bytes, limit_bytes: int) -> bytes:
        """The final message of a task: its own spans (serialized) first, then those of the
        tasks it received telemetry from, to a limit.

        Tasks that do not fit are left out whole and the envelope is marked truncated; their
        telemetry stays fetchable from the workers that ran them.
        """
        with self._lock:
            received = sorted((t, c) for t, c in self._tasks.items() if t != own_task)
            truncated = self.truncated > 0  # what arrived truncated is forwarded as truncated
        included: list[tuple[TaskRef, bytes]] = []
        size = 0
        for task, chunk in [(own_task, own), *received]:
            if size + len(chunk) > limit_bytes:
                truncated = True
                continue
            included.append((task, chunk))
            size += len(chunk)
        return envelope_codec.encode(self.query_id, included, truncated)
