"""The correctness oracle: single-node DataFusion on the same files, and result comparison."""

from __future__ import annotations

import decimal
import math
import re
from pathlib import Path

import pyarrow as pa

from otel_dist.planner.catalog import Catalog

REL_TOLERANCE = 1e-9


def single_node(data: Path, sql: str) -> pa.Table:
    return Catalog.from_folder(data).session().sql(sql).to_arrow_table()


def has_order_by(sql: str) -> bool:
    body = re.sub(r"--[^\n]*", "", sql)
    return re.search(r"\border\s+by\b", body.split(")")[-1], re.IGNORECASE) is not None


def _normal(value: object) -> object:
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def _rows(table: pa.Table) -> list[tuple[object, ...]]:
    return [tuple(_normal(v) for v in row.values()) for row in table.to_pylist()]


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=REL_TOLERANCE, abs_tol=1e-12)
    return a == b


def _sort_key(row: tuple[object, ...]) -> tuple[object, ...]:
    return tuple((v is None, round(v, 6) if isinstance(v, float) else v) for v in row)


def assert_same_rows(actual: pa.Table, expected: pa.Table, ordered: bool) -> None:
    """Rows equal, in order when ``ordered``; floats and decimals to 1e-9 relative."""
    assert actual.column_names == expected.column_names, (
        f"columns differ: {actual.column_names} != {expected.column_names}"
    )
    assert actual.num_rows == expected.num_rows, (
        f"row count {actual.num_rows} != expected {expected.num_rows}"
    )
    got, want = _rows(actual), _rows(expected)
    if not ordered:
        got, want = sorted(got, key=_sort_key), sorted(want, key=_sort_key)
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        assert len(g) == len(w) and all(_same(x, y) for x, y in zip(g, w, strict=True)), (
            f"row {index} differs: {g} != {w}"
        )
