"""Which physical plan a task runs when DataFusion may have misjudged a join's size.

A task's stage inputs are exchanged batches: their row counts and sizes are known, their
column statistics (min/max, distinct counts, what parquet gives single-node DataFusion) are
not. DataFusion's default estimate then takes a join key without them for unique, so a join of
two inputs on a non-unique key looks no larger than its smaller side and may be chosen as the
side a hash join builds its table from. At TPC-DS SF 1, Q72's join stage built the join of
catalog_sales, inventory and item (estimated at 18,000 rows, hundreds of millions in fact)
where single-node DataFusion builds customer_demographics, and failed after two minutes with
Arrow's string offsets overflowed.

DataFusion's statistics registry (``use_statistics_registry``) estimates a join on a key
without statistics as the product of its sides instead: such a join is never built, but
neither is the row-id join that puts views of one input back together (one row for one row),
which the default estimate gets right. So a task is planned with the default estimate; only
when that plan builds a hash table from the output of another join (row-id joins aside) is it
planned again with the registry, and the plan that builds from fewer joins runs.
"""

from __future__ import annotations

from collections.abc import Callable

from datafusion import SessionContext

from otel_dist.protocol import ROW_ID_COLUMN

REGISTRY_SETTING = "datafusion.optimizer.use_statistics_registry"
# Operators that collect their first input whole (the build side) before reading the other.
_BUILDING = ("HashJoinExec", "NestedLoopJoinExec", "CrossJoinExec")
_JOINS = (*_BUILDING, "SortMergeJoinExec", "SymmetricHashJoinExec")


def _name(node: object) -> str:
    return node.display().strip().split(":", 1)[0]  # type: ignore[attr-defined]


def _is_row_id_join(node: object) -> bool:
    line = node.display().strip()  # type: ignore[attr-defined]
    return f"({ROW_ID_COLUMN}@" in line.partition("on=[")[2].partition("]")[0]


def _holds_a_join(node: object) -> bool:
    """Whether the subtree has a join whose size is an estimate (any but a row-id join)."""
    if _name(node) in _JOINS and not _is_row_id_join(node):
        return True
    return any(_holds_a_join(child) for child in node.children())  # type: ignore[attr-defined]


def joined_builds(plan: object) -> int:
    """How many joins of the physical plan build their table from another join's output
    (row-id joins not counted, as builders or as built)."""
    children = plan.children()  # type: ignore[attr-defined]
    own = int(
        _name(plan) in _BUILDING
        and not _is_row_id_join(plan)
        and bool(children)
        and _holds_a_join(children[0])
    )
    return own + sum(joined_builds(child) for child in children)


def set_registry(ctx: SessionContext, enabled: bool) -> None:
    """Turn DataFusion's statistics registry on or off for the session's next plans."""
    ctx.sql(f"SET {REGISTRY_SETTING} = {'true' if enabled else 'false'}").collect()


def choose_plan(ctx: SessionContext, make_plan: Callable[[], object]) -> object:
    """``make_plan()`` with DataFusion's default estimates, or, when that plan builds a hash
    table from another join's output, planned with the statistics registry if that builds
    from fewer joins."""
    plan = make_plan()
    builds = joined_builds(plan)
    if builds == 0:
        return plan
    set_registry(ctx, True)
    try:
        alternative = make_plan()
    finally:
        set_registry(ctx, False)
    return alternative if joined_builds(alternative) < builds else plan
