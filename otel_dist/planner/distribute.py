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
from otel_dist.protocol import ROW_ID_COLUMN, OutputPartitioning
from otel_dist.session import QUERY_ONLY, new_session, plain_schema


class PlanningError(ValueError):
    """The SQL cannot be planned (syntax, unknown table or column, unsupported statement)."""


class NotAQuery(PlanningError):
    """The SQL is DDL, DML or another statement, not a query: nothing else runs here."""


_NOT_A_QUERY = re.compile(r"(DDL|DML|Statement) not supported: (.*)")


class _NotDistributable(Exception):
    """A plan shape this planner does not distribute; the fallback takes over."""


_ROW_WISE = {"Projection", "Filter", "SubqueryAlias"}
_UPPER = {"Projection", "Filter", "Sort", "Limit"}
_GATHER = OutputPartitioning("single")
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
        # One planning session for every query: registering the tables costs ~25 ms, and
        # QUERY_ONLY keeps any statement from changing it.
        self._ctx = catalog.session(options.target_partitions)

    def plan(self, sql: str) -> DistributedPlan:
        ctx = self._ctx
        try:
            frame = ctx.sql_with_options(sql, QUERY_ONLY)
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
        builder = _StageBuilder(self, ctx)
        try:
            stages, strategy = builder.distribute(logical)
            _check_root_schema(stages[-1].schema, plain_schema(output_schema))
        except _NotDistributable as reason:
            builder = _StageBuilder(self, ctx)
            stages = builder.fallback(sql, logical, str(reason))
            strategy = "fallback"
        return DistributedPlan(sql, stages, output_schema, strategy)

    def unparse(
        self, frame: DataFrame, ctx: SessionContext, prefix: str = ""
    ) -> tuple[str, pa.Schema]:
        """A frame as SQL (after ``prefix``, e.g. a WITH clause), and that SQL's schema as
        ``ctx`` plans it again.

        Re-planning catches SQL the unparser gets wrong and gives the column order the
        unparsed SQL really produces (the unparser may reorder aggregate outputs).
        """
        sql = prefix + self._unparser.plan_to_sql(frame.logical_plan())
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
        if _has_subquery_expressions(plan):
            raise _NotDistributable("subquery expressions are not distributed yet")
        upper: list[LogicalPlan] = []
        node = plan
        while _kind(node) in _UPPER and _fact_table(self.planner.catalog, node) is None:
            upper.append(node)
            node = node.inputs()[0]
        if _kind(node) == "Aggregate":
            between, inner = _below_row_wise(node.inputs()[0])
            if _kind(inner) == "Aggregate":
                region = _region(self.planner.catalog, inner.inputs()[0])
                stages = self._nested_aggregate(upper, node, between, inner, region)
                return stages, _strategy("nested two-phase aggregate", region)
            region = _region(self.planner.catalog, node.inputs()[0])
            return self._aggregate(upper, node, region), _strategy("two-phase aggregate", region)
        region = _region(self.planner.catalog, node)
        return self._scan(upper, region), _strategy("parallel scan", region)

    # ---- scans ---------------------------------------------------------------------------

    def _scan(self, upper: list[LogicalPlan], region: _Region) -> list[Stage]:
        cut = _topmost_order_or_limit(upper)
        if cut is None:
            frame = self._frame(upper[0] if upper else region.root)
            self._leaf(region, frame, "scan", OutputPartitioning("single"))
            return self.stages
        below_cut = upper[cut:]
        frame = self._apply_upper(self._frame(region.root), below_cut, for_merge=True)
        leaf = self._leaf(region, frame, "scan + top-k", OutputPartitioning("single"))
        self._merge(leaf, below_cut, upper[:cut])
        return self.stages

    # ---- aggregates ----------------------------------------------------------------------

    def _aggregate(
        self, upper: list[LogicalPlan], aggregate: LogicalPlan, region: _Region
    ) -> list[Stage]:
        split, partials, finals = self._split(aggregate)
        buckets = self._buckets(split)
        partial_frame = self._frame(region.root).aggregate(split.partials, partials)
        leaf = self._leaf(region, partial_frame, "partial aggregate", _shuffle(split, buckets))
        self._final(upper, split, finals, leaf, buckets)
        return self.stages

    def _nested_aggregate(
        self,
        upper: list[LogicalPlan],
        outer: LogicalPlan,
        between: list[LogicalPlan],
        inner: LogicalPlan,
        region: _Region,
    ) -> list[Stage]:
        """An aggregate over an aggregate (COUNT(DISTINCT), grouped counts of counts): the
        outer partial aggregate runs inside the inner final stage, then shuffles again."""
        inner_split, inner_partials, inner_finals = self._split(inner)
        inner_buckets = self._buckets(inner_split)
        partial_frame = self._frame(region.root).aggregate(inner_split.partials, inner_partials)
        leaf = self._leaf(
            region, partial_frame, "partial aggregate", _shuffle(inner_split, inner_buckets)
        )
        inner_input = _FinalInput.build(inner_split, leaf.schema)
        middle = self._apply_upper(
            _in_order(inner_input.frame(inner_split.finals, inner_finals)), between, for_merge=False
        )
        split, partials, finals = self._split(outer)
        buckets = self._buckets(split)
        fused = self._final_stage(
            leaf,
            inner_input,
            middle.aggregate(split.partials, partials),
            inner_buckets,
            kind="final aggregate + partial aggregate",
            output=_shuffle(split, buckets),
        )
        self._final(upper, split, finals, fused, buckets)
        return self.stages

    def _split(self, aggregate: LogicalPlan) -> tuple[_GroupSplit, list[Expr], list[Expr]]:
        """An aggregate's group keys and aggregates, split into partial and final parts."""
        variant = aggregate.to_variant()
        groups = [_wrap(e) for e in variant.group_by_exprs()]
        aggregates = [_wrap(e) for e in variant.aggregate_exprs()]
        original_types = self.ctx.create_dataframe_from_logical_plan(aggregate).schema()
        split = _split_groups(groups)
        partials: list[Expr] = []
        finals: list[Expr] = []
        for index, expr in enumerate(aggregates):
            out_field = original_types.field(len(groups) + index)
            partial, final = _split_aggregate(
                variant, expr, index, split.partial_table, out_field.type
            )
            partials.extend(partial)
            finals.append(final.alias(expr.schema_name()))
        return split, partials, finals

    def _buckets(self, split: _GroupSplit) -> int:
        return self.tasks if split.partials else 1

    def _final(
        self,
        upper: list[LogicalPlan],
        split: _GroupSplit,
        finals: list[Expr],
        upstream: Stage,
        buckets: int,
    ) -> None:
        """The final aggregate per bucket, the nodes above it, and a merge for order/limit."""
        final_input = _FinalInput.build(split, upstream.schema)
        final_frame = _in_order(final_input.frame(split.finals, finals))
        cut = _topmost_order_or_limit(upper)
        if buckets == 1 or cut is None:
            final_frame = self._apply_upper(final_frame, upper, for_merge=False)
            self._final_stage(upstream, final_input, final_frame, buckets)
            return
        below_cut = upper[cut:]
        final_frame = self._apply_upper(final_frame, below_cut, for_merge=True)
        final = self._final_stage(upstream, final_input, final_frame, buckets)
        self._merge(final, below_cut, upper[:cut])

    # ---- stage constructors ------------------------------------------------------------

    def _frame(self, plan: LogicalPlan) -> DataFrame:
        return self.ctx.create_dataframe_from_logical_plan(plan)

    def _leaf(
        self, region: _Region, frame: DataFrame, kind: str, output: OutputPartitioning
    ) -> Stage:
        """Tasks over the fact table's file groups, each with every other table broadcast."""
        inputs = tuple(
            StageInput(table, self._broadcast_scan(table, columns).stage_id)
            for table, columns in sorted(region.broadcast.items())
        )
        groups = self.planner.catalog.file_groups(region.fact, self.tasks)
        sql, schema = self.planner.unparse(frame, self.ctx)
        if inputs:
            kind += f" (fact {region.fact}, broadcast {', '.join(sorted(region.broadcast))})"
        return self._add(
            kind=kind,
            sql=sql,
            task_count=len(groups),
            output=output,
            schema=schema,
            file_scan=FileScan(region.fact, tuple(groups)),
            inputs=inputs,
        )

    def _broadcast_scan(self, table: str, columns: list[str]) -> Stage:
        frame = self.ctx.table(table)
        if columns:
            frame = frame.select(*[Expr.column(quote_identifier(c)) for c in columns])
        projection = ", ".join(quote_identifier(n) for n in frame.schema().names)
        return self._leaf_sql(
            table,
            frame,
            f"SELECT {projection} FROM {quote_identifier(table)}",
            kind="broadcast scan",
            output=OutputPartitioning("broadcast"),
        )

    def _final_stage(
        self,
        upstream: Stage,
        final_input: _FinalInput,
        frame: DataFrame,
        tasks: int,
        kind: str = "final aggregate",
        output: OutputPartitioning = _GATHER,
    ) -> Stage:
        sql, schema = self.planner.unparse(frame, final_input.ctx, final_input.prefix)
        return self._add(
            kind=kind,
            sql=sql,
            task_count=tasks,
            output=output,
            schema=schema,
            inputs=(StageInput(final_input.input_name, upstream.stage_id, final_input.row_ids),),
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
            elif kind == "SubqueryAlias":
                frame = frame.alias(variant.alias())
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

    def _leaf_sql(
        self,
        table: str,
        frame: DataFrame,
        sql: str,
        kind: str = "scan",
        output: OutputPartitioning = _GATHER,
    ) -> Stage:
        groups = self.planner.catalog.file_groups(table, self.tasks)
        return self._add(
            kind=kind,
            sql=sql,
            task_count=len(groups),
            output=output,
            schema=plain_schema(frame.schema()),
            file_scan=FileScan(table, tuple(groups)),
        )


# ---- helpers over plan nodes -----------------------------------------------------------


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


@dataclass
class _GroupSplit:
    """Group keys split into the partial aggregate's outputs and the final aggregate's keys.

    With keys from one relation (or none), partial results travel under that relation's name
    and keep the column names, so expressions above the aggregate resolve unchanged. With keys
    from several relations (after a join) every key travels as ``__g<i>`` and the final stage
    rebuilds one view per relation joined on a row id (see ``_FinalInput``).
    """

    partials: list[Expr]
    finals: list[Expr]
    partial_table: str
    key_columns: list[tuple[int, str, str]]  # (key index, relation, column) of column keys
    multi: bool

    @property
    def relations(self) -> list[str]:
        return sorted({relation for _, relation, _ in self.key_columns})


def _split_groups(groups: list[Expr]) -> _GroupSplit:
    columns = [_as_column(expr) for expr in groups]
    key_columns = [
        (index, column[0], column[1])
        for index, column in enumerate(columns)
        if column is not None and column[0] is not None
    ]
    relations = {relation for _, relation, _ in key_columns}
    names = [name for _, _, name in key_columns]
    if len(relations) > 1:
        if any(
            len(set(n for _, r, n in key_columns if r == rel))
            != sum(1 for _, r, _ in key_columns if r == rel)
            for rel in relations
        ):
            raise _NotDistributable("duplicate group key names")
        partials = [expr.alias(f"__g{index}") for index, expr in enumerate(groups)]
        keyed = {index for index, _, _ in key_columns}
        finals = [
            expr
            if index in keyed
            else Expr.column(f"__partial.__g{index}").alias(expr.schema_name())
            for index, expr in enumerate(groups)
        ]
        return _GroupSplit(partials, finals, "__partial", key_columns, multi=True)
    if len(set(names)) != len(names):
        raise _NotDistributable("duplicate group key names")
    qualifier = next(iter(relations)) if relations else "__partial"
    partials = []
    finals = []
    for index, (expr, column) in enumerate(zip(groups, columns, strict=True)):
        if column is not None and column[0] is not None:
            partials.append(expr.alias(column[1]))
            finals.append(
                Expr.column(f"{quote_identifier(qualifier)}.{quote_identifier(column[1])}")
            )
        else:
            partials.append(expr.alias(f"__g{index}"))
            finals.append(
                Expr.column(f"{quote_identifier(qualifier)}.__g{index}").alias(expr.schema_name())
            )
    return _GroupSplit(partials, finals, qualifier, key_columns, multi=False)


@dataclass
class _FinalInput:
    """How the final aggregate stage sees the partial results it reads."""

    ctx: SessionContext
    input_name: str
    row_ids: bool
    prefix: str
    tables: list[str]

    @staticmethod
    def build(split: _GroupSplit, partial_schema: pa.Schema) -> _FinalInput:
        ctx = new_session()
        if not split.multi:
            table = split.partial_table
            ctx.register_record_batches(table, [[_empty_batch(partial_schema)]])
            return _FinalInput(ctx, table, False, "", [table])
        rowid = pa.field(ROW_ID_COLUMN, pa.int64())
        ctx.register_record_batches("__input", [[_empty_batch(partial_schema.append(rowid))]])
        keyed = {f"__g{index}" for index, _, _ in split.key_columns}
        views: list[tuple[str, list[tuple[str, str]]]] = [
            (
                relation,
                [(f"__g{i}", name) for i, r, name in split.key_columns if r == relation],
            )
            for relation in split.relations
        ]
        views.append(("__partial", [(n, n) for n in partial_schema.names if n not in keyed]))
        ctes = []
        for view, columns in views:
            select = ", ".join(
                f"{quote_identifier(source)} AS {quote_identifier(target)}"
                for source, target in columns
            )
            ctes.append(
                f"{quote_identifier(view)} AS (SELECT {select}, {quote_identifier(ROW_ID_COLUMN)}"
                f" FROM {quote_identifier('__input')})"
            )
            fields = [partial_schema.field(source).with_name(target) for source, target in columns]
            ctx.register_record_batches(view, [[_empty_batch(pa.schema([*fields, rowid]))]])
        prefix = "WITH " + ", ".join(ctes) + " "
        return _FinalInput(ctx, "__input", True, prefix, [view for view, _ in views])

    def frame(self, group_finals: list[Expr], finals: list[Expr]) -> DataFrame:
        """The final aggregate, over the partial results (rejoined per relation if needed)."""
        first = self.tables[0]
        frame = self.ctx.table(first)
        for other in self.tables[1:]:
            frame = frame.join_on(
                self.ctx.table(other),
                Expr.column(f"{quote_identifier(first)}.{ROW_ID_COLUMN}")
                == Expr.column(f"{quote_identifier(other)}.{ROW_ID_COLUMN}"),
                how="inner",
            )
        return frame.aggregate(group_finals, finals)


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


@dataclass(frozen=True)
class _Region:
    """A subtree that runs once per file group of its fact table, every other table it reads
    broadcast to each task: correct when the subtree is linear in the fact table (projections,
    filters, and joins that keep or filter the fact's rows)."""

    root: LogicalPlan
    fact: str
    broadcast: dict[str, list[str]]


_FACT_SIDES = {
    "Inner": (True, True),
    "Left": (True, False),
    "LeftSemi": (True, False),
    "LeftAnti": (True, False),
    "LeftMark": (True, False),
    "Right": (False, True),
    "RightSemi": (False, True),
    "RightAnti": (False, True),
    "RightMark": (False, True),
}


def _fact_candidates(node: LogicalPlan) -> list[str]:
    """Tables whose rows can be split across tasks at this node without changing the result."""
    kind = _kind(node)
    if kind == "TableScan":
        return [node.to_variant().table_name()]
    if kind in _ROW_WISE:
        return _fact_candidates(node.inputs()[0])
    if kind == "Join":
        left, right = node.inputs()
        use_left, use_right = _FACT_SIDES.get(str(node.to_variant().join_type()), (False, False))
        return (_fact_candidates(left) if use_left else []) + (
            _fact_candidates(right) if use_right else []
        )
    if kind == "CrossJoin":
        left, right = node.inputs()
        return _fact_candidates(left) + _fact_candidates(right)
    return []


def _scan_counts(plan: LogicalPlan) -> dict[str, int]:
    counts: dict[str, int] = {}

    def visit(node: LogicalPlan) -> None:
        if _kind(node) == "TableScan":
            name = node.to_variant().table_name()
            counts[name] = counts.get(name, 0) + 1
        for child in node.inputs():
            visit(child)

    visit(plan)
    return counts


def _fact_table(catalog: Catalog, node: LogicalPlan) -> str | None:
    """The largest table this node is linear in and scans once, if any."""
    if _kind(node) not in _ROW_WISE | {"TableScan", "Join", "CrossJoin"}:
        return None
    counts = _scan_counts(node)
    candidates = [
        table
        for table in set(_fact_candidates(node))
        if counts.get(table) == 1 and table in catalog.tables
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda table: (sum(catalog.tables[table].sizes), table))


def _region(catalog: Catalog, node: LogicalPlan) -> _Region:
    fact = _fact_table(catalog, node)
    if fact is None:
        raise _NotDistributable(f"{_describe_input(node)} has no table to split across tasks")
    broadcast = {table: cols for table, cols in _scanned_columns(node).items() if table != fact}
    unknown = [table for table in broadcast if table not in catalog.tables]
    if unknown:
        raise _NotDistributable(f"table {unknown[0]} is not in the data folder")
    return _Region(node, fact, broadcast)


def _strategy(name: str, region: _Region) -> str:
    return f"{name} + broadcast join" if region.broadcast else name


def _has_subquery_expressions(plan: LogicalPlan) -> bool:
    return any(
        "Subquery:" in line and "SubqueryAlias" not in line
        for line in plan.display_indent().splitlines()
    )


def _shuffle(split: _GroupSplit, buckets: int) -> OutputPartitioning:
    """Partial results hash-partitioned on the group keys, or gathered without keys."""
    if not split.partials:
        return _GATHER
    return OutputPartitioning("hash", buckets, tuple(e.schema_name() for e in split.partials))


def _in_order(frame: DataFrame) -> DataFrame:
    """The unparser writes aggregate calls before group keys; pin the original column order."""
    return frame.select(*[Expr.column(quote_identifier(name)) for name in frame.schema().names])


def _below_row_wise(plan: LogicalPlan) -> tuple[list[LogicalPlan], LogicalPlan]:
    """The projections, filters and aliases at the top of ``plan`` (top-down) and the node
    below them."""
    nodes: list[LogicalPlan] = []
    node = plan
    while _kind(node) in _ROW_WISE:
        nodes.append(node)
        node = node.inputs()[0]
    return nodes, node
