"""The stall watch (``otel_dist/worker/stalls.py``) on a real DataFusion plan: its progress
moves while batches flow and stops while the plan waits, and the watch says so only after
its window."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pyarrow as pa

from otel_dist.session import new_session
from otel_dist.worker.inputs import StreamDataset, WaitCounter, _Shared
from otel_dist.worker.stalls import StallWatch, plan_progress


def test_a_plan_that_stops_moving_is_seen_as_stalled_after_the_window() -> None:
    schema = pa.schema([("x", pa.int64())])
    gate = threading.Event()

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, 50_000, 5_000):
            yield pa.RecordBatch.from_pydict({"x": list(range(start, start + 5_000))}, schema)
        gate.wait(30)  # the plan has nothing to do until the gate opens
        yield pa.RecordBatch.from_pydict({"x": [1]}, schema)

    ctx = new_session(1)  # one partition: the plan is one pipeline, parked in its scan
    shared = _Shared("t", [], batches(), WaitCounter("wait_stage_1"))
    ctx.register_dataset("t", StreamDataset(shared, schema, 1))
    plan = ctx.sql("select x % 7 as k, count(*) as n from t group by 1").execution_plan()
    assert plan_progress(plan) == 0
    result: list[int] = []

    def run() -> None:
        for batch in ctx.execute(plan, 0):
            result.append(batch.to_pyarrow().num_rows)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    watch = StallWatch(plan, window_s=1.0)
    deadline = time.monotonic() + 20
    while plan_progress(plan) == 0:  # the first batches go through
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not watch.stalled()
    time.sleep(0.5)
    moved = plan_progress(plan)
    assert not watch.stalled(), "not before the window"
    time.sleep(1.2)
    assert plan_progress(plan) == moved and watch.stalled()
    gate.set()
    runner.join(20)
    assert result == [7] and plan_progress(plan) > moved
    assert not watch.stalled()
