"""Counting what happens to a process's spans on their way out, for the telemetry-health metrics.

The SDK's ``BatchSpanProcessor`` queues ended spans and exports them from a background thread;
when its queue is full it drops spans with nothing more than a log line, and an exporter that
fails only logs. Two small decorators make both visible:

* ``CountingSpanExporter`` wraps the real exporter and counts spans exported and spans whose
  export failed (a ``FAILURE`` result or an exception, which it turns into ``FAILURE``).
* ``CountingBatchSpanProcessor`` is a ``BatchSpanProcessor`` that counts the sampled spans handed
  to it (``submitted``) and the spans its full queue drops (``dropped``). The SDK keeps its
  queue in a private ``collections.deque`` with a ``maxlen`` (adding to a full one silently
  discards the oldest span); the processor swaps in a deque that counts those discards, exactly
  (adds and removals share a lock). Should a future SDK keep its queue elsewhere, drops read 0
  and ``submitted - exported - failed`` still bounds them (it is the queue plus the drops).

``instrumented_telemetry`` builds a ``Telemetry`` exactly as ``Telemetry(config)`` does, except
that its span exporter is wrapped by the two decorators above.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from otel_dist.telemetry.setup import Telemetry, TelemetryConfig, _exporter

log = logging.getLogger(__name__)


@dataclass
class SpanExportStats:
    """Counters of one process's span export path (monotonic, thread-safe)."""

    submitted: int = 0
    exported: int = 0
    failed: int = 0
    dropped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, amount: int) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "submitted": self.submitted,
                "exported": self.exported,
                "failed": self.failed,
                "dropped": self.dropped,
            }


class CountingSpanExporter(SpanExporter):
    """A span exporter that counts what its inner exporter exported or failed to; never raises."""

    def __init__(self, inner: SpanExporter, stats: SpanExportStats) -> None:
        self.inner = inner
        self.stats = stats

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            log.warning("span export raised", exc_info=True)
            result = SpanExportResult.FAILURE
        self.stats.add("exported" if result == SpanExportResult.SUCCESS else "failed", len(spans))
        return result

    def shutdown(self) -> None:
        try:
            self.inner.shutdown()
        except Exception:
            log.warning("span exporter shutdown raised", exc_info=True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return self.inner.force_flush(timeout_millis)
        except Exception:
            log.warning("span exporter flush raised", exc_info=True)
            return False


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """A ``BatchSpanProcessor`` that counts spans submitted to it and spans its full queue drops."""

    def __init__(self, exporter: SpanExporter, stats: SpanExportStats) -> None:
        super().__init__(exporter)
        self.stats = stats
        self.counts_drops = self._count_drops()

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self.stats.add("submitted", 1)
        super().on_end(span)

    def _count_drops(self) -> bool:
        """Swap the SDK's span queue (private, where this SDK version keeps it) for a counting
        one; False when it is not found."""
        for owner in (getattr(self, "_batch_processor", None), self):
            for name in ("_queue", "queue"):
                queue = getattr(owner, name, None)
                if isinstance(queue, collections.deque) and queue.maxlen is not None:
                    counting = _CountingQueue(queue, queue.maxlen, self.stats)
                    setattr(owner, name, counting)
                    return True
        log.info("this SDK's span queue is not visible: dropped spans are not counted")
        return False


class _CountingQueue(collections.deque[object]):
    """A bounded deque that counts the items a full ``appendleft`` discards (thread-safe)."""

    def __init__(self, items: Iterable[object], maxlen: int, stats: SpanExportStats) -> None:
        super().__init__(items, maxlen)
        self._stats = stats
        self._lock = threading.Lock()

    def appendleft(self, item: object) -> None:
        with self._lock:
            full = len(self) >= (self.maxlen or 0)
            super().appendleft(item)
        if full:
            self._stats.add("dropped", 1)

    def pop(self, *args: int) -> object:  # the SDK pops from the right end only
        with self._lock:
            return super().pop(*args)


def instrumented_telemetry(config: TelemetryConfig) -> tuple[Telemetry, SpanExportStats | None]:
    """``Telemetry(config)`` with its span exporter counted; the stats are None without one."""
    if not config.enabled:
        return Telemetry(config), None
    try:
        exporter = _exporter(config)
    except Exception:
        log.warning("span exporter could not be created; spans are not exported", exc_info=True)
        exporter = None
    stats: SpanExportStats | None = None
    processors: list[SpanProcessor] = []
    if exporter is not None:
        stats = SpanExportStats()
        processors.append(CountingBatchSpanProcessor(CountingSpanExporter(exporter, stats), stats))
    telemetry = Telemetry(dataclasses.replace(config, traces_exporter="none"), processors)
    telemetry.config = config  # the settings as read, not the copy used to skip the exporter
    return telemetry, stats
