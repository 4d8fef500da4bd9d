"""A Substrait plan's joins of one table with itself on its row number are fused into one
read (``otel_dist/planner/row_joins.py``); every other join stays, and the rows are the same."""

from __future__ import annotations

import json

import pyarrow as pa
from datafusion import DataFrame, SessionContext, col
from datafusion.substrait import Consumer, Plan, Producer, Serde

from otel_dist.planner.row_joins import fuse_row_joins
from otel_dist.protocol import ROW_ID_COLUMN

ROWS = 1000


def _context() -> SessionContext:
    ctx = SessionContext()
    numbers = list(range(ROWS))
    ctx.register_record_batches(
        "t",
        [
            [
                pa.record_batch(
                    {
                        "a": numbers,
                        "b": [n % 7 for n in numbers],
                        "c": [f"c{n}" for n in numbers],
                        ROW_ID_COLUMN: numbers,
                    }
                )
            ]
        ],
    )
    ctx.register_record_batches(
        "u", [[pa.record_batch({"d": numbers[::-1], ROW_ID_COLUMN: numbers})]]
    )
    return ctx


def _view(ctx: SessionContext, table: str, columns: list[str], alias: str) -> DataFrame:
    return ctx.table(table).select(*[col(c) for c in [*columns, ROW_ID_COLUMN]]).alias(alias)


def _row_join(left: DataFrame, right: DataFrame, lq: str, rq: str) -> DataFrame:
    return left.join_on(
        right, col(f'"{lq}"."{ROW_ID_COLUMN}"') == col(f'"{rq}"."{ROW_ID_COLUMN}"'), how="inner"
    )


def _joins(plan: Plan) -> int:
    return json.dumps(json.loads(plan.to_json())).count('"join":')


def _rows(ctx: SessionContext, plan: Plan) -> list[tuple[object, ...]]:
    logical = Consumer.from_substrait_plan(ctx, Serde.deserialize_bytes(plan.encode()))
    table = ctx.create_dataframe_from_logical_plan(logical).to_arrow_table()
    return sorted(zip(*(column.to_pylist() for column in table.columns), strict=True))


def test_three_views_of_one_table_joined_on_the_row_number_become_one_read() -> None:
    ctx = _context()
    frame = _row_join(
        _row_join(_view(ctx, "t", ["a"], "x"), _view(ctx, "t", ["b"], "y"), "x", "y"),
        _view(ctx, "t", ["c"], "z"),
        "x",
        "z",
    ).filter(col('"y"."b"') == 3)
    frame = frame.select(col('"z"."c"'), col('"x"."a"'), col('"y"."b"'))
    plan = Producer.to_substrait_plan(frame.logical_plan(), ctx)
    fused = fuse_row_joins(plan)
    assert _joins(plan) == 2
    assert fused is not None and _joins(fused) == 0
    expected = _rows(ctx, plan)
    assert len(expected) == len([n for n in range(ROWS) if n % 7 == 3])
    assert _rows(ctx, fused) == expected


def test_joins_of_other_tables_or_other_keys_stay() -> None:
    ctx = _context()
    # Two tables on their row numbers: not a view of one input.
    two_tables = _row_join(_view(ctx, "t", ["a"], "x"), _view(ctx, "u", ["d"], "y"), "x", "y")
    # One table with itself on another column: not the identity.
    other_key = (
        ctx.table("t")
        .select(col("a"), col("b"))
        .alias("x")
        .join_on(
            ctx.table("t").select(col("a"), col("c")).alias("y"),
            col('"x"."b"') == col('"y"."a"'),
            how="inner",
        )
    )
    # A left join on the row number: the rewrite only takes inner joins.
    left_join = _view(ctx, "t", ["a"], "x").join_on(
        _view(ctx, "t", ["b"], "y").filter(col("b") > 2),
        col(f'"x"."{ROW_ID_COLUMN}"') == col(f'"y"."{ROW_ID_COLUMN}"'),
        how="left",
    )
    for frame in (two_tables, other_key, left_join):
        plan = Producer.to_substrait_plan(frame.logical_plan(), ctx)
        assert fuse_row_joins(plan) is None
