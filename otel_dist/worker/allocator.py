"""Allocator settings of worker processes, which must be in place before the process loads
DataFusion and Arrow.

Both allocate through mimalloc, whose ``MIMALLOC_PURGE_DELAY`` decides when freed memory goes
back to the operating system. Two kinds of worker want different answers:

* A worker server (``otel-dist worker``: a container, a unit file, a host of its own) lives
  for weeks beside other processes and under memory limits, so it hands freed memory back at
  once (``0``): after a burst of queries its resident size returns to its idle size within
  seconds. mimalloc's own default (10 ms) purges lazily, on the thread's next allocations, so
  an idle worker would keep its peak for good.
* The workers of a local cluster (``otel-dist local``, ``demo``, ``bench``, ``LocalCluster``)
  live as long as the command that started them and end with it, so they keep freed memory for
  the next task (``-1``), as database servers keep their heaps: every short task otherwise
  faults its memory in again and the kernel zeroes every page. At TPC-H SF 1 the 22 queries
  take about 1.5x as long with ``0`` (README, "Workers").

A value already in the environment wins. mimalloc reads its options when the libraries load,
so ``otel-dist worker`` executes itself once more with its settings when they are missing.
"""

from __future__ import annotations

from collections.abc import Mapping

SERVER_ALLOCATOR_ENV: Mapping[str, str] = {"MIMALLOC_PURGE_DELAY": "0"}
LOCAL_CLUSTER_ALLOCATOR_ENV: Mapping[str, str] = {"MIMALLOC_PURGE_DELAY": "-1"}


def with_allocator_settings(env: Mapping[str, str], settings: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the allocator ``settings`` it does not set itself."""
    return {**settings, **env}


def lacks_allocator_settings(env: Mapping[str, str]) -> bool:
    return any(name not in env for name in SERVER_ALLOCATOR_ENV)
