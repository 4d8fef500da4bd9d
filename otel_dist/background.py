"""Short-lived background work on reused daemon threads.

Starting a ``threading.Thread`` waits for the new thread to take the GIL and say it started,
which costs up to a switch interval (5 ms) while other threads are busy, and a worker starts
several per task (the task, one per output partition, one per upstream bucket, one per
telemetry drain). Idle pool threads take the work from a queue instead. A thread is added only
when none is idle, so jobs that block on each other (a bucket pump waiting for a task in the
same process) never starve, and leaves after a few idle seconds. The threads are daemons, like the ones they replace: a process
exits without waiting for reads that are still blocked.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import ParamSpec, TypeVar

from otel_dist.deep_stack import start_thread

_P = ParamSpec("_P")
_R = TypeVar("_R")

_Job = tuple[Future[object], Callable[[], object]]
_LEAVE = None  # queued for an idle thread: leave now (``retire_idle``)

# A thread idle this long leaves, so a process returns to its usual thread count after load.
IDLE_EXIT_S = 5.0

_jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
_lock = threading.Lock()
_idle = 0


def run_in_background(
    function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
) -> Future[_R]:
    """Run ``function`` on a pooled daemon thread; its result or exception is in the future."""
    global _idle
    future: Future[_R] = Future()
    with _lock:
        if _idle:
            _idle -= 1
            spawn = False
        else:
            spawn = True
    _jobs.put((future, lambda: function(*args, **kwargs)))  # type: ignore[arg-type]
    if spawn:
        # A deep native stack: tasks plan and run DataFusion on these threads.
        start_thread(_serve, "otel-dist-background")
    return future


def retire_idle() -> int:
    """Let the threads idle now leave at once rather than after ``IDLE_EXIT_S``; how many.

    A thread that leaves takes its allocator heap with it: mimalloc hands a page freed by
    another thread back only at the owner's next allocation, or when the owner exits, so a
    process that has gone idle holds what its idle threads' heaps hold until they leave
    (TPC-H Q9 at SF 10: a worker at 2.05 GB 3 s after the query, 0.81 GB once they had left).
    Work that comes later starts threads again."""
    global _idle
    with _lock:
        count, _idle = _idle, 0  # no job is promised to them any more: new jobs start threads
    for _ in range(count):
        _jobs.put(_LEAVE)
    return count


def _serve() -> None:
    global _idle
    while True:
        try:
            item = _jobs.get(timeout=IDLE_EXIT_S)
        except queue.Empty:
            with _lock:
                # Leave only if an idle thread is not promised to a job already queued.
                if _idle:
                    _idle -= 1
                    return
            continue
        if item is _LEAVE:
            return
        future, job = item
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(job())
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)
        with _lock:
            _idle += 1
