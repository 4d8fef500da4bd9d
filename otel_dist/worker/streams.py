"""Pulling a DataFusion stream so that cancelling a task stops its execution at once.

``RecordBatchStream.__next__`` blocks the calling thread in DataFusion until the next batch
is there, and a blocking operator (sort, aggregate, join build) may compute for a long time
before its first one: a cancelled task would keep its core busy until then. Here each batch is
awaited through ``__anext__`` on a shared asyncio loop instead, and the waiting thread checks
the task's cancel flag every ``POLL_S``. On cancel the pending ``__anext__`` is cancelled,
which drops the Rust future polling the stream (pyo3's cancellation), and the stream itself is
dropped by the caller: DataFusion then aborts the tokio tasks that run the plan's partitions
(repartitions, merges) at their next yield point.

The limit: DataFusion stops only where it yields to tokio (file reads, exchanges, its
cooperative budget). An operator computing over in-memory input without yielding (a join
whose output explodes, feeding an aggregate) goes on until its current poll returns; this
thread and the task end at once all the same, and the core frees itself when that poll ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

POLL_S = 0.05

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


class StreamCancelled(Exception):
    """The stream was abandoned because its task was cancelled."""


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="datafusion-streams", daemon=True
            ).start()
            _loop = loop
        return _loop


async def _next(stream: object) -> object | None:
    try:
        return await stream.__anext__()  # type: ignore[attr-defined]
    except StopAsyncIteration:
        return None


def batches(stream: object, cancelled: Callable[[], bool]) -> Iterator[object]:
    """The stream's batches (DataFusion ``RecordBatch``es); raises ``StreamCancelled`` within
    ``POLL_S`` of ``cancelled()`` turning true, even while DataFusion computes."""
    loop = _event_loop()
    while True:
        if cancelled():
            raise StreamCancelled("cancelled")
        pending: Future[object | None] = asyncio.run_coroutine_threadsafe(_next(stream), loop)
        while True:
            try:
                item = pending.result(timeout=POLL_S)
                break
            except FutureTimeout:
                if cancelled():
                    pending.cancel()
                    raise StreamCancelled("cancelled") from None
        if item is None:
            return
        yield item
