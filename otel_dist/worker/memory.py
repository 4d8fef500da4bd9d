"""A worker's memory: DataFusion's execution memory bounded per task, and memory handed back
to the operating system once the worker is idle.

Execution memory: each task's DataFusion session gets a fair spill pool of
``execution_memory_bytes / max_running_tasks`` (admission control bounds the running tasks,
so the pools add up to the budget) and spills sorts, aggregates and joins that pass it to
the worker's spill folder. The budget defaults to half the memory of the machine or
container (its cgroup limit), split among the workers of a local cluster. Data a task holds outside DataFusion (its input batches, its
output buckets, which have their own budget) is not in the pool.

Handing memory back: DataFusion and Arrow allocate through their own mimalloc, Python and
the rest through glibc malloc, pyarrow through its default pool. Once no task has run for
``idle_s`` (``OTEL_DIST_IDLE_TRIM_S``, default 2; 0: never), the process asks each to return what it holds unused: ``malloc_trim(0)`` (glibc),
``release_unused()`` on pyarrow's pool, and the pool's idle threads leave, their mimalloc heaps
with them (``background.retire_idle``); mimalloc returns the rest of what is freed by itself
after ``MIMALLOC_PURGE_DELAY`` ms (see ``allocator.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from datafusion import RuntimeEnvBuilder

from otel_dist.background import retire_idle
from otel_dist.settings import SETTINGS, read

log = logging.getLogger(__name__)

# A worker's DataFusion memory by default: this share of the memory of its machine or container,
# divided among the workers a local cluster starts on it. Hash joins cannot spill, so the pool
# must hold the build sides of a task's joins: a fixed 1 GiB (256 MiB a task) failed TPC-H
# Q7 and Q9 at SF 10 with "Resources exhausted".
EXECUTION_MEMORY_SHARE = 0.5
MIN_EXECUTION_MEMORY_BYTES = 1 << 30
# A task's pool never goes below this, however many tasks share the budget.
MIN_TASK_POOL_BYTES = 1 << 20
IDLE_TRIM_ENV = "OTEL_DIST_IDLE_TRIM_S"  # seconds idle before trimming; 0: never
DEFAULT_IDLE_TRIM_S: float = SETTINGS[IDLE_TRIM_ENV].default


def idle_trim_from_env() -> float:
    return max(0.0, float(read(IDLE_TRIM_ENV)))


def available_memory_bytes() -> int:
    """The memory this process may use: its cgroup's limit (v2, then v1) if it has one,
    else the machine's physical memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number: no limit
            return int(text)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 4 * MIN_EXECUTION_MEMORY_BYTES


def default_execution_memory(workers_sharing: int = 1) -> int:
    """``EXECUTION_MEMORY_SHARE`` of the available memory, split among ``workers_sharing``
    workers on the same machine, and at least 1 GiB."""
    share = int(available_memory_bytes() * EXECUTION_MEMORY_SHARE) // max(1, workers_sharing)
    return max(MIN_EXECUTION_MEMORY_BYTES, share)


def task_pool_bytes(execution_memory_bytes: int, max_running_tasks: int) -> int:
    return max(MIN_TASK_POOL_BYTES, execution_memory_bytes // max(1, max_running_tasks))


def execution_runtime(pool_bytes: int, spill_dir: str) -> RuntimeEnvBuilder:
    """A session runtime with a fair spill pool of ``pool_bytes``, spilling to ``spill_dir``."""
    return (
        RuntimeEnvBuilder().with_disk_manager_specified(spill_dir).with_fair_spill_pool(pool_bytes)
    )


def _libc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory() -> None:
    """Hand unused heap memory back to the operating system, as far as each allocator can."""
    try:
        pa.default_memory_pool().release_unused()
    except Exception:  # an allocator without it
        log.debug("pyarrow pool release failed", exc_info=True)
    trim = _libc_trim()
    if trim is not None:
        trim(0)


@dataclass
class IdleTrimmer:
    """Calls ``release_memory`` once after the worker has been idle for ``idle_s``."""

    busy: object  # Callable[[], bool]: whether tasks run now
    idle_s: float = field(default_factory=idle_trim_from_env)  # 0: never
    _stop: threading.Event = field(default_factory=threading.Event)
    _last_busy: float = field(default_factory=time.monotonic)
    _trimmed: bool = True
    _touched: bool = False
    trims: int = 0

    def touch(self) -> None:
        """Work arrived (however short: it may end between two looks at ``busy``)."""
        self._touched = True

    def start(self) -> IdleTrimmer:
        if self.idle_s <= 0:
            return self
        threading.Thread(target=self._loop, name="memory-trim", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(min(1.0, self.idle_s)):
            try:
                touched, self._touched = self._touched, False
                if touched or self.busy():  # type: ignore[operator]
                    self._last_busy, self._trimmed = time.monotonic(), False
                elif not self._trimmed and time.monotonic() - self._last_busy >= self.idle_s:
                    retire_idle()  # their heaps go with them (otel_dist/background.py)
                    release_memory()
                    self._trimmed = True
                    self.trims += 1
            except Exception:  # never ends the worker
                log.warning("releasing memory failed", exc_info=True)
