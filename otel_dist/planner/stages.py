"""The stage builder: walks the optimized plan bottom-up, keeps a part per node, and cuts
stages where an exchange is needed (see ``distribute.py`` for the decisions)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import pyarrow as pa
from datafusion import DataFrame, Expr, SessionContext
from datafusion import functions as f
from datafusion.plan import LogicalPlan

from otel_dist.planner.aggregates import split_aggregate
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
from otel_dist.planner.joins import JoinPlanner, PlanningContext
from otel_dist.planner.model import FileScan, LocalScan, RangeScan, Stage, StageInput
from otel_dist.planner.parts import (
    FILES,
    GATHER,
    HASH,
    REPLICATED,
    SINGLE,
    Input,
    Lineage,
    Part,
    column_name,
    label,
    megabytes,
    plural,
    register_empty,
)
from otel_dist.protocol import ROW_ID_COLUMN, OutputPartitioning
from otel_dist.session import new_session, plain_schema

# The column DataFusion adds to a grouping-set aggregate: which set a row belongs to.
GROUPING_ID = "__grouping_id"

if TYPE_CHECKING:
    from otel_dist.planner.distribute import Planner


class StageBuilder:
    """Turns one query's optimized plan into stages, bottom-up."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self.catalog = planner.catalog
        self.stages: list[Stage] = []
        self.buckets = max(1, planner.options.tasks_per_stage)
        self.threshold = planner.options.broadcast_threshold
        self.min_task_bytes = planner.options.min_task_bytes
        self._strategies: list[str] = []
        context = PlanningContext(
            planner, self.catalog, self.buckets, self.threshold, self.min_task_bytes
        )
        self.joins = JoinPlanner(context, self)

    def distribute(self, plan: LogicalPlan, output_schema: pa.Schema) -> None:
        root = self.part(plan)
        if root.partitioning == REPLICATED:
            raise NotDistributable("the query reads no table")
        self.cut(root, GATHER, cast_to=output_schema)

    def strategy(self) -> str:
        return " + ".join(self._strategies) or "parallel scan"

    def note(self, strategy: str) -> None:
        if strategy not in self._strategies:
            self._strategies.append(strategy)

    def cut(
        self,
        part: Part,
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
        # A projection keeps the order of the rows under it (a sort's, a merge's).
        types = [field.type for field in plain_schema(frame.schema())]
        wanted = list(cast_to.types) if cast_to is not None else types
        if len(wanted) != len(types):
            raise NotDistributable("distributed plan produces a different number of columns")
        frame = frame.select(
            *[
                (column_expr(c) if have == want else column_expr(c).cast(want)).alias(o)
                for c, o, have, want in zip(part.columns, out_names, types, wanted, strict=True)
            ]
        )
        plan, sql, schema = self.planner.serialize(frame, ctx)
        if schema.names != out_names:
            raise NotDistributable(f"stage produces {schema.names}, expected {out_names}")
        if hash_on:
            keys = tuple(out_names[part.columns.index(c)] for c in hash_on)
            if output.kind == "range":
                output = replace(output, keys=keys)
            else:
                output = OutputPartitioning("hash", self.buckets, keys)
        why = list(part.why)
        file_scan = None
        range_scans: tuple[RangeScan, ...] = ()
        if part.partitioning == FILES:
            assert part.fact is not None
            groups = list(
                part.groups
                or self.catalog.file_groups(part.fact, self._scan_tasks(part.fact_bytes))
            )
            files = len(self.catalog.tables[part.fact].files)
            split = (
                f"split {part.fact}'s {plural(files, 'file')} into {plural(len(groups), 'task')}"
            )
            if len(groups) < min(files, self.buckets):
                split += (
                    f": ~{megabytes(part.fact_bytes)} to read, "
                    f"{megabytes(self.min_task_bytes)} a task at the least"
                )
            why.insert(0, split)
            file_scan = FileScan(part.fact, tuple(groups), part.fact_bytes)
            task_count = len(groups)
            range_scans = self._range_scans(part, groups)
        else:
            task_count = self.buckets if part.partitioning == HASH else 1
        if cast_to is not None:
            why.append("the coordinator reads every task's output")
        else:
            why.append(_describe_output(output, part, hash_on))
        stage = Stage(
            stage_id=len(self.stages) + 1,
            kind=label(part.ops),
            sql=sql,
            plan=plan,
            task_count=task_count,
            output=output,
            schema=schema,
            file_scan=file_scan,
            range_scans=range_scans,
            inputs=tuple(StageInput(i.name, i.stage.stage_id, i.row_ids) for i in part.inputs),
            local_scans=tuple(
                LocalScan(table, self.catalog.tables[table].files, scan_bytes)
                for table, scan_bytes in part.local
            ),
            strategy="; ".join(why),
        )
        self.stages.append(stage)
        return stage, out_names

    def _range_scans(self, part: Part, groups: list[tuple[str, ...]]) -> tuple[RangeScan, ...]:
        """The tables a co-located join reads beside the part's fact, each task's share of
        them cut to the key ranges of its fact files."""
        if len(part.split) < 2:
            return ()
        table, column = part.split[0]
        bounds = self.catalog.group_bounds(table, column, groups)
        return tuple(
            RangeScan(
                other,
                other_column,
                tuple(self.catalog.files_within(other, other_column, b) for b in bounds),
                tuple(bounds),
            )
            for other, other_column in part.split[1:]
        )

    def column_type(self, part: Part, column: QualifiedColumn) -> pa.DataType:
        """The Arrow type of one of a part's columns."""
        frame = part.build(self._stage_context(part))
        return plain_schema(frame.schema()).field(part.columns.index(column)).type

    def _scan_tasks(self, scan_bytes: int) -> int:
        """Tasks that scan ``scan_bytes``: one per ``min_task_bytes``, at most one per bucket;
        below that, a task's fixed costs (session, plan, streams, spans) outweigh its share."""
        if self.min_task_bytes <= 0:
            return self.buckets
        return max(1, min(self.buckets, -(-scan_bytes // self.min_task_bytes)))

    def read(
        self,
        stage: Stage,
        part: Part,
        out_names: list[str],
        partitioning: str,
        keys: frozenset[QualifiedColumn] = frozenset(),
    ) -> Part:
        """A part reading a cut stage, with the cut part's columns and qualifiers restored.

        A relation has one qualifier, so the input is read under its columns' qualifier (the
        unqualified columns come out of an alias, which drops the qualifier); columns of
        several qualifiers are split into one relation per qualifier over the numbered rows,
        joined back on the row number (joins ``serialize`` fuses into one read again:
        ``planner/row_joins.py``)."""
        columns = part.columns
        input_name = f"__s{stage.stage_id}"
        qualifiers = sorted({q for q, _ in columns if q is not None})
        common = dict(columns=columns, partitioning=partitioning, name=part.name, keys=keys)
        unqualified = {name for q, name in columns if q is None}
        if unqualified & {name for q, name in columns if q is not None}:
            raise NotDistributable("a column name both qualified and not crossing an exchange")
        groups: list[list[tuple[str, str]]] = []
        for qualifier in qualifiers:
            mapping = [
                (out, name)
                for (q, name), out in zip(columns, out_names, strict=True)
                if q == qualifier
            ]
            if len({name for _, name in mapping}) != len(mapping):
                raise NotDistributable("duplicate column names under one qualifier")
            groups.append(mapping)
        loose = [
            out for (q, _), out in zip(columns, out_names, strict=True) if q is None
        ]  # the unqualified columns, by their names in the stage's output
        numbered = len(qualifiers) > 1
        refs = qualifiers or [input_name]

        def build(ctx: SessionContext) -> DataFrame:
            frame: DataFrame | None = None
            for index, ref in enumerate(refs):
                table = ctx.table(input_name)
                mapping = groups[index] if groups else []
                exprs = [column_expr((None, out)).alias(name) for out, name in mapping]
                if index == 0:
                    exprs += [
                        column_expr((None, out))
                        for out in loose
                        if out not in {name for _, name in mapping}
                    ]
                if numbered:
                    exprs.append(column_expr((None, ROW_ID_COLUMN)))
                table = table.select(*exprs).alias(ref)
                if frame is None:
                    frame = table
                else:
                    frame = frame.join_on(
                        table,
                        column_expr((refs[0], ROW_ID_COLUMN)) == column_expr((ref, ROW_ID_COLUMN)),
                        how="inner",
                    )
            assert frame is not None
            return frame.select(
                *[
                    column_expr(c) if c[0] is not None else column_expr((refs[0], out)).alias(c[1])
                    for c, out in zip(columns, out_names, strict=True)
                ]
            )

        schema = stage.schema
        if numbered:
            schema = schema.append(pa.field(ROW_ID_COLUMN, pa.int64(), nullable=False))
        inputs = (Input(input_name, stage, numbered, schema),)
        return Part(build, inputs=inputs, size=part.size, lineage=part.lineage, **common)  # type: ignore[arg-type]

    def exchange(
        self,
        part: Part,
        partitioning: str,
        *,
        output: OutputPartitioning = GATHER,
        hash_on: tuple[QualifiedColumn, ...] = (),
        keys: frozenset[QualifiedColumn] = frozenset(),
    ) -> Part:
        """Cut ``part`` and read it back as a part of the next stage, partitioned as given."""
        stage, out_names = self.cut(part, output, hash_on)
        read = self.read(stage, part, out_names, partitioning, keys)
        if partitioning == HASH:
            return replace(read, why=(f"one task per bucket of stage {stage.stage_id}",))
        if partitioning == SINGLE:
            return replace(read, why=(f"one task over stage {stage.stage_id}'s gathered rows",))
        return read

    def gather(self, part: Part) -> Part:
        """``part`` in one task: as it is, or read back from a stage gathering it."""
        if part.partitioning == SINGLE:
            return part
        return self.exchange(part, SINGLE)

    def _stage_context(self, part: Part) -> SessionContext:
        """A session holding exactly the stage's inputs, as empty tables."""
        ctx = new_session(self.planner.options.target_partitions)
        tables = [table for table, _ in part.local]
        if part.fact is not None:
            tables.insert(0, part.fact)
        tables += [table for table, _ in part.split if table not in tables]
        for table in tables:
            register_empty(ctx, table, self.planner.table_schema(table))
        for item in part.inputs:
            register_empty(ctx, item.name, item.schema)
        return ctx

    def part(self, node: LogicalPlan) -> Part:
        handler = {
            "TableScan": self._table_scan,
            "Projection": self._projection,
            "Filter": self._filter,
            "SubqueryAlias": self._subquery_alias,
            "Join": self.joins.join,
            "Aggregate": self._aggregate,
            "Sort": self._sort,
            "Limit": self._limit,
            "WindowExpr": self._window,
            "Union": self._union,
        }.get(kind(node))
        if handler is None:
            raise NotDistributable(f"{kind(node)} is not distributed yet")
        return handler(node)

    def _table_scan(self, node: LogicalPlan) -> Part:
        variant = node.to_variant()
        table = variant.table_name()
        if table not in self.catalog.tables:
            raise NotDistributable(f"table {table} is not in the data folder")
        columns = tuple((table, name) for _, name in variant.projection())
        size = self.catalog.column_bytes(table, [name for _, name in columns])
        filters = [wrap(e) for e in variant.filters()]
        fetch = variant.fetch()
        output_size = size
        if filters and 0 < self.threshold < size:
            # What the filter keeps, from a sample, with room for a sample that misleads:
            # a filtered table small enough to broadcast is not worth shuffling its partner for.
            selectivity = self.catalog.filter_selectivity(table, filters)
            output_size = min(size, int(size * (2 * selectivity + 0.01)))
        lineage = None
        if fetch is None:
            lineage = Lineage(
                table,
                columns=tuple((c, c[1]) for c in columns),
                width=size / max(1, self.catalog.row_count(table)),
                share=self._share(table, filters),
            )

        def build(ctx: SessionContext) -> DataFrame:
            frame = ctx.table(quote_identifier(table))
            for predicate in filters:
                frame = frame.filter(predicate)
            frame = frame.select(*[column_expr(c) for c in columns])
            return frame.limit(fetch) if fetch is not None else frame

        # A column whose files hold disjoint ranges places each row by its value, whatever
        # files a task gets: a join or aggregate on it can run where the files are read.
        ranged = (
            None if fetch is not None else self.catalog.range_column(table, [c[1] for c in columns])
        )
        return Part(
            build,
            columns=columns,
            partitioning=FILES,
            name=table,
            fact=table,
            fact_bytes=size,
            size=output_size,
            ops=("scan",),
            lineage=lineage,
            keys=frozenset({(table, ranged)}) if ranged else frozenset(),
            split=((table, ranged),) if ranged else (),
        )

    def _share(self, table: str, filters: list[Expr]) -> Callable[[], float]:
        """The share of ``table``'s rows its scan keeps, sampled when first asked for, with
        room for a sample that finds (next to) none."""
        if not filters:
            return lambda: 1.0
        catalog = self.catalog
        return lambda: min(1.0, catalog.filter_selectivity(table, filters) + 0.01)

    def _projection(self, node: LogicalPlan) -> Part:
        child = self.part(node.inputs()[0])
        # Computed columns are named explicitly: the unparser would otherwise name them after
        # its own rewrite of the expression.
        exprs = [_named(wrap(e)) for e in node.to_variant().projections()]
        columns: list[QualifiedColumn] = []
        keys: set[QualifiedColumn] = set()
        passed_as: dict[QualifiedColumn, QualifiedColumn] = {}
        for expr in exprs:
            produced, passed = output_column(expr)
            columns.append(produced)
            if passed is not None:
                passed_as[passed] = produced
                if passed in child.keys:
                    keys.add(produced)

        def build(ctx: SessionContext) -> DataFrame:
            return child.build(ctx).select(*exprs)

        lineage = child.lineage.renamed(passed_as) if child.lineage else None
        return child.then(
            build, "project", columns=tuple(columns), keys=frozenset(keys), lineage=lineage
        )

    def _filter(self, node: LogicalPlan) -> Part:
        child = self.part(node.inputs()[0])
        predicate = wrap(node.to_variant().predicate())

        def build(ctx: SessionContext) -> DataFrame:
            return child.build(ctx).filter(predicate)

        return child.then(build, "filter")

    def _subquery_alias(self, node: LogicalPlan) -> Part:
        child = self.part(node.inputs()[0])
        alias = node.to_variant().alias()

        def build(ctx: SessionContext) -> DataFrame:
            frame = child.build(ctx).select(*[column_expr(c) for c in child.columns])
            return frame.alias(alias)

        renamed = {c: (alias, c[1]) for c in child.columns}
        return child.then(
            build,
            "project",
            columns=tuple(renamed.values()),
            keys=frozenset((alias, name) for _, name in child.keys),
            name=alias,
            lineage=child.lineage.renamed(renamed) if child.lineage else None,
        )

    def _aggregate(self, node: LogicalPlan) -> Part:
        variant = node.to_variant()
        groups = [wrap(e) for e in variant.group_by_exprs()]
        aggregates = [wrap(e) for e in variant.aggregate_exprs()]
        child = self.part(node.inputs()[0])
        if any(g.variant_name() == "GroupingSet" for g in groups):
            return self._grouping_sets(node, groups, aggregates, child)
        group_columns = [as_column(g) for g in groups]
        columns = tuple(
            [
                c if c is not None else (None, g.schema_name())
                for c, g in zip(group_columns, groups, strict=True)
            ]
            + [(None, a.schema_name()) for a in aggregates]
        )
        size = 0 if not groups else child.size

        in_place = [c for c in group_columns if c is not None and c in child.keys]
        if child.partitioning == SINGLE or (child.partitioning in (HASH, FILES) and in_place):

            def build_local(ctx: SessionContext) -> DataFrame:
                return child.build(ctx).aggregate(groups, aggregates)

            if child.partitioning == FILES:
                self.note("aggregate in place")
                child = replace(
                    child,
                    why=(
                        *child.why,
                        f"aggregate where the files are read: each value of "
                        f"{column_name(in_place[0])} is in one task's key range",
                    ),
                )
            return child.then(
                build_local, "aggregate", columns=columns, keys=frozenset(in_place), size=size
            )
        output_types = self.planner.ctx.create_dataframe_from_logical_plan(node).schema()
        try:
            split = split_aggregate(groups, aggregates, variant, output_types)
        except NotDistributable as reason:
            # Not decomposable (median, DISTINCT with FILTER...): move the rows instead.
            keys = [c for c in group_columns if c is not None]
            if groups and len(keys) == len(groups):
                self.note("shuffled aggregate")
                moved = self.exchange(child, HASH, hash_on=tuple(keys))
                why = f"shuffle rows on the group keys: {reason}"
            else:
                self.note("gathered aggregate")
                moved = self.gather(child)
                why = f"gather rows into one task: {reason}"
            moved = replace(moved, why=(*moved.why, why))

            def build_moved(ctx: SessionContext) -> DataFrame:
                return moved.build(ctx).aggregate(groups, aggregates)

            keys_after = frozenset(keys) if len(keys) == 1 else frozenset()
            return moved.then(build_moved, "aggregate", columns=columns, keys=keys_after, size=size)

        def build_partial(ctx: SessionContext) -> DataFrame:
            return child.build(ctx).aggregate(split.partial_groups, split.partial_aggregates)

        partial = child.then(
            build_partial, "partial aggregate", columns=tuple(split.partial_columns)
        )
        self.note("two-phase aggregate")
        if split.grouped:
            final_keys = (
                frozenset(split.key_columns) if len(split.key_columns) == 1 else frozenset()
            )
            read = self.exchange(partial, HASH, hash_on=tuple(split.key_columns))
        else:
            final_keys = frozenset()
            read = self.exchange(partial, SINGLE)

        def build_final(ctx: SessionContext) -> DataFrame:
            frame = read.build(ctx).aggregate(split.final_groups, split.final_aggregates)
            return frame.select(*split.final_projection)

        return read.then(
            build_final,
            "final aggregate",
            columns=tuple(split.output_columns),
            keys=final_keys,
            size=size,
        )

    def _grouping_sets(
        self, node: LogicalPlan, groups: list[Expr], aggregates: list[Expr], child: Part
    ) -> Part:
        """``ROLLUP``, ``CUBE`` and ``GROUPING SETS``: a partial aggregate per task over every
        grouping set, a shuffle on the group columns and the set's ``GROUPING()`` bits, and a
        final aggregate grouped by both, so that the NULL a set puts in a column it does not
        group by never meets a NULL of the data. The bits give back DataFusion's
        ``__grouping_id`` (which the DataFrame API drops from an aggregate's output)."""
        if len(groups) != 1:
            raise NotDistributable("grouping sets beside other group keys")
        output_types = plain_schema(
            self.planner.ctx.create_dataframe_from_logical_plan(node).schema()
        )
        names = output_types.names
        if GROUPING_ID not in names:
            raise NotDistributable("a grouping-set aggregate without its set id")
        id_index = names.index(GROUPING_ID)
        id_type = output_types.field(id_index).type
        group_columns: list[QualifiedColumn] = []
        for name in names[:id_index]:
            found = [c for c in child.columns if c[1] == name]
            if len(found) != 1:
                raise NotDistributable("grouping sets over computed or ambiguous columns")
            group_columns.append(found[0])
        width = len(group_columns)
        bits = [f.grouping(column_expr(c)).alias(f"__b{i}") for i, c in enumerate(group_columns)]
        bit_columns = [(None, f"__b{i}") for i in range(width)]
        set_id: QualifiedColumn = (None, GROUPING_ID)
        columns = (*group_columns, set_id, *[(None, a.schema_name()) for a in aggregates])

        def grouping_id() -> Expr:
            total = Expr.literal(0)
            for i, column in enumerate(bit_columns):
                total = total + column_expr(column).cast(pa.int64()) * Expr.literal(
                    1 << (width - 1 - i)
                )
            return total.cast(id_type).alias(GROUPING_ID)

        def whole(frame: DataFrame) -> DataFrame:
            frame = frame.aggregate(groups, [*aggregates, *bits])
            return frame.select(
                *[column_expr(c) for c in group_columns],
                grouping_id(),
                *[column_expr((None, a.schema_name())) for a in aggregates],
            )

        if child.partitioning == SINGLE:
            return child.then(lambda ctx: whole(child.build(ctx)), "aggregate", columns=columns)
        try:
            split = split_aggregate(
                [column_expr(c) for c in group_columns],
                aggregates,
                node.to_variant(),
                output_types.remove(id_index),
            )
        except NotDistributable as reason:
            self.note("gathered aggregate")
            moved = self.gather(child)
            moved = replace(moved, why=(*moved.why, f"gather rows into one task: {reason}"))
            return moved.then(lambda ctx: whole(moved.build(ctx)), "aggregate", columns=columns)

        def build_partial(ctx: SessionContext) -> DataFrame:
            return child.build(ctx).aggregate(groups, [*bits, *split.partial_aggregates])

        partial_columns = (*group_columns, *bit_columns, *split.partial_columns[width:])
        partial = child.then(build_partial, "partial aggregate", columns=partial_columns)
        self.note("two-phase grouping sets")
        read = self.exchange(partial, HASH, hash_on=(*group_columns, *bit_columns))
        read = replace(
            read,
            why=(
                *read.why,
                "partial aggregate per grouping set, shuffled on its group columns and set bits",
            ),
        )

        def build_final(ctx: SessionContext) -> DataFrame:
            frame = read.build(ctx).aggregate(
                [column_expr(c) for c in (*group_columns, *bit_columns)], split.final_aggregates
            )
            projection = split.final_projection
            return frame.select(*projection[:width], grouping_id(), *projection[width:])

        return read.then(build_final, "final aggregate", columns=columns, keys=frozenset())

    def _sort(self, node: LogicalPlan, skip: int = 0, fetch: int | None = None) -> Part:
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
        merged = self.gather(per_task)
        return merged.then(lambda ctx: sort(merged.build(ctx), fetch, skip), "merge")

    def _limit(self, node: LogicalPlan) -> Part:
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
        merged = self.gather(per_task)
        return merged.then(lambda ctx: merged.build(ctx).limit(fetch, skip), "merge")

    def _window(self, node: LogicalPlan) -> Part:
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
            self.note("window shuffle")
            ready = self.exchange(child, HASH, hash_on=(key,), keys=frozenset({key}))
            ready = replace(ready, why=(f"shuffle on the PARTITION BY column {column_name(key)}",))
        else:
            self.note("gathered window")
            ready = self.gather(child)
            ready = replace(ready, why=("a window without a shared PARTITION BY runs in one task",))

        def build(ctx: SessionContext) -> DataFrame:
            return ready.build(ctx).window(*exprs)

        with_windows = ready.columns + tuple((None, e.schema_name()) for e in exprs)
        return ready.then(build, "window", columns=with_windows)

    def _union(self, node: LogicalPlan) -> Part:
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
            self.note("union per bucket")
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
        local: dict[str, int] = {}  # small tables the inputs read whole, each once
        for table, scan_bytes in (item for c in ready for item in c.local):
            local[table] = max(scan_bytes, local.get(table, 0))
        return Part(
            build,
            columns=tuple((None, name) for name in names),
            partitioning=partitioning,
            name="union",
            local=tuple(local.items()),
            inputs=tuple(i for c in ready for i in c.inputs),
            size=None if None in sizes else sum(s for s in sizes if s is not None),
            ops=(*(op for c in ready for op in c.ops), "union"),
            why=(*(w for c in ready for w in c.why), "union of inputs hash-partitioned per bucket"),
        )


def _named(expr: Expr) -> Expr:
    if expr.variant_name() in ("Column", "Alias"):
        return expr
    return expr.alias(expr.schema_name())


def _describe_output(
    output: OutputPartitioning, part: Part, hash_on: tuple[QualifiedColumn, ...]
) -> str:
    if output.kind == "hash":
        return (
            f"shuffle on {', '.join(column_name(c) for c in hash_on)} into {output.buckets} buckets"
        )
    if output.kind == "range":
        return (
            f"send each row to the task that reads its range of {column_name(hash_on[0])} "
            f"({output.buckets} buckets)"
        )
    if output.kind == "broadcast":
        return f"broadcast {part.name} to every task that reads it"
    return "gather into one task"
