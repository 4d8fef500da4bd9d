"""Cut DataFusion's optimized logical plan into stages and tasks.

DataFusion parses, resolves, decorrelates and optimises the SQL; this module decides
distribution. It walks the optimized plan bottom-up and keeps, for every node, a *part*: the
node's relation as computed by each task of a stage that is not cut yet, with how its rows are
partitioned across those tasks (file groups of one table, hash buckets, one task). Each part
knows how to rebuild its relation with DataFusion's DataFrame API from the plan's own
expressions, over the stage's named inputs. Cutting a part makes a stage: the rebuilt relation
is unparsed to SQL and planned again in a session holding only that stage's inputs, so SQL
the unparser gets wrong becomes a marked fallback instead of a wrong answer.

Decisions, each recorded as the stage's strategy for ``EXPLAIN``:

* scans split a table's files across tasks; filters and projections run in the scan's stage;
* joins broadcast a side whose size (parquet metadata, projected columns) is under the
  broadcast threshold and that the join type allows; otherwise both sides are hash-shuffled
  on an equi-join key into the same buckets, or joined in place when they already are;
  non-equi joins broadcast a side or gather both;
* aggregates run in place when their input is already partitioned on a group key, else in
  two phases: a partial aggregate inside the input's stage, a shuffle on the group keys, and
  the final aggregate per bucket (one task for global aggregates);
* windows shuffle on a PARTITION BY column; windows without one gather into one task;
* UNION ALL runs per bucket over its hash-shuffled inputs;
* sort and limit run per task and once more in a single merge task.

Anything else is scanned in parallel and gathered into one task that runs the query as written
(the single-task fallback, marked with its reason).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import pyarrow as pa
from datafusion import DataFrame, Expr, SessionContext
from datafusion.plan import LogicalPlan
from datafusion.unparser import Dialect, Unparser

from otel_dist.errors import one_line
from otel_dist.planner.aggregates import split_aggregate
from otel_dist.planner.catalog import Catalog
from otel_dist.planner.exprs import (
    NotDistributable,
    QualifiedColumn,
    as_column,
    column_expr,
    kind,
    literal_int,
    output_column,
    quote_identifier,
    sort_expr,
    wrap,
)
from otel_dist.planner.model import DistributedPlan, FileScan, Stage, StageInput
from otel_dist.protocol import ROW_ID_COLUMN, OutputPartitioning
from otel_dist.session import QUERY_ONLY, new_session, plain_schema

__all__ = [
    "DEFAULT_BROADCAST_THRESHOLD",
    "NotAQuery",
    "Planner",
    "PlannerOptions",
    "PlanningError",
    "broadcast_threshold_from_env",
    "quote_identifier",
]


class PlanningError(ValueError):
    """The SQL cannot be planned (syntax, unknown table or column, unsupported statement)."""


class NotAQuery(PlanningError):
    """The SQL is DDL, DML or another statement, not a query: nothing else runs here."""


_NOT_A_QUERY = re.compile(r"(DDL|DML|Statement) not supported: (.*)")

DEFAULT_BROADCAST_THRESHOLD = 64_000_000
BROADCAST_THRESHOLD_ENV = "OTEL_DIST_BROADCAST_THRESHOLD"


def broadcast_threshold_from_env() -> int:
    """``OTEL_DIST_BROADCAST_THRESHOLD`` in bytes, or the default (64 MB)."""
    raw = os.environ.get(BROADCAST_THRESHOLD_ENV, "").strip()
    if not raw:
        return DEFAULT_BROADCAST_THRESHOLD
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"{BROADCAST_THRESHOLD_ENV} must be a whole number of bytes, not {raw!r}"
        ) from None
    if value < 0:
        raise ValueError(f"{BROADCAST_THRESHOLD_ENV} must not be negative, got {value}")
    return value


@dataclass(frozen=True)
class PlannerOptions:
    """Knobs of the planner: tasks per stage (also buckets per shuffle), DataFusion partitions
    per task, and the largest estimated size of a join side that is broadcast."""

    tasks_per_stage: int
    target_partitions: int = 2
    broadcast_threshold: int = DEFAULT_BROADCAST_THRESHOLD


_GATHER = OutputPartitioning("single")
_ORDERING = {"sort", "top-k", "merge"}
_BROADCAST = OutputPartitioning("broadcast")

# How a part's rows are spread over the tasks of its (future) stage.
FILES = "files"  # the fact table's file groups, one per task
HASH = "hash"  # hash buckets of exchanged inputs, one per task
SINGLE = "single"  # one task holds every row
REPLICATED = "replicated"  # every task holds every row (a broadcast input)

_JOIN_HOW = {
    "Inner": ("inner", False),
    "Left": ("left", False),
    "Right": ("right", False),
    "Full": ("full", False),
    "LeftSemi": ("semi", False),
    "LeftAnti": ("anti", False),
    "RightSemi": ("semi", True),
    "RightAnti": ("anti", True),
}
# Join types whose right (left) side may be broadcast: each row of the other side is then
# joined exactly once, in the task that holds it.
_BROADCAST_RIGHT = {"Inner", "Left", "LeftSemi", "LeftAnti"}
_BROADCAST_LEFT = {"Inner", "Right", "RightSemi", "RightAnti"}


@dataclass(frozen=True)
class _Input:
    """An upstream stage read by the stage being built, under a name unique in that stage."""

    name: str
    stage: Stage
    row_ids: bool
    schema: pa.Schema


@dataclass(frozen=True)
class _View:
    """A CTE over a row-numbered input that restores one qualifier's columns."""

    name: str
    cte: str
    schema: pa.Schema


Build = Callable[[SessionContext], DataFrame]


@dataclass(frozen=True)
class _Part:
    """A relation computed by each task of a stage that is not cut yet."""

    build: Build
    columns: tuple[QualifiedColumn, ...]
    partitioning: str
    name: str
    keys: frozenset[QualifiedColumn] = frozenset()  # columns whose hash alone places a row
    fact: str | None = None  # the table scanned from files (FILES)
    inputs: tuple[_Input, ...] = ()
    views: tuple[_View, ...] = ()
    size: int | None = None  # upper bound of the bytes, None when unknown
    ops: tuple[str, ...] = ()
    why: tuple[str, ...] = ()
    ordered: bool = False  # the rows come out sorted (a sort, merge or top-k is on top)
    # An aggregate over several qualifiers is on top: DataFusion's unparser would merge it
    # into an enclosing join's query block, so it must not be joined in this stage.
    bare_aggregate: bool = False

    def then(
        self,
        build: Build,
        op: str,
        *,
        columns: tuple[QualifiedColumn, ...] | None = None,
        keys: frozenset[QualifiedColumn] | None = None,
        size: int | None = -1,  # -1 keeps the current size
        name: str | None = None,
    ) -> _Part:
        return replace(
            self,
            build=build,
            columns=self.columns if columns is None else columns,
            keys=self.keys if keys is None else keys,
            size=self.size if size == -1 else size,
            name=self.name if name is None else name,
            ops=(*self.ops, op),
            ordered=op in _ORDERING or (self.ordered and op in ("limit", "project")),
            bare_aggregate=self.bare_aggregate and op in ("project", "filter"),
        )


def _joined(left: _Part, right: _Part, partitioning: str, why: str) -> _Part:
    """The parts of both join sides fused into one stage (inputs, views, fact and history)."""
    facts = {p.fact for p in (left, right) if p.fact is not None}
    if len(facts) > 1:
        raise NotDistributable("two tables scanned from files in one stage")
    return _Part(
        build=left.build,
        columns=left.columns + right.columns,
        partitioning=partitioning,
        name=f"{left.name} ⋈ {right.name}",
        fact=next(iter(facts), None),
        inputs=left.inputs + right.inputs,
        views=left.views + right.views,
        ops=(*left.ops, *right.ops, "join"),
        why=(*left.why, *right.why, why),
    )


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
        builder = _StageBuilder(self)
        try:
            builder.distribute(logical, plain_schema(output_schema))
            _check_root_schema(builder.stages[-1].schema, plain_schema(output_schema))
            stages, strategy = builder.stages, builder.strategy()
        except NotDistributable as reason:
            stages, strategy = self._fallback(sql, logical, str(reason)), "fallback"
        except Exception as error:  # a DataFusion error while rebuilding: the plan is unusual
            stages = self._fallback(sql, logical, f"not distributed: {one_line(error)}")
            strategy = "fallback"
        return DistributedPlan(sql, stages, output_schema, strategy)

    def unparse(
        self, frame: DataFrame, ctx: SessionContext, prefix: str = ""
    ) -> tuple[str, pa.Schema]:
        """A frame as SQL (after ``prefix``, e.g. a WITH clause), and that SQL's schema as
        ``ctx`` plans it again.

        Re-planning catches SQL the unparser gets wrong, and SQL that reads anything but the
        stage's own inputs, and gives the column order the unparsed SQL really produces.
        """
        try:
            sql = prefix + self._unparser.plan_to_sql(frame.logical_plan())
            schema = ctx.sql(sql).schema()
        except Exception as error:
            raise NotDistributable(f"stage SQL does not re-plan: {one_line(error)}") from None
        return sql, plain_schema(schema)

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
                    output=_GATHER,
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
                output=_GATHER,
                schema=plain_schema(result.schema()),
                inputs=tuple(StageInput(s.file_scan.table_name, s.stage_id) for s in stages),  # type: ignore[union-attr]
                fallback_reason=reason,
                strategy=f"single-task fallback: {reason}",
            )
        )
        return stages


class _StageBuilder:
    """Turns one query's optimized plan into stages, bottom-up."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self.catalog = planner.catalog
        self.stages: list[Stage] = []
        self.buckets = max(1, planner.options.tasks_per_stage)
        self.threshold = planner.options.broadcast_threshold
        self._strategies: list[str] = []

    def distribute(self, plan: LogicalPlan, output_schema: pa.Schema) -> None:
        root = self.part(plan)
        if root.partitioning == REPLICATED:
            raise NotDistributable("the query reads no table")
        self.cut(root, _GATHER, cast_to=output_schema)

    def strategy(self) -> str:
        return " + ".join(self._strategies) or "parallel scan"

    def _note(self, strategy: str) -> None:
        if strategy not in self._strategies:
            self._strategies.append(strategy)

    # ---- cutting stages and reading them -------------------------------------------------

    def cut(
        self,
        part: _Part,
        output: OutputPartitioning,
        hash_on: tuple[QualifiedColumn, ...] = (),
        cast_to: pa.Schema | None = None,
    ) -> tuple[Stage, list[str]]:
        """Make ``part`` a stage; ``hash_on`` makes its output a hash shuffle on those columns.
        Output columns are named after the part's columns (``__c<i>`` when names repeat).
        ``cast_to`` gives the root's column types where DataFusion's optimizer changed them
        (a decimal sum over a rewritten COUNT(DISTINCT) widens, for one)."""
        names = [name for _, name in part.columns]
        unique = len(set(names)) == len(names) and ROW_ID_COLUMN not in names
        out_names = names if unique else [f"__c{index}" for index in range(len(names))]
        ctx = self._stage_context(part)
        frame = part.build(ctx)
        if part.ordered:
            # A projection over the sort would become a derived table whose order SQL drops.
            if not unique:
                raise NotDistributable("duplicate column names under ORDER BY")
        else:
            types = [f.type for f in plain_schema(frame.schema())]
            wanted = list(cast_to.types) if cast_to is not None else types
            if len(wanted) != len(types):
                raise NotDistributable("distributed plan produces a different number of columns")
            frame = frame.select(
                *[
                    (column_expr(c) if have == want else column_expr(c).cast(want)).alias(o)
                    for c, o, have, want in zip(part.columns, out_names, types, wanted, strict=True)
                ]
            )
        prefix = "WITH " + ", ".join(v.cte for v in part.views) + " " if part.views else ""
        sql, schema = self.planner.unparse(frame, ctx, prefix)
        if schema.names != out_names:
            raise NotDistributable(f"stage produces {schema.names}, expected {out_names}")
        if hash_on:
            keys = tuple(out_names[part.columns.index(c)] for c in hash_on)
            output = OutputPartitioning("hash", self.buckets, keys)
        why = list(part.why)
        file_scan = None
        if part.partitioning == FILES:
            assert part.fact is not None
            groups = self.catalog.file_groups(part.fact, self.buckets)
            files = len(self.catalog.tables[part.fact].files)
            why.insert(
                0,
                f"split {part.fact}'s {_count(files, 'file')} into {_count(len(groups), 'task')}",
            )
            file_scan = FileScan(part.fact, tuple(groups))
            task_count = len(groups)
        else:
            task_count = self.buckets if part.partitioning == HASH else 1
        if cast_to is not None:
            why.append("the coordinator reads every task's output")
        else:
            why.append(_describe_output(output, part, hash_on))
        stage = Stage(
            stage_id=len(self.stages) + 1,
            kind=_label(part.ops),
            sql=sql,
            task_count=task_count,
            output=output,
            schema=schema,
            file_scan=file_scan,
            inputs=tuple(StageInput(i.name, i.stage.stage_id, i.row_ids) for i in part.inputs),
            strategy="; ".join(why),
        )
        self.stages.append(stage)
        return stage, out_names

    def read(
        self,
        stage: Stage,
        part: _Part,
        out_names: list[str],
        partitioning: str,
        keys: frozenset[QualifiedColumn] = frozenset(),
    ) -> _Part:
        """A part reading a cut stage, with the cut part's columns and qualifiers restored."""
        columns = part.columns
        input_name = f"__s{stage.stage_id}"
        qualifiers = sorted({q for q, _ in columns if q is not None})
        names = [name for _, name in columns]
        common = dict(columns=columns, partitioning=partitioning, name=part.name, keys=keys)
        if len(qualifiers) <= 1 and out_names == names:
            alias = qualifiers[0] if qualifiers else None

            def build_plain(ctx: SessionContext) -> DataFrame:
                frame = ctx.table(input_name)
                return frame.alias(alias) if alias else frame

            inputs = (_Input(input_name, stage, False, stage.schema),)
            return _Part(build_plain, inputs=inputs, size=part.size, **common)  # type: ignore[arg-type]
        # Columns of several qualifiers cannot live in one table: number the rows, split them
        # into one view per qualifier and join the views back on the row number.
        row_id = pa.field(ROW_ID_COLUMN, pa.int64(), nullable=False)
        numbered = stage.schema.append(row_id)
        groups: list[str | None] = [*qualifiers]
        if any(q is None for q, _ in columns):
            groups.append(None)
        views: list[tuple[_View, str | None]] = []
        for index, qualifier in enumerate(groups):
            mapping = [
                (out, name)
                for (q, name), out in zip(columns, out_names, strict=True)
                if q == qualifier
            ]
            if len({name for _, name in mapping}) != len(mapping):
                raise NotDistributable("duplicate column names under one qualifier")
            view = f"{input_name}_{index}"
            select = ", ".join(
                f"{quote_identifier(out)} AS {quote_identifier(name)}" for out, name in mapping
            )
            cte = (
                f"{quote_identifier(view)} AS (SELECT {select}, {quote_identifier(ROW_ID_COLUMN)}"
                f" FROM {quote_identifier(input_name)})"
            )
            fields = [stage.schema.field(out).with_name(name) for out, name in mapping]
            views.append((_View(view, cte, pa.schema([*fields, row_id])), qualifier))

        def build_views(ctx: SessionContext) -> DataFrame:
            frame: DataFrame | None = None
            first_ref = ""
            for view, qualifier in views:
                table = ctx.table(view.name)
                if qualifier is not None:
                    table = table.alias(qualifier)
                ref = qualifier if qualifier is not None else view.name
                if frame is None:
                    frame, first_ref = table, ref
                else:
                    frame = frame.join_on(
                        table,
                        column_expr((first_ref, ROW_ID_COLUMN))
                        == column_expr((ref, ROW_ID_COLUMN)),
                        how="inner",
                    )
            assert frame is not None
            return frame.select(*[column_expr(c) for c in columns])

        return _Part(
            build_views,
            inputs=(_Input(input_name, stage, True, numbered),),
            views=tuple(view for view, _ in views),
            size=part.size,
            **common,  # type: ignore[arg-type]
        )

    def exchange(
        self,
        part: _Part,
        partitioning: str,
        *,
        output: OutputPartitioning = _GATHER,
        hash_on: tuple[QualifiedColumn, ...] = (),
        keys: frozenset[QualifiedColumn] = frozenset(),
    ) -> _Part:
        """Cut ``part`` and read it back as a part of the next stage, partitioned as given."""
        stage, out_names = self.cut(part, output, hash_on)
        read = self.read(stage, part, out_names, partitioning, keys)
        if partitioning == HASH:
            return replace(read, why=(f"one task per bucket of stage {stage.stage_id}",))
        if partitioning == SINGLE:
            return replace(read, why=(f"one task over stage {stage.stage_id}'s gathered rows",))
        return read

    def _stage_context(self, part: _Part) -> SessionContext:
        """A session holding exactly the stage's inputs, as empty tables."""
        ctx = new_session(self.planner.options.target_partitions)
        if part.fact is not None:
            _register_empty(ctx, part.fact, self.planner.table_schema(part.fact))
        for item in (*part.inputs, *part.views):
            _register_empty(ctx, item.name, item.schema)
        return ctx

    # ---- nodes ---------------------------------------------------------------------------

    def part(self, node: LogicalPlan) -> _Part:
        handler = {
            "TableScan": self._table_scan,
            "Projection": self._projection,
            "Filter": self._filter,
            "SubqueryAlias": self._subquery_alias,
            "Join": self._join,
            "Aggregate": self._aggregate,
            "Sort": self._sort,
            "Limit": self._limit,
            "WindowExpr": self._window,
            "Union": self._union,
        }.get(kind(node))
        if handler is None:
            raise NotDistributable(f"{kind(node)} is not distributed yet")
        return handler(node)

    def _table_scan(self, node: LogicalPlan) -> _Part:
        variant = node.to_variant()
        table = variant.table_name()
        if table not in self.catalog.tables:
            raise NotDistributable(f"table {table} is not in the data folder")
        columns = tuple((table, name) for _, name in variant.projection())
        filters = [wrap(e) for e in variant.filters()]
        fetch = variant.fetch()

        def build(ctx: SessionContext) -> DataFrame:
            frame = ctx.table(quote_identifier(table))
            for predicate in filters:
                frame = frame.filter(predicate)
            frame = frame.select(*[column_expr(c) for c in columns])
            return frame.limit(fetch) if fetch is not None else frame

        return _Part(
            build,
            columns=columns,
            partitioning=FILES,
            name=table,
            fact=table,
            size=self.catalog.column_bytes(table, [name for _, name in columns]),
            ops=("scan",),
        )

    def _projection(self, node: LogicalPlan) -> _Part:
        child = self.part(node.inputs()[0])
        # Computed columns are named explicitly: the unparser would otherwise name them after
        # its own rewrite of the expression.
        exprs = [_named(wrap(e)) for e in node.to_variant().projections()]
        if child.ordered and any(e.variant_name() != "Column" for e in exprs):
            raise NotDistributable("computed columns above ORDER BY are not distributed yet")
        columns: list[QualifiedColumn] = []
        keys: set[QualifiedColumn] = set()
        for expr in exprs:
            produced, passed = output_column(expr)
            columns.append(produced)
            if passed is not None and passed in child.keys:
                keys.add(produced)

        def build(ctx: SessionContext) -> DataFrame:
            return child.build(ctx).select(*exprs)

        return child.then(build, "project", columns=tuple(columns), keys=frozenset(keys))

    def _filter(self, node: LogicalPlan) -> _Part:
        child = self.part(node.inputs()[0])
        predicate = wrap(node.to_variant().predicate())

        def build(ctx: SessionContext) -> DataFrame:
            return child.build(ctx).filter(predicate)

        return child.then(build, "filter")

    def _subquery_alias(self, node: LogicalPlan) -> _Part:
        child = self.part(node.inputs()[0])
        alias = node.to_variant().alias()

        def build(ctx: SessionContext) -> DataFrame:
            # The projection keeps the unparser from hoisting filters out of the alias.
            frame = child.build(ctx).select(*[column_expr(c) for c in child.columns])
            return frame.alias(alias)

        return child.then(
            build,
            "project",
            columns=tuple((alias, name) for _, name in child.columns),
            keys=frozenset((alias, name) for _, name in child.keys),
            name=alias,
        )

    # ---- joins -----------------------------------------------------------------------------

    def _join(self, node: LogicalPlan) -> _Part:
        variant = node.to_variant()
        join_type = str(variant.join_type())
        if join_type not in _JOIN_HOW:
            raise NotDistributable(f"{join_type} joins are not distributed yet")
        if variant.null_equals_null():
            raise NotDistributable("joins matching NULL keys are not distributed yet")
        left_node, right_node = node.inputs()
        if "null_aware" in node.display().splitlines()[0] and not self._keys_not_null(node):
            raise NotDistributable("NOT IN over nullable keys is not distributed yet")
        left, right = self.part(left_node), self.part(right_node)
        if left.bare_aggregate or right.bare_aggregate:
            raise NotDistributable("a join over an aggregate grouped by several relations")
        pairs = [(wrap(a), wrap(b)) for a, b in variant.on()]
        condition = wrap(variant.filter()) if variant.filter() is not None else None
        key_pairs = [
            (as_column(a), as_column(b))
            for a, b in pairs
            if as_column(a) is not None and as_column(b) is not None
        ]
        how, swap = _JOIN_HOW[join_type]
        if how in ("semi", "anti") and condition is None and len(key_pairs) == len(pairs):
            # Only the existence of a key matters on the other side: send each key once.
            if swap:
                left = self._distinct_keys(left, [a for a, _ in key_pairs])  # type: ignore[misc]
            else:
                right = self._distinct_keys(right, [b for _, b in key_pairs])  # type: ignore[misc]
        left, right, partitioning, why = self._place_join(join_type, left, right, key_pairs)  # type: ignore[arg-type]
        exprs = [a == b for a, b in pairs] + ([condition] if condition is not None else [])
        if not exprs:
            exprs = [Expr.literal(True)]
        built_left, built_right = left.build, right.build

        def build(ctx: SessionContext) -> DataFrame:
            lhs, rhs = built_left(ctx), built_right(ctx)
            if swap:
                return rhs.join_on(lhs, *exprs, how=how)
            return lhs.join_on(rhs, *exprs, how=how)

        joined = _joined(left, right, partitioning, why)
        if how in ("semi", "anti"):
            columns = right.columns if swap else left.columns
        else:
            columns = left.columns + right.columns
        keys = _join_keys(join_type, left, right, key_pairs)  # type: ignore[arg-type]
        # Size estimates, not bounds: a join's output is about as long as its longer side and
        # as wide as both; semi and anti joins keep at most the preserved side.
        if how in ("semi", "anti"):
            size = right.size if swap else left.size
        elif left.size is None or right.size is None:
            size = None
        else:
            size = left.size + right.size
        return replace(joined, build=build, columns=columns, keys=keys, size=size)

    def _distinct_keys(self, part: _Part, keys: list[QualifiedColumn]) -> _Part:
        """The side of a semi or anti join reduced to its distinct join keys, per task."""
        qualifiers = {q for q, _ in keys}
        if part.partitioning == SINGLE or len(qualifiers) != 1 or None in qualifiers:
            return part
        if part.partitioning == HASH and part.keys & set(keys):
            return part  # joined in place: no exchange to save
        (alias,) = qualifiers

        def build(ctx: SessionContext) -> DataFrame:
            frame = part.build(ctx).aggregate([column_expr(k) for k in keys], [])
            return frame.alias(alias)  # type: ignore[arg-type]

        return part.then(build, "distinct keys", columns=tuple(keys), keys=part.keys & set(keys))

    def _keys_not_null(self, join: LogicalPlan) -> bool:
        """Whether every equi-join key of ``join`` is a non-nullable column: a NOT IN (null-aware
        anti) join then means exactly NOT EXISTS, which is what the rebuilt join runs."""
        for side, position in zip(join.inputs(), (0, 1), strict=True):
            schema = self.planner.ctx.create_dataframe_from_logical_plan(side).schema()
            for pair in join.to_variant().on():
                column = as_column(wrap(pair[position]))
                if column is None or schema.names.count(column[1]) != 1:
                    return False
                if schema.field(column[1]).nullable:
                    return False
        return True

    def _place_join(
        self,
        join_type: str,
        left: _Part,
        right: _Part,
        key_pairs: list[tuple[QualifiedColumn, QualifiedColumn]],
    ) -> tuple[_Part, _Part, str, str]:
        """Exchange the join's sides as its strategy needs; returns the sides to fuse, the
        joined partitioning and why."""
        if left.partitioning == SINGLE and right.partitioning == SINGLE:
            return left, right, SINGLE, "join in one task: both sides are gathered"
        may_right = join_type in _BROADCAST_RIGHT
        may_left = join_type in _BROADCAST_LEFT
        if left.partitioning == SINGLE and may_left:
            self._note("broadcast join")
            return self._broadcast(left), right, right.partitioning, "broadcast gathered left side"
        if right.partitioning == SINGLE and may_right:
            self._note("broadcast join")
            return left, self._broadcast(right), left.partitioning, "broadcast gathered right side"
        if SINGLE not in (left.partitioning, right.partitioning):
            for a, b in key_pairs:
                if {left.partitioning, right.partitioning} == {HASH} and (
                    a in left.keys and b in right.keys
                ):
                    self._note("co-located join")
                    return (
                        left,
                        right,
                        HASH,
                        f"join in place: both sides are hash-partitioned on {_pair(a, b)}",
                    )
            small = [
                (side.size, position)
                for side, other, position, allowed in (
                    (right, left, "right", may_right),
                    (left, right, "left", may_left),
                )
                if allowed and self._worth_broadcasting(side, other)
            ]
            if small:
                size, position = min(small)
                self._note("broadcast join")
                side, other = (right, left) if position == "right" else (left, right)
                against = f", {other.name} ~{_megabytes(other.size)}" if other.size else ""
                why = (
                    f"broadcast {side.name}: ~{_megabytes(size)} ≤ threshold "
                    f"{_megabytes(self.threshold)}{against}"
                )
                if position == "right":
                    return left, self._broadcast(right), left.partitioning, why
                return self._broadcast(left), right, right.partitioning, why
        if key_pairs:
            return self._shuffle_join(left, right, key_pairs)
        # No equi-join key: broadcast the smaller side the join type allows, or gather both.
        if may_left and may_right and _smaller(left, right):
            self._note("broadcast join")
            why = f"broadcast {left.name}, the smaller side: the join has no equi-join key"
            return self._broadcast(left), right, right.partitioning, why
        if may_right and left.partitioning != SINGLE:
            self._note("broadcast join")
            why = f"broadcast {right.name}: the join has no equi-join key"
            return left, self._broadcast(right), left.partitioning, why
        if may_left and right.partitioning != SINGLE:
            self._note("broadcast join")
            why = f"broadcast {left.name}: the join has no equi-join key"
            return self._broadcast(left), right, right.partitioning, why
        self._note("gathered join")
        return (
            self._gather(left),
            self._gather(right),
            SINGLE,
            "join in one task: no equi-join key and neither side may be broadcast",
        )

    def _worth_broadcasting(self, side: _Part, other: _Part) -> bool:
        """A side is broadcast when it is known to fit the threshold and sending it to every
        task costs less than shuffling both sides once: size x (tasks - 1) < the other side."""
        if side.size is None or side.size > self.threshold:
            return False
        return other.size is None or side.size * (self.buckets - 1) < other.size

    def _shuffle_join(
        self,
        left: _Part,
        right: _Part,
        key_pairs: list[tuple[QualifiedColumn, QualifiedColumn]],
    ) -> tuple[_Part, _Part, str, str]:
        # Prefer the key a side is already partitioned on: that side then stays in place.
        a, b = max(key_pairs, key=lambda p: (p[0] in left.keys) + (p[1] in right.keys))
        sides = []
        for side, key in ((left, a), (right, b)):
            if side.partitioning == HASH and key in side.keys:
                sides.append(side)
            else:
                moved = self.exchange(side, HASH, hash_on=(key,), keys=frozenset({key}))
                sides.append(replace(moved, why=()))  # the join's why says it all
        self._note("shuffle join")
        sizes = ", ".join(
            f"{side.name} ~{_megabytes(side.size)}" if side.size is not None else f"{side.name}"
            for side in (left, right)
        )
        why = (
            f"shuffle join on {_pair(a, b)}: no side the join type lets go to every task is "
            f"under the broadcast threshold {_megabytes(self.threshold)} and cheaper to send "
            f"to every task than to shuffle ({sizes})"
        )
        return sides[0], sides[1], HASH, why

    def _broadcast(self, part: _Part) -> _Part:
        return self.exchange(part, REPLICATED, output=_BROADCAST)

    def _gather(self, part: _Part) -> _Part:
        if part.partitioning == SINGLE:
            return part
        return self.exchange(part, SINGLE)

    # ---- aggregates ----------------------------------------------------------------------

    def _aggregate(self, node: LogicalPlan) -> _Part:
        variant = node.to_variant()
        groups = [wrap(e) for e in variant.group_by_exprs()]
        aggregates = [wrap(e) for e in variant.aggregate_exprs()]
        if any(g.variant_name() == "GroupingSet" for g in groups):
            raise NotDistributable("grouping sets are not distributed yet")
        child = self.part(node.inputs()[0])
        group_columns = [as_column(g) for g in groups]
        columns = tuple(
            [
                c if c is not None else (None, g.schema_name())
                for c, g in zip(group_columns, groups, strict=True)
            ]
            + [(None, a.schema_name()) for a in aggregates]
        )
        size = 0 if not groups else child.size
        qualifiers = {q for q, _ in columns if q is not None}
        # The unparser keeps an aggregate in its own query block only under an alias.
        alias = (
            (next(iter(qualifiers)) if qualifiers else "__aggregate")
            if len(qualifiers) < 2
            else None
        )

        def finish(frame: DataFrame) -> DataFrame:
            return frame.alias(alias) if alias is not None else frame

        in_place = [c for c in group_columns if c is not None and c in child.keys]
        if child.partitioning == SINGLE or (child.partitioning == HASH and in_place):

            def build_local(ctx: SessionContext) -> DataFrame:
                return finish(child.build(ctx).aggregate(groups, aggregates))

            local = child.then(
                build_local, "aggregate", columns=columns, keys=frozenset(in_place), size=size
            )
            return replace(local, bare_aggregate=alias is None)
        output_types = self.planner.ctx.create_dataframe_from_logical_plan(node).schema()
        try:
            split = split_aggregate(groups, aggregates, variant, output_types)
        except NotDistributable as reason:
            # Not decomposable (median, DISTINCT with FILTER...): move the rows instead.
            keys = [c for c in group_columns if c is not None]
            if groups and len(keys) == len(groups):
                self._note("shuffled aggregate")
                moved = self.exchange(child, HASH, hash_on=tuple(keys))
                why = f"shuffle rows on the group keys: {reason}"
            else:
                self._note("gathered aggregate")
                moved = self._gather(child)
                why = f"gather rows into one task: {reason}"
            moved = replace(moved, why=(*moved.why, why))

            def build_moved(ctx: SessionContext) -> DataFrame:
                return finish(moved.build(ctx).aggregate(groups, aggregates))

            keys_after = frozenset(keys) if len(keys) == 1 else frozenset()
            aggregated = moved.then(
                build_moved, "aggregate", columns=columns, keys=keys_after, size=size
            )
            return replace(aggregated, bare_aggregate=alias is None)

        def build_partial(ctx: SessionContext) -> DataFrame:
            return child.build(ctx).aggregate(split.partial_groups, split.partial_aggregates)

        partial = child.then(
            build_partial, "partial aggregate", columns=tuple(split.partial_columns)
        )
        self._note("two-phase aggregate")
        if split.grouped:
            keys = frozenset(split.key_columns) if len(split.key_columns) == 1 else frozenset()
            read = self.exchange(partial, HASH, hash_on=tuple(split.key_columns))
        else:
            keys = frozenset()
            read = self.exchange(partial, SINGLE)

        def build_final(ctx: SessionContext) -> DataFrame:
            return finish(read.build(ctx).aggregate(split.final_groups, split.final_aggregates))

        final = read.then(
            build_final,
            "final aggregate",
            columns=tuple(split.output_columns),
            keys=keys,
            size=size,
        )
        return replace(final, bare_aggregate=alias is None)

    # ---- order and limit -------------------------------------------------------------------

    def _sort(self, node: LogicalPlan, skip: int = 0, fetch: int | None = None) -> _Part:
        """A sort, with the ``skip``/``fetch`` of a limit right above it if any."""
        variant = node.to_variant()
        raw = list(variant.sort_exprs())
        per_task_fetch = variant.get_fetch_val()
        if fetch is None:
            fetch = per_task_fetch
        elif per_task_fetch is None or per_task_fetch > skip + fetch:
            per_task_fetch = skip + fetch
        child = self.part(node.inputs()[0])

        def sort(frame: DataFrame, limit: int | None, offset: int) -> DataFrame:
            # Sorting a projection keeps ORDER BY in the unparsed query block (see ``cut``).
            frame = frame.select(*[column_expr(c) for c in child.columns])
            frame = frame.sort(*[sort_expr(s) for s in raw])
            return frame.limit(limit, offset) if limit is not None else frame

        if child.partitioning == SINGLE:
            return child.then(lambda ctx: sort(child.build(ctx), fetch, skip), "sort")
        per_task = child
        if per_task_fetch is not None:
            per_task = child.then(lambda ctx: sort(child.build(ctx), per_task_fetch, 0), "top-k")
        merged = self._gather(per_task)
        return merged.then(lambda ctx: sort(merged.build(ctx), fetch, skip), "merge")

    def _limit(self, node: LogicalPlan) -> _Part:
        variant = node.to_variant()
        skip = literal_int(variant.skip()) or 0
        fetch = literal_int(variant.fetch())
        if fetch is not None and kind(node.inputs()[0]) == "Sort":
            return self._sort(node.inputs()[0], skip, fetch)
        child = self.part(node.inputs()[0])
        if fetch is None:
            if skip:
                raise NotDistributable("OFFSET without LIMIT is not distributed yet")
            return child
        if child.partitioning == SINGLE:
            return child.then(lambda ctx: child.build(ctx).limit(fetch, skip), "limit")
        per_task = child.then(lambda ctx: child.build(ctx).limit(fetch + skip), "limit")
        merged = self._gather(per_task)
        return merged.then(lambda ctx: merged.build(ctx).limit(fetch, skip), "merge")

    # ---- windows and unions ----------------------------------------------------------------

    def _window(self, node: LogicalPlan) -> _Part:
        variant = node.to_variant()
        exprs = [wrap(e) for e in variant.get_window_expr()]
        child = self.part(node.inputs()[0])
        shared: set[QualifiedColumn] | None = None
        ordered: list[QualifiedColumn] = []
        for expr in exprs:
            target = wrap(expr.to_variant().expr()) if expr.variant_name() == "Alias" else expr
            partition = [as_column(wrap(p)) for p in variant.get_partition_exprs(target.expr)]
            columns = {c for c in partition if c is not None}
            ordered.extend(c for c in partition if c is not None and c not in ordered)
            shared = columns if shared is None else shared & columns
        shared = shared or set()
        if child.partitioning == SINGLE or shared & child.keys:
            ready = child
        elif shared:
            key = next(c for c in ordered if c in shared)
            self._note("window shuffle")
            ready = self.exchange(child, HASH, hash_on=(key,), keys=frozenset({key}))
            ready = replace(ready, why=(f"shuffle on the PARTITION BY column {_name(key)}",))
        else:
            self._note("gathered window")
            ready = self._gather(child)
            ready = replace(ready, why=("a window without a shared PARTITION BY runs in one task",))

        def build(ctx: SessionContext) -> DataFrame:
            return ready.build(ctx).window(*exprs)

        columns = ready.columns + tuple((None, e.schema_name()) for e in exprs)
        return ready.then(build, "window", columns=columns)

    def _union(self, node: LogicalPlan) -> _Part:
        children = [self.part(child) for child in node.inputs()]
        if all(child.partitioning == SINGLE for child in children):
            ready = children
        else:
            ready = []
            for child in children:
                if child.partitioning == HASH:
                    ready.append(child)
                else:
                    first = (child.columns[0],)
                    ready.append(self.exchange(child, HASH, hash_on=first))
            self._note("union per bucket")
        partitioning = ready[0].partitioning
        facts = {c.fact for c in ready if c.fact is not None}
        if facts:
            raise NotDistributable("a union over files in one stage")
        builds = [c.build for c in ready]

        def build(ctx: SessionContext) -> DataFrame:
            frame = builds[0](ctx)
            for other in builds[1:]:
                frame = frame.union(other(ctx))
            return frame

        names = self.planner.ctx.create_dataframe_from_logical_plan(node).schema().names
        sizes = [c.size for c in ready]
        return _Part(
            build,
            columns=tuple((None, name) for name in names),
            partitioning=partitioning,
            name="union",
            inputs=tuple(i for c in ready for i in c.inputs),
            views=tuple(v for c in ready for v in c.views),
            size=None if None in sizes else sum(s for s in sizes if s is not None),
            ops=(*(op for c in ready for op in c.ops), "union"),
            why=(*(w for c in ready for w in c.why), "union of inputs hash-partitioned per bucket"),
        )


# ---- helpers -----------------------------------------------------------------------------


def _join_keys(
    join_type: str,
    left: _Part,
    right: _Part,
    key_pairs: list[tuple[QualifiedColumn, QualifiedColumn]],
) -> frozenset[QualifiedColumn]:
    """Columns whose hash still places each joined row: the preserved sides' keys, and for
    inner joins the columns equal to them. Outer joins NULL-extend the other side."""
    if join_type == "Inner":
        keys = set(left.keys | right.keys)
        for a, b in key_pairs:
            if a in keys or b in keys:
                keys |= {a, b}
        return frozenset(keys)
    if join_type in ("Left", "LeftSemi", "LeftAnti"):
        return left.keys
    if join_type in ("Right", "RightSemi", "RightAnti"):
        return right.keys
    return frozenset()


def _named(expr: Expr) -> Expr:
    if expr.variant_name() in ("Column", "Alias"):
        return expr
    return expr.alias(expr.schema_name())


def _label(ops: tuple[str, ...]) -> str:
    """A stage's kind from the operations fused into it, e.g. 'scan + join + partial
    aggregate'; projections and filters are implied."""
    seen: list[str] = []
    for op in ops:
        if op not in ("project", "filter") and op not in seen:
            seen.append(op)
    return " + ".join(seen) or "exchange"


def _describe_output(
    output: OutputPartitioning, part: _Part, hash_on: tuple[QualifiedColumn, ...]
) -> str:
    if output.kind == "hash":
        return f"shuffle on {', '.join(_name(c) for c in hash_on)} into {output.buckets} buckets"
    if output.kind == "broadcast":
        return f"broadcast {part.name} to every task that reads it"
    return "gather into one task"


def _name(column: QualifiedColumn) -> str:
    qualifier, name = column
    return f"{qualifier}.{name}" if qualifier else name


def _pair(a: QualifiedColumn, b: QualifiedColumn) -> str:
    return f"{_name(a)} = {_name(b)}"


def _smaller(left: _Part, right: _Part) -> bool:
    """Whether the left side is known to be smaller than the right one."""
    return left.size is not None and (right.size is None or left.size < right.size)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _megabytes(size: int) -> str:
    if size < 1_000_000:
        return f"{size / 1e3:.1f} kB"
    return f"{size / 1e6:.1f} MB"


def _register_empty(ctx: SessionContext, name: str, schema: pa.Schema) -> None:
    ctx.register_record_batches(name, [[pa.RecordBatch.from_pylist([], schema=schema)]])


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
