"""Threads whose native stack is deep enough for DataFusion to plan and run deep expressions.

DataFusion plans and runs on the calling thread (Python's threads: 8 MiB by default, less on
some platforms, and gRPC's server threads) and on its tokio runtime's threads (2 MiB, Rust's
default). Its passes recurse over expression trees, about 1-3 KiB of stack per level, so an
expression a few thousand levels deep overflowed them: a segfault of the whole process, not an
error. ``sql_limits`` bounds the depth of what is planned; these stacks leave that bound a
wide margin (64 MiB holds some 20,000 levels). The memory is reserved address space, not used
memory: a thread only touches the pages its recursion reaches.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

_R = TypeVar("_R")

DEEP_STACK_BYTES = 64 << 20
RUST_MIN_STACK_ENV = "RUST_MIN_STACK"
DEEP_POOL_THREADS = 32

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def deep_native_stacks() -> None:
    """Give the threads Rust starts from now on (DataFusion's tokio runtime, created when a
    process first uses DataFusion) a deep stack, unless ``RUST_MIN_STACK`` is set already.
    Call before the first DataFusion session of the process: Rust reads it once."""
    os.environ.setdefault(RUST_MIN_STACK_ENV, str(DEEP_STACK_BYTES))


def start_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """Start a daemon thread with a deep stack."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    with _lock:  # the stack size is process-wide state: set it only around this start
        previous = threading.stack_size(DEEP_STACK_BYTES)
        try:
            thread.start()
        finally:
            threading.stack_size(previous)
    return thread


def call_with_deep_stack(function: Callable[..., _R], *args: Any) -> _R:
    """``function(*args)`` on a pooled thread with a deep stack, waiting for it; its exception
    is raised here. The pool's threads are reused (a thread start costs 0.1-5 ms, the latter
    while other threads hold the GIL) and bounded: calls beyond ``DEEP_POOL_THREADS`` wait."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(DEEP_POOL_THREADS, thread_name_prefix="otel-dist-deep")
        previous = threading.stack_size(DEEP_STACK_BYTES)  # for a thread this submit starts
        try:
            future = _pool.submit(function, *args)
        finally:
            threading.stack_size(previous)
    return future.result()
