"""Allocator settings of worker processes, which must be in place before the process loads
DataFusion and Arrow.

Both allocate through mimalloc, which by default hands freed memory back to the operating
system 10 ms after it is freed. A worker runs many short tasks back to back, each allocating
and freeing its batches, hash tables and buffers, so every task faulted its memory in again and
the kernel zeroed every page: at TPC-H SF 1 that was about a fifth of the workers' CPU (perf),
with twice the page faults of the same queries with the memory kept. Workers keep freed memory
for reuse instead (``MIMALLOC_PURGE_DELAY=-1``), as database servers keep their heaps; a value
already in the environment wins.

mimalloc reads its options when the libraries load. ``LocalCluster`` starts its workers with
them; the ``otel-dist worker`` command, started any other way (a container, a unit file),
executes itself once more with them when they are missing.
"""

from __future__ import annotations

from collections.abc import Mapping

WORKER_ALLOCATOR_ENV: Mapping[str, str] = {"MIMALLOC_PURGE_DELAY": "-1"}


def worker_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the worker allocator settings it does not set itself."""
    return {**WORKER_ALLOCATOR_ENV, **env}


def lacks_allocator_settings(env: Mapping[str, str]) -> bool:
    return any(name not in env for name in WORKER_ALLOCATOR_ENV)
