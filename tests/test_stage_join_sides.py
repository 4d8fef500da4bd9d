"""Which side of a join a task builds when its inputs are exchanged stage inputs (in memory,
without parquet's column statistics), ``otel_dist/worker/join_sides.py``: not the output of a
join whose keys repeat on both sides, which DataFusion's default estimate takes for no larger
than its inputs (TPC-DS Q72 at SF 1 built tens of millions of rows of such a join and
overflowed Arrow's string offsets); still a many-to-one join or the row-id join of two views of
one input rather than the larger table joined to it (what the statistics registry alone would
build; TPC-DS Q64 at SF 1 then ran out of memory). Each test fails with the other estimate
used throughout; plans only, nothing runs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datafusion import SessionContext

from otel_dist.protocol import ROW_ID_COLUMN
from otel_dist.session import new_session
from otel_dist.worker.inputs import register_in_memory
from otel_dist.worker.join_sides import (
    KeyFacts,
    builds_many_to_many,
    choose_plan,
    joined_builds,
)

# Both under DataFusion's 131,072-row threshold for building a table in one partition, the
# table joined to their join above it.
SMALL_ROWS = 100_000
LARGE_ROWS = 150_000
KEYS = 100  # distinct keys of the many-to-many join: SMALL_ROWS**2 / KEYS rows


def _register(ctx: SessionContext, tables: dict[str, dict[str, pa.Array]]) -> KeyFacts:
    held = {}
    for name, columns in tables.items():
        batch = pa.record_batch(columns)
        batches = pa.Table.from_batches([batch]).to_batches(8192)
        register_in_memory(ctx, name, batches, batch.schema, 2)
        held[name] = batches
    return KeyFacts(held)


def _ints(values: range | list[int]) -> pa.Array:
    return pa.array(values, pa.int64())


def _build_side_of(node: object, key: str) -> object | None:
    """The build (first) input of the hash join whose keys name ``key``."""
    line = node.display().strip()  # type: ignore[attr-defined]
    children = node.children()  # type: ignore[attr-defined]
    if line.startswith("HashJoinExec") and key in line.partition("on=[")[2].partition("]")[0]:
        return children[0]
    for child in children:
        found = _build_side_of(child, key)
        if found is not None:
            return found
    return None


def _holds_a_join(node: object) -> bool:
    return "JoinExec" in node.display() or any(  # type: ignore[attr-defined]
        _holds_a_join(child)
        for child in node.children()  # type: ignore[attr-defined]
    )


def test_a_task_builds_the_table_not_the_many_to_many_join_of_its_inputs() -> None:
    ctx = new_session(2)
    keys = _ints([i % KEYS for i in range(SMALL_ROWS)])
    facts = _register(
        ctx,
        {
            "a": {"a_key": keys, "a_id": _ints(range(SMALL_ROWS))},
            "b": {"b_key": keys, "b_ref": _ints(range(SMALL_ROWS))},
            "c": {"c_id": _ints(range(LARGE_ROWS))},
        },
    )
    sql = "SELECT count(*) FROM a JOIN b ON a_key = b_key JOIN c ON b_ref = c_id"
    plan = choose_plan(ctx, lambda: ctx.sql(sql).execution_plan(), facts)
    build = _build_side_of(plan, "c_id")
    assert build is not None and not _holds_a_join(build), plan.display_indent()
    assert joined_builds(plan) == 0


def test_repeating_parquet_keys_count_as_many(tmp_path: Path) -> None:
    folder = tmp_path / "inv"
    folder.mkdir()
    pq.write_table(
        pa.table({"inv_key": _ints([i % KEYS for i in range(1000)])}), folder / "1.parquet"
    )
    pq.write_table(pa.table({"u_key": _ints(range(1000))}), tmp_path / "u.parquet")
    facts = KeyFacts(
        files={"inv": (str(folder / "1.parquet"),), "u": (str(tmp_path / "u.parquet"),)}
    )
    assert facts.repeats(("inv_key",))
    assert not facts.repeats(("u_key",))
    assert not facts.repeats(("missing",))


def test_a_task_still_builds_a_many_to_one_join_of_its_inputs() -> None:
    ctx = new_session(2)
    facts = _register(
        ctx,
        {
            "f": {
                "f_d": _ints([i % KEYS for i in range(SMALL_ROWS)]),
                "f_c": _ints(range(SMALL_ROWS)),
            },
            "d": {"d_id": _ints(range(SMALL_ROWS))},
            "c": {"c_id": _ints(range(LARGE_ROWS))},
        },
    )
    sql = "SELECT count(*) FROM f JOIN d ON f_d = d_id JOIN c ON f_c = c_id"
    plan = choose_plan(ctx, lambda: ctx.sql(sql).execution_plan(), facts)
    build = _build_side_of(plan, "c_id")
    assert build is not None and _holds_a_join(build), plan.display_indent()


def test_a_task_still_builds_the_row_id_join_of_two_views_of_one_input() -> None:
    ctx = new_session(2)
    facts = _register(
        ctx,
        {
            "v1": {ROW_ID_COLUMN: _ints(range(SMALL_ROWS)), "o_key": _ints(range(SMALL_ROWS))},
            "v2": {ROW_ID_COLUMN: _ints(range(SMALL_ROWS)), "o_cust": _ints(range(SMALL_ROWS))},
            "big": {"l_key": _ints([i % SMALL_ROWS for i in range(4 * LARGE_ROWS)])},
        },
    )
    sql = (
        f"SELECT count(*) FROM v1 JOIN v2 ON v1.{ROW_ID_COLUMN} = v2.{ROW_ID_COLUMN} "
        "JOIN big ON o_key = l_key"
    )
    plan = choose_plan(ctx, lambda: ctx.sql(sql).execution_plan(), facts)
    build = _build_side_of(plan, "l_key")
    assert build is not None and _holds_a_join(build), plan.display_indent()


def test_a_task_still_builds_a_semi_join_whose_keys_repeat_on_both_sides() -> None:
    """An EXISTS keeps at most the rows of its outer side, however its keys repeat: its
    output is built as the default estimate says (TPC-H Q21 at SF 10, planned with the
    registry instead, built two 20-million-row inputs and ran out of its task's memory)."""
    ctx = new_session(2)
    keys = _ints([i % KEYS for i in range(SMALL_ROWS)])
    facts = _register(
        ctx,
        {
            "f": {"f_key": keys, "f_c": _ints(range(SMALL_ROWS))},
            "s": {"s_key": keys},
            "c": {"c_id": _ints(range(LARGE_ROWS))},
        },
    )
    sql = (
        "SELECT count(*) FROM (SELECT * FROM f WHERE EXISTS "
        "(SELECT 1 FROM s WHERE s_key = f_key)) AS kept JOIN c ON f_c = c_id"
    )
    default = ctx.sql(sql).execution_plan()
    build = _build_side_of(default, "c_id")
    assert build is not None and "join_type=RightSemi" in build.display_indent()
    assert not builds_many_to_many(default, facts), default.display_indent()
    plan = choose_plan(ctx, lambda: ctx.sql(sql).execution_plan(), facts)
    assert plan.display_indent() == default.display_indent()
