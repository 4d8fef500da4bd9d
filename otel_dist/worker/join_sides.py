"""Which physical plan a task runs when DataFusion may have misjudged a join's size.

A task's stage inputs are exchanged batches: their row counts and sizes are known, their
column statistics (min/max, distinct counts, what parquet gives single-node DataFusion) are
not. DataFusion's default estimate then takes a join key without them for unique, so a join
whose keys repeat on both sides (many rows to many) looks no larger than its inputs, and a
join above it may build its hash table from that output. At TPC-DS SF 1, Q72's join stage
built the join of catalog_sales, inventory (both repeating the item key) and item,
estimated at 18,000 rows and tens of millions in fact, where single-node DataFusion builds
customer_demographics; it failed after two minutes with Arrow's string offsets overflowed.

DataFusion's statistics registry (``use_statistics_registry``) estimates a join on a key
without statistics as the product of its sides, so such a join is never built; but it does
so for every join of exchanged inputs, the many-to-one ones and the row-id joins of views of
one input (one row for one row) too, and then builds large inputs the default estimate rightly
left on the probe side (TPC-DS Q64 ran out of its task's memory). So a task is planned with the
default estimate, and planned again with the registry only when that plan builds a hash table
from the output of a join whose keys are known to repeat on both sides (``KeyFacts``: counted
in the task's in-memory inputs, bounded from parquet metadata for its files); the plan that
builds from fewer joins runs. Only inner and outer joins count: a semi, anti or mark join keeps
at most one side's rows (TPC-H Q21 at SF 10, re-planned for its ``EXISTS`` on ``l_orderkey``,
built two 20-million-row inputs and ran out of its task's memory).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from datafusion import SessionContext

from otel_dist.protocol import ROW_ID_COLUMN

REGISTRY_SETTING = "datafusion.optimizer.use_statistics_registry"
# Operators that collect their first input whole (the build side) before reading the other.
_BUILDING = ("HashJoinExec", "NestedLoopJoinExec", "CrossJoinExec")
_JOINS = (*_BUILDING, "SortMergeJoinExec", "SymmetricHashJoinExec")
_JOIN_TYPE = re.compile(r"join_type=(\w+)")
_ROW_BOUNDED_JOIN_TYPES = ("Semi", "Anti", "Mark")
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)@\d+")


@dataclass
class KeyFacts:
    """What a task knows of whether its tables repeat a combination of key values: counted in
    its in-memory inputs (``held``: table to batches), bounded for its parquet tables
    (``files``: table to files) by the rows against the range of integer keys."""

    held: dict[str, list[pa.RecordBatch]] = field(default_factory=dict)
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _known: dict[tuple[str, ...], bool] = field(default_factory=dict)

    def repeats(self, columns: tuple[str, ...]) -> bool:
        """Whether a table holding all ``columns`` is known to repeat a combination of their
        values (False when unknown: no table holds them, or not from what is at hand)."""
        if not columns:
            return False
        key = (*sorted(self.held), "|", *columns)  # inputs held later count too
        if key not in self._known:
            self._known[key] = any(
                self._held_repeats(batches, columns)
                for batches in self.held.values()
                if batches and all(c in batches[0].schema.names for c in columns)
            ) or any(self._file_repeats(paths, columns) for paths in self.files.values())
        return self._known[key]

    @staticmethod
    def _held_repeats(batches: list[pa.RecordBatch], columns: tuple[str, ...]) -> bool:
        # Polars, not pyarrow's group_by: that runs on Acero, which warns on every batch
        # received over Flight whose buffers are not aligned to their type's width.
        frame = pl.from_arrow(pa.Table.from_batches(batches).select(list(columns)))
        assert isinstance(frame, pl.DataFrame)
        return frame.n_unique() < frame.height

    @staticmethod
    def _file_repeats(paths: tuple[str, ...], columns: tuple[str, ...]) -> bool:
        """More rows than the integer keys' ranges hold: some combination repeats."""
        if not paths:
            return False
        rows, lows, highs = 0, dict.fromkeys(columns, math.inf), dict.fromkeys(columns, -math.inf)
        for path in paths:
            meta = pq.read_metadata(path)
            names = meta.schema.to_arrow_schema().names
            if not all(c in names for c in columns):
                return False
            rows += meta.num_rows
            for group in range(meta.num_row_groups):
                row_group = meta.row_group(group)
                for column in columns:
                    stats = row_group.column(names.index(column)).statistics
                    if stats is None or not stats.has_min_max:
                        return False
                    if not isinstance(stats.min, int) or not isinstance(stats.max, int):
                        return False
                    lows[column] = min(lows[column], stats.min)
                    highs[column] = max(highs[column], stats.max)
        if rows == 0:
            return False
        combinations = math.prod(int(highs[c] - lows[c]) + 1 for c in columns)
        return rows > combinations


def _name(node: object) -> str:
    return node.display().strip().split(":", 1)[0]  # type: ignore[attr-defined]


def _keys(node: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The join's left and right key columns (empty when not each a single column)."""
    line = node.display().strip()  # type: ignore[attr-defined]
    names = _KEY.findall(line.partition("on=[")[2].partition("]")[0])
    if not names or len(names) % 2:
        return (), ()
    return tuple(names[0::2]), tuple(names[1::2])


def _is_row_id_join(node: object) -> bool:
    return ROW_ID_COLUMN in _keys(node)[0]


def _holds_a_join(node: object) -> bool:
    """Whether the subtree has a join whose size is an estimate (any but a row-id join)."""
    if _name(node) in _JOINS and not _is_row_id_join(node):
        return True
    return any(_holds_a_join(child) for child in node.children())  # type: ignore[attr-defined]


def _multiplies_rows(node: object) -> bool:
    """Whether a join's output may outgrow its inputs: not a semi, anti or mark join, which
    gives at most one row for each row of one side, whatever its keys repeat."""
    match = _JOIN_TYPE.search(node.display())  # type: ignore[attr-defined]
    return match is None or not match.group(1).endswith(_ROW_BOUNDED_JOIN_TYPES)


def _holds_many_to_many(node: object, facts: KeyFacts) -> bool:
    if _name(node) in _JOINS and _multiplies_rows(node):
        left, right = _keys(node)
        if facts.repeats(left) and facts.repeats(right):
            return True
    return any(_holds_many_to_many(child, facts) for child in node.children())  # type: ignore[attr-defined]


def _builds(plan: object) -> list[object]:
    """The build (first) inputs of the plan's joins that collect one, row-id joins aside."""
    children = plan.children()  # type: ignore[attr-defined]
    own = (
        [children[0]] if _name(plan) in _BUILDING and children and not _is_row_id_join(plan) else []
    )
    return own + [build for child in children for build in _builds(child)]


def joined_builds(plan: object) -> int:
    """How many joins of the physical plan build their table from another join's output
    (row-id joins not counted, as builders or as built)."""
    return sum(_holds_a_join(build) for build in _builds(plan))


def builds_many_to_many(plan: object, facts: KeyFacts) -> bool:
    """Whether some join builds its table from a subtree holding a join whose keys repeat on
    both sides (whose size DataFusion's default estimate understates)."""
    return any(_holds_many_to_many(build, facts) for build in _builds(plan))


def set_registry(ctx: SessionContext, enabled: bool) -> None:
    """Turn DataFusion's statistics registry on or off for the session's next plans."""
    ctx.sql(f"SET {REGISTRY_SETTING} = {'true' if enabled else 'false'}").collect()


def choose_plan(ctx: SessionContext, make_plan: Callable[[], object], facts: KeyFacts) -> object:
    """``make_plan()`` with DataFusion's default estimates, or, when that plan builds a hash
    table from a many-to-many join's output, planned with the statistics registry if that
    builds from fewer joins. ``make_plan`` must build a new DataFrame each time (a DataFrame
    keeps the settings of when it was made)."""
    plan = make_plan()
    if not builds_many_to_many(plan, facts):
        return plan
    set_registry(ctx, True)
    try:
        alternative = make_plan()
    finally:
        set_registry(ctx, False)
    return alternative if joined_builds(alternative) < joined_builds(plan) else plan
