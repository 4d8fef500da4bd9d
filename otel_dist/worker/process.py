"""Running a worker as a process: start the server, announce its URL, stop cleanly."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading

from otel_dist.worker.announce import Announcer, advertised_url
from otel_dist.worker.server import WorkerConfig, WorkerServer

log = logging.getLogger(__name__)

# A worker's threads hand data to each other (Flight streams, partition drains, bucket readers)
# and, with telemetry on, to a few short telemetry threads. A thread that wakes up waits for
# the GIL up to the switch interval (Python's default 5 ms) while another thread computes:
# 1 ms took 4-5% off traced queries at TPC-H SF 1 and changed nothing without telemetry.
SWITCH_INTERVAL_S = 0.001
# Python's cyclic garbage collector runs after every 700 net allocations of container objects
# and pauses every thread while it walks them. A task's telemetry allocates thousands (spans,
# attribute dicts), so collections fell in the middle of other tasks' data; with the objects
# of start-up frozen out of them and these thresholds, traced/untraced went from 5.2% to 2.0%
# (A/B over 6 rounds of the 22 TPC-H queries at SF 1). Cycles are rare in the data path.
GC_THRESHOLDS = (20_000, 20, 20)

READY_PREFIX = "otel-dist worker listening on "
METRICS_PREFIX = "otel-dist worker metrics on "


def run_worker(
    config: WorkerConfig,
    parent_pid: int | None = None,
    coordinator: str | None = None,
    advertise: str | None = None,
    heartbeat_s: float = 2.0,
) -> None:
    """Serve until SIGTERM/SIGINT, or until the parent process (if given) goes away; with
    ``coordinator``, announce this worker to it (at ``advertise``, default: its own URL)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if config.allow_any_path:
        log.warning("--allow-any-path: tasks may read any file this process can read")
    elif not config.data_roots:
        log.warning(
            "no --data-root given: tasks read files only under the data folder their "
            "coordinator declares, and only a coordinator holding the internal secret or, "
            "without authentication, one on this host may declare it"
        )
    server = WorkerServer(config)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    stop = threading.Event()
    announcer: Announcer | None = None

    def shutdown(*_: object) -> None:
        if not stop.is_set():
            stop.set()

            def stop_serving() -> None:
                if announcer is not None:  # first: no new tasks come while it drains
                    announcer.stop()
                server.begin_shutdown()
                server.shutdown()

            threading.Thread(target=stop_serving, daemon=True).start()

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
    if coordinator is not None:
        url = advertise or advertised_url(server.url)
        announcer = Announcer(coordinator, url, config.security, heartbeat_s).start()
    try:
        server.serve()
    finally:
        server.close_all()
