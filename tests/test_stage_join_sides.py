"""Which side of a join a worker builds when its inputs are exchanged stage inputs (in memory,
without parquet's column statistics): not a join of two inputs on a non-unique key, whose
size DataFusion's default estimate takes for that of its smaller side (TPC-DS Q72 at SF 1
built hundreds of millions of rows of such a join and overflowed Arrow's string offsets)."""

from __future__ import annotations

import pyarrow as pa
from datafusion import SessionContext

from otel_dist.session import new_session
from otel_dist.worker.inputs import register_in_memory

ROWS = 100_000  # each side of the many-to-many join: under DataFusion's 131,072-row
DIMENSION_ROWS = 150_000  # collect threshold, and the table joined to it above it
KEYS = 100  # distinct join keys: the join has ROWS * ROWS / KEYS rows


def _register(ctx: SessionContext) -> None:
    ids = pa.array(range(ROWS), pa.int64())
    keys = pa.array([i % KEYS for i in range(ROWS)], pa.int64())
    tables = {
        "a": pa.record_batch({"a_key": keys, "a_id": ids}),
        "b": pa.record_batch({"b_key": keys, "b_ref": ids}),
        "c": pa.record_batch({"c_id": pa.array(range(DIMENSION_ROWS), pa.int64())}),
    }
    for name, batch in tables.items():
        register_in_memory(
            ctx, name, pa.Table.from_batches([batch]).to_batches(8192), batch.schema, 2
        )


def _build_side_of(node: object, key: str) -> object | None:
    """The build (first) input of the hash join whose keys name ``key``."""
    line = node.display().strip()  # type: ignore[attr-defined]
    children = node.children()  # type: ignore[attr-defined]
    if line.startswith("HashJoinExec") and key in line.split("on=", 1)[1].split("]", 1)[0]:
        return children[0]
    for child in children:
        found = _build_side_of(child, key)
        if found is not None:
            return found
    return None


def _joins_in(node: object) -> int:
    own = 1 if node.display().strip().startswith("HashJoinExec") else 0  # type: ignore[attr-defined]
    return own + sum(_joins_in(child) for child in node.children())  # type: ignore[attr-defined]


def test_a_worker_builds_the_table_not_the_many_to_many_join_of_its_inputs() -> None:
    ctx = new_session(2, stage_inputs=True)
    _register(ctx)
    plan = ctx.sql(
        "SELECT count(*) FROM a JOIN b ON a_key = b_key JOIN c ON b_ref = c_id"
    ).execution_plan()
    build = _build_side_of(plan, "c_id")
    assert build is not None, plan.display_indent()
    assert _joins_in(build) == 0, plan.display_indent()
