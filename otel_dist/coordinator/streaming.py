"""A plain query's result as an iterator of batches, produced while the query runs.

The query runs on its own thread and hands the root stage's batches through a small queue, so
the reader holds a few batches, not the result, and a slow reader slows the reading down. A
reader that stops early (closes the iterator) cancels the query everywhere; so does one that
``reader_gone`` reports gone while the first batches are still being computed. Used by the
coordinator's Flight server and by ``LocalCluster.stream``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator

import pyarrow as pa

from otel_dist.coordinator.core import Coordinator, QueryError

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.1
QUEUE_BATCHES = 8  # batches held between the workers and the reader


def stream_result(
    coordinator: Coordinator,
    sql: str,
    query_id: str,
    reader_gone: Callable[[], bool] = lambda: False,
    claimed: bool = False,
) -> Iterator[pa.RecordBatch]:
    """The query's batches in order; the query's error, if it fails, after the last batch
    delivered. ``claimed``: the caller has already claimed ``query_id``."""
    batches: queue.Queue[object] = queue.Queue(maxsize=QUEUE_BATCHES)
    gone, done = threading.Event(), threading.Event()
    end = object()
    outcome: dict[str, BaseException] = {}

    def put(item: object) -> None:
        while not gone.is_set():
            try:
                batches.put(item, timeout=WATCH_INTERVAL_S)
                return
            except queue.Full:
                continue
        raise QueryError(f"query {query_id} was cancelled by its reader")

    def run() -> None:
        try:
            coordinator.execute(sql, query_id, sink=put, claimed=claimed)
        except BaseException as error:
            outcome["error"] = error
        finally:
            done.set()
            with contextlib.suppress(QueryError):
                put(end)

    threading.Thread(target=run, name=f"query-{query_id[:12]}", daemon=True).start()
    finished = False
    try:
        while True:
            try:
                item = batches.get(timeout=WATCH_INTERVAL_S)
            except queue.Empty:
                if reader_gone():  # gone while the first batches are computed
                    return
                continue
            if item is end:
                break
            yield item
        finished = True
    finally:
        if not finished:
            log.info("the reader of query %s went away: cancelling it", query_id)
            gone.set()
            threading.Thread(
                target=cancel_until_done, args=(coordinator, query_id, done), daemon=True
            ).start()
    error = outcome.get("error")
    if error is not None:
        raise error


def cancel_until_done(coordinator: Coordinator, query_id: str, done: threading.Event) -> None:
    """Cancel the query; retried while it is still being planned (not yet cancellable)."""
    for _ in range(600):  # bounded: a minute at most
        if coordinator.cancel(query_id) or done.wait(WATCH_INTERVAL_S):
            return
