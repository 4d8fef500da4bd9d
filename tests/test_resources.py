"""Resources with real processes: fast failure reporting, spilling (short writes, a full or
read-only spill device, stale spill folders), bounded threads, admission control, bounded
execution memory, the coordinator-wide result cap and memory handed back after a query."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from otel_dist.coordinator.core import QueryError
from otel_dist.coordinator.local import LocalCluster
from tests.support import wait_until, worker_health

CROSS_JOIN = "select count(*), sum(a.l_quantity * b.l_discount) from lineitem a join lineitem b on a.l_linenumber = b.l_linenumber"


# ---- 1. a killed worker is reported at once; the explain tree is completed afterwards -------

# One task per stage: a scan (on the first worker), a scan joined with it whose output
# explodes into an aggregate (on the second: it computes for many seconds without yielding,
# so its telemetry comes late), and the final aggregate (on the third).
EXPLODING_JOIN = (
    "select count(*), sum(a.l_quantity * b.l_discount) "
    "from lineitem a join lineitem b on a.l_linenumber = b.l_linenumber"
)


def test_a_killed_worker_is_reported_within_a_second_of_the_coordinator_noticing(
    tpch_dir: Path,
) -> None:
    with LocalCluster(workers=3, data=tpch_dir, tasks_per_stage=1) as cluster:
        urls = list(cluster.worker_urls)
        kinds = [stage.kind for stage in cluster.plan(EXPLODING_JOIN).stages]
        assert kinds[0] == "scan" and "join" in kinds[1], kinds
        victim = urls[0]  # ran the first scan only, long finished when it dies
        noticed: list[float] = []
        cluster.coordinator.worker_health.add_listener(
            lambda url, _reason: noticed.append(time.monotonic()) if url == victim else None
        )
        outcome: list[object] = []
        failed_at: list[float] = []

        def run() -> None:
            try:
                outcome.append(cluster.explain_analyze(EXPLODING_JOIN))
            except BaseException as error:
                failed_at.append(time.monotonic())
                outcome.append(error)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        wait_until(
            lambda: worker_health(urls[1])["running_tasks"] and worker_health(victim)["tasks"],
            20,
            "the join to run",
        )
        wait_until(
            lambda: not worker_health(victim)["running_tasks"], 20, "the first scan to finish"
        )
        time.sleep(0.3)
        cluster.processes[0].kill()
        thread.join(60)
        assert not thread.is_alive(), "the query never ended"
        error = outcome[0]
        assert isinstance(error, QueryError), error
        assert noticed, "the coordinator never noticed the dead worker"
        delay = failed_at[0] - noticed[0]
        assert delay < 1.0, f"the error reached the client {delay:.2f}s after the coordinator noticed"
        assert victim in str(error)
        # The partial tree is completed in the background and is there when asked for.
        text = error.analysis.text()  # type: ignore[attr-defined]
        assert "Error:" in text and victim in text, text
