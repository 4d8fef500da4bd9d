"""Running a worker as a process: start the server, announce its URL, stop cleanly."""

from __future__ import annotations

import os
import signal
import sys
import threading

from otel_dist.worker.server import WorkerConfig, WorkerServer

READY_PREFIX = "otel-dist worker listening on "
METRICS_PREFIX = "otel-dist worker metrics on "


def run_worker(config: WorkerConfig, parent_pid: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT, or until the parent process (if given) goes away."""
    server = WorkerServer(config)
    stop = threading.Event()

    def shutdown(*_: object) -> None:
        if not stop.is_set():
            stop.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    if parent_pid is not None:

        def watch_parent() -> None:
            while not stop.wait(0.5):
                if os.getppid() != parent_pid:
                    shutdown()

        threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    if server.metrics.prometheus_url:  # announced before the ready line
        print(f"{METRICS_PREFIX}{server.metrics.prometheus_url}", flush=True)
    print(f"{READY_PREFIX}{server.url}", flush=True)
    sys.stdout.flush()
    try:
        server.serve()
    finally:
        server.close_all()
