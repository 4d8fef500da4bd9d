"""Cut DataFusion's optimized logical plan into stages and tasks.

DataFusion parses, resolves, decorrelates and optimises the SQL; this module decides
distribution. It walks the optimized plan bottom-up and keeps, for every node, a *part*: the
node's relation as computed by each task of a stage that is not cut yet, with how its rows are
partitioned across those tasks (file groups of one table, hash buckets, one task). Each part
knows how to rebuild its relation with DataFusion's DataFrame API from the plan's own
expressions, over the stage's named inputs. Cutting a part makes a stage: the rebuilt relation
becomes a Substrait plan, read back in a session holding only that stage's inputs (as a worker
will), so a plan that does not serialize becomes a marked fallback instead of a failed task.

Decisions, each recorded as the stage's strategy for ``EXPLAIN``:

* scans split a table's files across tasks, one task per ``min_task_bytes`` of the columns read,
  at most one per bucket; filters and projections run in the scan's stage;
* joins broadcast a side whose size (parquet metadata, projected columns) is under the
  broadcast threshold and that the join type allows; otherwise both sides are hash-shuffled
  on an equi-join key into the same buckets, or joined in place when they already are;
  non-equi joins broadcast a side or gather both;
* aggregates run in place when their input is already partitioned on a group key, else in
  two phases: a partial aggregate inside the input's stage, a shuffle on the group keys, and
  the final aggregate per bucket (one task for global aggregates);
* windows shuffle on a PARTITION BY column; windows without one gather into one task;
* grouping sets aggregate in two phases, shuffled on the group columns and the set's bits;
* joins matching NULL keys (INTERSECT, EXCEPT) and mark joins (EXISTS or IN under OR) are
  placed like other joins (a mark join like a semi join);
* UNION ALL runs per bucket over its hash-shuffled inputs;
* sort and limit run per task and once more in a single merge task.

Anything else is scanned in parallel and gathered into one task that runs the query as written
(the single-task fallback, marked with its reason).

This module is the entry point (``Planner``) and the fallback; ``parts.py`` holds the part,
``stages.py`` the stage builder and the per-node rules, ``joins.py`` join placement and
``aggregates.py`` the two-phase split of aggregate calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
from datafusion import DataFrame, Expr, SessionContext
from datafusion.plan import LogicalPlan
from datafusion.substrait import Consumer, Plan, Producer, Serde
from datafusion.unparser import Dialect, Unparser

from otel_dist.errors import one_line
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.exprs import (
    NotDistributable,
    kind,
    quote_identifier,
)
from otel_dist.planner.model import DistributedPlan, FileScan, Stage, StageInput
from otel_dist.planner.parts import GATHER
from otel_dist.planner.row_joins import fuse_row_joins
from otel_dist.planner.stages import StageBuilder
from otel_dist.session import QUERY_ONLY, plain_schema
from otel_dist.settings import SETTINGS, read

__all__ = [
    "DEFAULT_BROADCAST_THRESHOLD",
    "DEFAULT_MIN_TASK_BYTES",
    "NotAQuery",
    "Planner",
    "PlannerOptions",
    "PlanningError",
    "broadcast_threshold_from_env",
    "min_task_bytes_from_env",
    "parse_byte_count",
]


class PlanningError(ValueError):
    """The SQL cannot be planned (syntax, unknown table or column, unsupported statement)."""


class NotAQuery(PlanningError):
    """The SQL is DDL, DML or another statement, not a query: nothing else runs here."""


_NOT_A_QUERY = re.compile(r"(DDL|DML|Statement) not supported: (.*)")

BROADCAST_THRESHOLD_ENV = "OTEL_DIST_BROADCAST_THRESHOLD"
MIN_TASK_BYTES_ENV = "OTEL_DIST_MIN_TASK_BYTES"
DEFAULT_BROADCAST_THRESHOLD: int = SETTINGS[BROADCAST_THRESHOLD_ENV].default
DEFAULT_MIN_TASK_BYTES: int = SETTINGS[MIN_TASK_BYTES_ENV].default


def parse_byte_count(raw: str) -> int:
    """A size in bytes as the user wrote it; ``ValueError`` says what is wrong with it."""
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"must be a whole number of bytes, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def broadcast_threshold_from_env() -> int:
    """``OTEL_DIST_BROADCAST_THRESHOLD`` in bytes, or the default (64 MB)."""
    return int(read(BROADCAST_THRESHOLD_ENV))


def min_task_bytes_from_env() -> int:
    """``OTEL_DIST_MIN_TASK_BYTES`` in bytes, or the default (64 MB)."""
    return int(read(MIN_TASK_BYTES_ENV))


@dataclass(frozen=True)
class PlannerOptions:
    """Knobs of the planner: tasks per stage (also buckets per shuffle), DataFusion partitions
    per task, the largest estimated size of a join side that is broadcast, and the bytes a scan
    task reads at the least (smaller tables are read by fewer tasks; 0 splits every table)."""

    tasks_per_stage: int
    target_partitions: int = 2
    broadcast_threshold: int = DEFAULT_BROADCAST_THRESHOLD
    min_task_bytes: int = DEFAULT_MIN_TASK_BYTES


class Planner:
    """Turns SQL into a ``DistributedPlan`` over a catalog."""

    def __init__(self, catalog: Catalog, options: PlannerOptions) -> None:
        self.catalog = catalog
        self.options = options
        self._unparser = Unparser(Dialect.default())
        # One planning session for every query: registering the tables costs ~25 ms, and
        # QUERY_ONLY keeps any statement from changing it. Uncorrelated scalar subqueries are
        # planned as joins so that they become stages like any other relation.
        self.ctx = catalog.session(options.target_partitions)
        self._table_schemas: dict[str, pa.Schema] = {}
        self.ctx.sql(
            "SET datafusion.optimizer.enable_physical_uncorrelated_scalar_subquery = false"
        )

    def plan(self, sql: str) -> DistributedPlan:
        try:
            frame = self.ctx.sql_with_options(sql, QUERY_ONLY)
            logical = frame.optimized_logical_plan()
            output_schema = frame.schema()
        except Exception as error:  # DataFusion raises plain Exceptions for bad SQL
            refused = _NOT_A_QUERY.search(str(error))
            if refused:
                raise NotAQuery(
                    f"only queries can run here: {refused.group(1)} statements are not "
                    f"allowed ({refused.group(2).strip()[:100]})"
                ) from None
            raise PlanningError(one_line(error)) from None
        builder = StageBuilder(self)
        try:
            builder.distribute(logical, plain_schema(output_schema))
            _check_root_schema(builder.stages[-1].schema, plain_schema(output_schema))
            stages, strategy = builder.stages, builder.strategy()
        except NotDistributable as reason:
            stages, strategy = self._fallback(sql, logical, str(reason)), "fallback"
        except Exception as error:  # a DataFusion error while rebuilding: the plan is unusual
            stages = self._fallback(sql, logical, f"not distributed: {one_line(error)}")
            strategy = "fallback"
        plan = DistributedPlan(sql, stages, output_schema, strategy)
        plan.table_schemas = {name: self._table_schema(name) for name in plan.file_tables()}
        return plan

    def _table_schema(self, table: str) -> pa.Schema:
        schema = self._table_schemas.get(table)
        if schema is None:
            schema = self._table_schemas[table] = self.ctx.table(table).schema()
        return schema

    def serialize(self, frame: DataFrame, ctx: SessionContext) -> tuple[bytes, str, pa.Schema]:
        """A stage's frame as a Substrait plan, its display SQL and the schema the plan
        produces when ``ctx`` (holding only the stage's inputs) reads it back, as a worker will
        (no plan, and SQL that runs, where Substrait cannot carry the stage).

        Reading it back catches plans Substrait cannot carry, and plans that read anything but
        the stage's own inputs, before any task runs."""
        logical = frame.logical_plan()
        try:
            substrait = Producer.to_substrait_plan(logical, ctx)
            plan = substrait.encode()
            restored = Consumer.from_substrait_plan(ctx, Serde.deserialize_bytes(plan))
            schema = ctx.create_dataframe_from_logical_plan(restored).schema()
        except Exception as error:
            # Substrait's decoder nests at most 100 protobuf levels, about 30 nested operators
            # of one expression (``a + b + ...``): such a stage travels as SQL text instead,
            # planned again here as the worker will plan it.
            try:
                sql = self._unparser.plan_to_sql(logical)
                schema = ctx.sql(sql).schema()
            except Exception:
                raise NotDistributable(
                    f"stage plan does not serialize: {one_line(error)}"
                ) from None
            return b"", sql, plain_schema(schema)
        fused = _without_row_joins(substrait, ctx, schema)
        if fused is not None:
            plan, logical = fused
        return plan, self._display(logical), plain_schema(schema)

    def _display(self, logical: LogicalPlan) -> str:
        """The stage's work as SQL for EXPLAIN and the stage span, or as DataFusion's plan
        outline where the unparser cannot write it (display only: the plan is what runs)."""
        try:
            return self._unparser.plan_to_sql(logical)
        except Exception:
            return logical.display_indent()

    def table_schema(self, table: str) -> pa.Schema:
        return self.ctx.table(table).schema()

    # ---- fallback ------------------------------------------------------------------------

    def _fallback(self, sql: str, plan: LogicalPlan, reason: str) -> list[Stage]:
        """Scan every referenced table in parallel and run the query as written in one task."""
        columns = _scanned_columns(plan)
        for name in self.catalog.tables:
            if name not in columns and re.search(rf"\b{re.escape(name)}\b", sql, re.IGNORECASE):
                columns[name] = []
        stages: list[Stage] = []
        tasks = max(1, self.options.tasks_per_stage)
        for table, needed in sorted(columns.items()):
            if table not in self.catalog.tables:
                raise PlanningError(f"table {table!r} is not in the data folder")
            frame = self.ctx.table(table)
            if needed:
                frame = frame.select(*[Expr.column(quote_identifier(c)) for c in needed])
            projection = ", ".join(quote_identifier(n) for n in frame.schema().names)
            groups = self.catalog.file_groups(table, tasks)
            stages.append(
                Stage(
                    stage_id=len(stages) + 1,
                    kind="scan",
                    sql=f"SELECT {projection} FROM {quote_identifier(table)}",
                    task_count=len(groups),
                    output=GATHER,
                    schema=plain_schema(frame.schema()),
                    file_scan=FileScan(table, tuple(groups)),
                    strategy=f"scan {table} for the single-task fallback",
                )
            )
        result = self.ctx.sql(sql)
        stages.append(
            Stage(
                stage_id=len(stages) + 1,
                kind="single-task",
                sql=sql,
                task_count=1,
                output=GATHER,
                schema=plain_schema(result.schema()),
                inputs=tuple(StageInput(s.file_scan.table_name, s.stage_id) for s in stages),  # type: ignore[union-attr]
                fallback_reason=reason,
                strategy=f"single-task fallback: {reason}",
            )
        )
        return stages


def _scanned_columns(plan: LogicalPlan) -> dict[str, list[str]]:
    """Every table scanned anywhere in the plan with the union of columns read from it."""
    found: dict[str, list[str]] = {}

    def visit(node: LogicalPlan) -> None:
        if kind(node) == "TableScan":
            variant = node.to_variant()
            columns = found.setdefault(variant.table_name(), [])
            for _, name in variant.projection():
                if name not in columns:
                    columns.append(name)
        for child in node.inputs():
            visit(child)

    visit(plan)
    return found


def _check_root_schema(produced: pa.Schema, expected: pa.Schema) -> None:
    """The root stage must produce the query's columns in order (names may be spelled apart)."""
    if len(produced) != len(expected):
        raise NotDistributable("distributed plan produces a different number of columns")
    for got, want in zip(produced, expected, strict=True):
        if got.type != want.type:
            raise NotDistributable(
                f"distributed plan produces {got.name}: {got.type} where {want.name}: {want.type}"
            )


def _without_row_joins(
    substrait: Plan, ctx: SessionContext, schema: pa.Schema
) -> tuple[bytes, LogicalPlan] | None:
    """The stage plan with its row-number self-joins fused (``planner/row_joins.py``), and
    its logical plan as a worker reads it back; None when it has none, or when the fused
    plan does not read back to the same schema (then the joins stay: they are correct)."""
    try:
        fused = fuse_row_joins(substrait)
        if fused is None:
            return None
        plan = fused.encode()
        restored = Consumer.from_substrait_plan(ctx, Serde.deserialize_bytes(plan))
        if ctx.create_dataframe_from_logical_plan(restored).schema() != schema:
            return None
    except Exception:
        return None
    return plan, restored
