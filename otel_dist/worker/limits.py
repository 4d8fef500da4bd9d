"""Bounds on what callers can make a worker hold: calls waiting for a task that does not
exist (yet), and bucket streams being served.

Every Flight call holds one of gRPC's server threads for as long as it lasts, and gRPC adds
threads as calls come. A ``do_get`` for a task not submitted yet waits for it (bounded by
``task_wait_s``), so 300 such calls held 300 threads for 30 s. With these limits a caller past
the bound gets a one-line error at once, and the thread goes back.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.flight as flight

DEFAULT_MAX_WAITING_CALLS = 64
DEFAULT_MAX_OPEN_STREAMS = 512


@dataclass
class CallLimit:
    """At most ``limit`` calls inside at once; one more is refused with an error naming
    the limit (``option``, the setting that raises it)."""

    limit: int
    what: str  # e.g. "calls waiting for a task"
    option: str
    _inside: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def inside(self) -> int:
        return self._inside

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self._inside >= self.limit:
                raise flight.FlightServerError(
                    f"worker busy: {self.limit} {self.what} already ({self.option}); "
                    "try again later"
                )
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
