"""Cut DataFusion's optimized logical plan into stages and tasks.

DataFusion parses, resolves and optimises the SQL; this module decides distribution. Each
stage's work is rebuilt with DataFusion's DataFrame API from the optimized plan's own
expressions and unparsed to SQL, which workers run over their inputs registered under the
same table names. Shapes handled here:

* single-table scans with filters and projections, split across files, with per-task
  sort/top-k/limit and a final single-task merge;
* two-phase aggregation: partial aggregate per file group, hash shuffle on the group keys,
  final aggregate per bucket (``avg`` decomposed into sum and count);
* anything else: every table is scanned in parallel and gathered into one task that runs the
  query as written (the single-task fallback, marked with its reason).
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
from datafusion import DataFrame, Expr, SessionContext
from datafusion import functions as f
from datafusion.expr import SortExpr
from datafusion.plan import LogicalPlan
from datafusion.unparser import Dialect, Unparser

from otel_dist.errors import one_line
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.model import DistributedPlan, FileScan, Stage, StageInput
from otel_dist.protocol import OutputPartitioning
from otel_dist.session import new_session, plain_schema


class PlanningError(ValueError):
    """The SQL cannot be planned (syntax, unknown table or column, unsupported statement)."""


class _NotDistributable(Exception):
    """A plan shape this planner does not distribute; the fallback takes over."""


_ROW_WISE = {"Projection", "Filter", "SubqueryAlias"}
_UPPER = {"Projection", "Filter", "Sort", "Limit"}
_SPLITTABLE_AGGREGATES = {"sum", "count", "min", "max", "avg", "mean"}


@dataclass(frozen=True)
class PlannerOptions:
    """Knobs of the planner: tasks per stage and buckets per shuffle."""

    tasks_per_stage: int
    target_partitions: int = 2


def _wrap(raw: object) -> Expr:
    return raw if isinstance(raw, Expr) else Expr(raw)


def _kind(plan: LogicalPlan) -> str:
    return type(plan.to_variant()).__name__


def _literal_int(raw: object) -> int | None:
    if raw is None:
        return None
    value = _wrap(raw).python_value()
    return None if value is None else int(value)


def _as_column(expr: Expr) -> tuple[str | None, str] | None:
    """(qualifier, name) when the expression is a plain column reference."""
    if expr.variant_name() != "Column":
        return None
    variant = expr.to_variant()
    return variant.relation(), variant.name()


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Planner:
    """Turns SQL into a ``DistributedPlan`` over a catalog."""

    def __init__(self, catalog: Catalog, options: PlannerOptions) -> None:
        self.catalog = catalog
        self.options = options
        self._unparser = Unparser(Dialect.default())

    def plan(self, sql: str) -> DistributedPlan:
        ctx = self.catalog.session(self.options.target_partitions)
        try:
            frame = ctx.sql(sql)
            logical = frame.optimized_logical_plan()
            output_schema = frame.schema()
        except Exception as error:  # DataFusion raises plain Exceptions for bad SQL
            raise PlanningError(one_line(error)) from None
        builder = _StageBuilder(self, ctx)
        try:
            stages, strategy = builder.distribute(logical)
            _check_root_schema(stages[-1].schema, plain_schema(output_schema))
        except _NotDistributable as reason:
            builder = _StageBuilder(self, ctx)
            stages = builder.fallback(sql, logical, str(reason))
            strategy = "fallback"
        return DistributedPlan(sql, stages, output_schema, strategy)

    def unparse(self, frame: DataFrame, ctx: SessionContext) -> tuple[str, pa.Schema]:
        """A frame as SQL, and that SQL's schema as ``ctx`` plans it again.

        Re-planning catches SQL the unparser gets wrong and gives the column order the
        unparsed SQL really produces (the unparser may reorder aggregate outputs).
        """
        sql = self._unparser.plan_to_sql(frame.logical_plan())
        try:
            schema = ctx.sql(sql).schema()
        except Exception as error:
            raise _NotDistributable(f"stage SQL does not re-plan: {one_line(error)}") from None
        return sql, plain_schema(schema)


class _StageBuilder:
    """Accumulates stages for one query."""

    def __init__(self, planner: Planner, ctx: SessionContext) -> None:
        self.planner = planner
        self.ctx = ctx
        self.stages: list[Stage] = []
        self.tasks = max(1, planner.options.tasks_per_stage)

    def _add(self, **kwargs: object) -> Stage:
        stage = Stage(stage_id=len(self.stages) + 1, **kwargs)  # type: ignore[arg-type]
        self.stages.append(stage)
        return stage

    # ---- shape recognition -------------------------------------------------------------

    def distribute(self, plan: LogicalPlan) -> tuple[list[Stage], str]:
        upper: list[LogicalPlan] = []
        node = plan
        while _kind(node) in _UPPER | {"SubqueryAlias"} and _kind(node) != "Aggregate":
            if _kind(node) == "SubqueryAlias" and not upper_is_row_wise_to_scan(node):
                raise _NotDistributable("subquery alias above an aggregate")
            if upper_is_row_wise_to_scan(node):
                break
            upper.append(node)
            node = node.inputs()[0]
        if _kind(node) == "Aggregate":
            return self._aggregate(upper, node), "two-phase aggregate"
        if upper_is_row_wise_to_scan(node):
            return self._scan(upper, node), "parallel scan"
        raise _NotDistributable(f"{_kind(node)} is not distributed yet")

    # ---- scans ---------------------------------------------------------------------------

    def _scan(self, upper: list[LogicalPlan], chain: LogicalPlan) -> list[Stage]:
        table = _scanned_table(chain)
        cut = _topmost_order_or_limit(upper)
        if cut is None:
            frame = self._frame(upper[0] if upper else chain)
            self._leaf(table, frame, "scan", OutputPartitioning("single"))
            return self.stages
        below_cut = upper[cut:]
        frame = self._apply_upper(self._frame(chain), below_cut, for_merge=True)
        leaf = self._leaf(table, frame, "scan + top-k", OutputPartitioning("single"))
        self._merge(leaf, below_cut, upper[:cut])
        return self.stages

    # ---- aggregates ----------------------------------------------------------------------

    def _aggregate(self, upper: list[LogicalPlan], aggregate: LogicalPlan) -> list[Stage]:
        chain = aggregate.inputs()[0]
        if not upper_is_row_wise_to_scan(chain):
            raise _NotDistributable(
                f"aggregate over {_describe_input(chain)} is not distributed yet"
            )
        table = _scanned_table(chain)
        variant = aggregate.to_variant()
        groups = [_wrap(e) for e in variant.group_by_exprs()]
        aggregates = [_wrap(e) for e in variant.aggregate_exprs()]
        original_types = self.ctx.create_dataframe_from_logical_plan(aggregate).schema()

        qualifier, group_partials, group_finals = _split_groups(groups)
        partials: list[Expr] = []
        finals: list[Expr] = []
        for index, expr in enumerate(aggregates):
            out_field = original_types.field(len(groups) + index)
            partial, final = _split_aggregate(variant, expr, index, qualifier, out_field.type)
            partials.extend(partial)
            finals.append(final.alias(expr.schema_name()))

        partial_frame = self._frame(chain).aggregate(group_partials, partials)
        buckets = self.tasks if groups else 1
        partial_schema = plain_schema(partial_frame.schema())
        key_names = tuple(partial_schema.names[: len(groups)])
        output = (
            OutputPartitioning("hash", buckets, key_names)
            if groups
            else OutputPartitioning("single")
        )
        leaf = self._leaf(table, partial_frame, "partial aggregate", output)
        if leaf.schema.names[: len(groups)] != list(key_names) and groups:
            key_names = tuple(n for n in leaf.schema.names if n in key_names)
            leaf.output = OutputPartitioning("hash", buckets, key_names)

        placeholder = new_session()
        placeholder.register_record_batches(qualifier, [[_empty_batch(partial_schema)]])
        final_frame = placeholder.table(qualifier).aggregate(group_finals, finals)
        cut = _topmost_order_or_limit(upper)
        if buckets == 1 or cut is None:
            final_frame = self._apply_upper(final_frame, upper, for_merge=False)
            self._stage_over(leaf, qualifier, final_frame, "final aggregate", buckets, placeholder)
            return self.stages
        below_cut = upper[cut:]
        final_frame = self._apply_upper(final_frame, below_cut, for_merge=True)
        final = self._stage_over(
            leaf, qualifier, final_frame, "final aggregate", buckets, placeholder
        )
        self._merge(final, below_cut, upper[:cut])
        return self.stages

    # ---- stage constructors ------------------------------------------------------------

    def _frame(self, plan: LogicalPlan) -> DataFrame:
        return self.ctx.create_dataframe_from_logical_plan(plan)

    def _leaf(self, table: str, frame: DataFrame, kind: str, output: OutputPartitioning) -> Stage:
        groups = self.planner.catalog.file_groups(table, self.tasks)
        sql, schema = self.planner.unparse(frame, self.ctx)
        return self._add(
            kind=kind,
            sql=sql,
            task_count=len(groups),
            output=output,
            schema=schema,
            file_scan=FileScan(table, tuple(groups)),
        )

    def _stage_over(
        self,
        upstream: Stage,
        table_name: str,
        frame: DataFrame,
        kind: str,
        tasks: int,
        ctx: SessionContext,
    ) -> Stage:
        sql, schema = self.planner.unparse(frame, ctx)
        return self._add(
            kind=kind,
            sql=sql,
            task_count=tasks,
            output=OutputPartitioning("single"),
            schema=schema,
            inputs=(StageInput(table_name, upstream.stage_id),),
        )

    def _merge(
        self, upstream: Stage, below_cut: list[LogicalPlan], above: list[LogicalPlan]
    ) -> None:
        """A single task re-applying the topmost sort/limit over the gathered task outputs."""
        names = upstream.schema.names
        if len(set(names)) != len(names):
            raise _NotDistributable("duplicate output column names")
        source = "__merge_input"
        sql = f"SELECT * FROM {source}"
        cut = below_cut[0]
        sort_node = cut if _kind(cut) == "Sort" else _sort_below_limit(cut)
        limit_skip, limit_fetch = 0, None
        if _kind(cut) == "Limit":
            limit_skip = _literal_int(cut.to_variant().skip()) or 0
            limit_fetch = _literal_int(cut.to_variant().fetch())
        elif sort_node is not None:
            limit_fetch = sort_node.to_variant().get_fetch_val()
        if sort_node is not None:
            keys = [
                _order_key(sort_expr, names) for sort_expr in sort_node.to_variant().sort_exprs()
            ]
            sql += " ORDER BY " + ", ".join(keys)
        if limit_fetch is not None:
            sql += f" LIMIT {limit_fetch}"
        if limit_skip:
            sql += f" OFFSET {limit_skip}"
        schema = upstream.schema
        for node in reversed(above):
            sql, schema = _wrap_row_selection(node, sql, schema)
        self._add(
            kind="merge",
            sql=sql,
            task_count=1,
            output=OutputPartitioning("single"),
            schema=schema,
            inputs=(StageInput(source, upstream.stage_id),),
        )

    def _apply_upper(
        self, frame: DataFrame, upper: Sequence[LogicalPlan], *, for_merge: bool
    ) -> DataFrame:
        """Re-apply projection, filter, sort and limit nodes (listed top-down) over a frame.

        With ``for_merge`` the top node's limit keeps skip+fetch rows and drops the offset,
        because the merge stage applies the offset once over all tasks.
        """
        for position, node in enumerate(reversed(upper)):
            variant = node.to_variant()
            kind = _kind(node)
            is_top = position == len(upper) - 1
            if kind == "Projection":
                frame = frame.select(*[_wrap(e) for e in variant.projections()])
            elif kind == "Filter":
                frame = frame.filter(_wrap(variant.predicate()))
            elif kind == "Sort":
                frame = frame.sort(*[_sort_expr(s) for s in variant.sort_exprs()])
                fetch = variant.get_fetch_val()
                if fetch is not None:
                    frame = frame.limit(fetch)
            elif kind == "Limit":
                skip = _literal_int(variant.skip()) or 0
                fetch = _literal_int(variant.fetch())
                if for_merge and is_top:
                    if fetch is not None:
                        frame = frame.limit(fetch + skip)
                elif fetch is not None:
                    frame = frame.limit(fetch, skip)
                elif skip:
                    raise _NotDistributable("OFFSET without LIMIT")
            else:
                raise _NotDistributable(f"{kind} above the distributed part")
        return frame

    # ---- fallback ------------------------------------------------------------------------

    def fallback(self, sql: str, plan: LogicalPlan, reason: str) -> list[Stage]:
        """Scan every referenced table in parallel and run the query as written in one task."""
        columns = _scanned_columns(plan)
        for name in self.planner.catalog.tables:
            if name not in columns and re.search(rf"\b{re.escape(name)}\b", sql, re.IGNORECASE):
                columns[name] = []
        inputs: list[StageInput] = []
        for table, needed in sorted(columns.items()):
            if table not in self.planner.catalog.tables:
                raise PlanningError(f"table {table!r} is not in the data folder")
            frame = self.ctx.table(table)
            if needed:
                frame = frame.select(*[Expr.column(quote_identifier(c)) for c in needed])
            projection = ", ".join(quote_identifier(n) for n in frame.schema().names)
            stage = self._leaf_sql(table, frame, f"SELECT {projection} FROM {table}")
            inputs.append(StageInput(table, stage.stage_id))
        result = self.ctx.sql(sql)
        self._add(
            kind="single-task",
            sql=sql,
            task_count=1,
            output=OutputPartitioning("single"),
            schema=plain_schema(result.schema()),
            inputs=tuple(inputs),
            fallback_reason=reason,
        )
        return self.stages

    def _leaf_sql(self, table: str, frame: DataFrame, sql: str) -> Stage:
        groups = self.planner.catalog.file_groups(table, self.tasks)
        return self._add(
            kind="scan",
            sql=sql,
            task_count=len(groups),
            output=OutputPartitioning("single"),
            schema=plain_schema(frame.schema()),
            file_scan=FileScan(table, tuple(groups)),
        )


# ---- helpers over plan nodes -----------------------------------------------------------


def upper_is_row_wise_to_scan(plan: LogicalPlan) -> bool:
    """True when the plan is a chain of projections, filters and aliases over one table scan."""
    node = plan
    while _kind(node) in _ROW_WISE:
        node = node.inputs()[0]
    return _kind(node) == "TableScan"


def _scanned_table(chain: LogicalPlan) -> str:
    node = chain
    while _kind(node) != "TableScan":
        node = node.inputs()[0]
    return node.to_variant().table_name()


def _scanned_columns(plan: LogicalPlan) -> dict[str, list[str]]:
    """Every table scanned anywhere in the plan with the union of columns read from it."""
    found: dict[str, list[str]] = {}

    def visit(node: LogicalPlan) -> None:
        if _kind(node) == "TableScan":
            variant = node.to_variant()
            columns = found.setdefault(variant.table_name(), [])
            for _, name in variant.projection():
                if name not in columns:
                    columns.append(name)
        for child in node.inputs():
            visit(child)

    visit(plan)
    return found


def _topmost_order_or_limit(upper: list[LogicalPlan]) -> int | None:
    for index, node in enumerate(upper):
        if _kind(node) in ("Sort", "Limit"):
            return index
    return None


def _sort_below_limit(limit: LogicalPlan) -> LogicalPlan | None:
    child = limit.inputs()[0]
    return child if _kind(child) == "Sort" else None


def _sort_expr(raw: object) -> SortExpr:
    return SortExpr(_wrap(raw.expr()), raw.ascending(), raw.nulls_first())  # type: ignore[attr-defined]


def _order_key(raw: object, names: list[str]) -> str:
    column = _as_column(_wrap(raw.expr()))  # type: ignore[attr-defined]
    if column is None or column[1] not in names:
        raise _NotDistributable("sort key is not an output column")
    direction = "ASC" if raw.ascending() else "DESC"  # type: ignore[attr-defined]
    nulls = "NULLS FIRST" if raw.nulls_first() else "NULLS LAST"  # type: ignore[attr-defined]
    return f"{quote_identifier(column[1])} {direction} {nulls}"


def _wrap_row_selection(node: LogicalPlan, sql: str, schema: pa.Schema) -> tuple[str, pa.Schema]:
    """Apply a node above the merge cut: a column-only projection or a limit."""
    kind = _kind(node)
    variant = node.to_variant()
    if kind == "Limit":
        fetch = _literal_int(variant.fetch())
        skip = _literal_int(variant.skip()) or 0
        limit = f" LIMIT {fetch}" if fetch is not None else ""
        offset = f" OFFSET {skip}" if skip else ""
        return f"SELECT * FROM ({sql}){limit}{offset}", schema
    if kind == "Projection":
        fields = []
        for raw in variant.projections():
            column = _as_column(_wrap(raw))
            if column is None or column[1] not in schema.names:
                raise _NotDistributable("computed projection above a sort")
            fields.append(schema.field(column[1]))
        select = ", ".join(quote_identifier(field.name) for field in fields)
        return f"SELECT {select} FROM ({sql})", pa.schema(fields)
    raise _NotDistributable(f"{kind} above a sort")


def _split_groups(groups: list[Expr]) -> tuple[str, list[Expr], list[Expr]]:
    """Partial and final group expressions, and the table name partial results travel under.

    Column keys keep their name and qualifier, so expressions above the aggregate that refer
    to ``table.column`` still resolve against the final aggregate's output.
    """
    columns = [_as_column(expr) for expr in groups]
    qualifiers = {column[0] for column in columns if column is not None and column[0] is not None}
    if len(qualifiers) > 1:
        raise _NotDistributable("group keys from several relations")
    qualifier = next(iter(qualifiers)) if qualifiers else "__partial"
    partials: list[Expr] = []
    finals: list[Expr] = []
    names: set[str] = set()
    for index, (expr, column) in enumerate(zip(groups, columns, strict=True)):
        if column is not None and column[0] is not None:
            name = column[1]
            if name in names:
                raise _NotDistributable("duplicate group key names")
            names.add(name)
            partials.append(expr.alias(name))
            finals.append(Expr.column(f"{quote_identifier(qualifier)}.{quote_identifier(name)}"))
        else:
            name = f"__g{index}"
            partials.append(expr.alias(name))
            finals.append(
                Expr.column(f"{quote_identifier(qualifier)}.{name}").alias(expr.schema_name())
            )
    return qualifier, partials, finals


def _split_aggregate(
    variant: object, expr: Expr, index: int, qualifier: str, output_type: pa.DataType
) -> tuple[list[Expr], Expr]:
    """The partial aggregates computed per task and the final expression combining them."""
    inner = expr
    if inner.variant_name() == "Alias":
        inner = _wrap(inner.to_variant().expr())
    if inner.variant_name() != "AggregateFunction":
        raise _NotDistributable(f"aggregate {expr.schema_name()} is not a plain aggregate call")
    aggregate = inner.to_variant()
    name = variant.agg_func_name(expr.expr)  # type: ignore[attr-defined]
    if (
        name not in _SPLITTABLE_AGGREGATES
        or aggregate.is_distinct()
        or " FILTER (" in expr.schema_name()
        or " ORDER BY " in expr.schema_name()
    ):
        raise _NotDistributable(f"aggregate {expr.schema_name()} is not split in two phases yet")
    args = [_wrap(a) for a in variant.aggregation_arguments(expr.expr)]  # type: ignore[attr-defined]
    if len(args) != 1:
        raise _NotDistributable(f"aggregate {expr.schema_name()} has {len(args)} arguments")
    (arg,) = args

    def column(suffix: str) -> Expr:
        return Expr.column(f"{quote_identifier(qualifier)}.__p{index}{suffix}")

    combine: dict[str, tuple[Callable[[Expr], Expr], Callable[[Expr], Expr]]] = {
        "sum": (f.sum, f.sum),
        "count": (f.count, f.sum),
        "min": (f.min, f.min),
        "max": (f.max, f.max),
    }
    if name in combine:
        partial_fn, final_fn = combine[name]
        final = final_fn(column("")).cast(output_type)
        if name == "count":
            final = f.coalesce(final, Expr.literal(0)).cast(output_type)
        return [partial_fn(arg).alias(f"__p{index}")], final
    total, count = f.sum(arg).alias(f"__p{index}s"), f.count(arg).alias(f"__p{index}c")
    divisor = f.nullif(f.sum(column("c")), Expr.literal(0))
    if not pa.types.is_decimal(output_type):
        final = f.sum(column("s")).cast(pa.float64()) / divisor.cast(pa.float64())
        return [total, count], final.cast(output_type)
    # DataFusion's decimal avg truncates to the output scale; decimal division truncates too,
    # so dividing at a finer scale and then truncating to the output scale gives the same digits.
    scale = output_type.scale
    quotient = f.sum(column("s")).cast(pa.decimal128(38, scale)) / divisor.cast(
        pa.decimal128(20, 0)
    )
    unit = Expr.literal(pa.scalar(decimal.Decimal(1).scaleb(-scale), pa.decimal128(38, scale)))
    return [total, count], (quotient - quotient % unit).cast(output_type)


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def _check_root_schema(produced: pa.Schema, expected: pa.Schema) -> None:
    """The root stage must produce the query's columns in order (names may be spelled apart)."""
    if len(produced) != len(expected):
        raise _NotDistributable("distributed plan produces a different number of columns")
    for got, want in zip(produced, expected, strict=True):
        if got.type != want.type:
            raise _NotDistributable(
                f"distributed plan produces {got.name}: {got.type} where {want.name}: {want.type}"
            )


def _describe_input(plan: LogicalPlan) -> str:
    """The first node below row-wise operators, for fallback reasons: 'Join', 'Aggregate'..."""
    node = plan
    while _kind(node) in _ROW_WISE:
        node = node.inputs()[0]
    return _kind(node)
