"""Join placement: broadcast a side, shuffle both sides on an equi-join key, join in place
when both are already partitioned on it, or gather; and the rebuilt join itself."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Literal, Protocol

import pyarrow as pa
from datafusion import DataFrame, Expr, SessionContext
from datafusion import functions as f
from datafusion.plan import LogicalPlan

from otel_dist.planner.exprs import (
    NotDistributable,
    QualifiedColumn,
    as_column,
    column_expr,
    quote_identifier,
    wrap,
)
from otel_dist.planner.parts import (
    BROADCAST,
    FILES,
    HASH,
    REPLICATED,
    SINGLE,
    Lineage,
    Part,
    joined,
    megabytes,
    merged_split,
    pair,
    plural,
)
from otel_dist.protocol import OutputPartitioning

if TYPE_CHECKING:
    from otel_dist.planner.catalog import Catalog
    from otel_dist.planner.distribute import Planner

_JoinHow = Literal["inner", "left", "right", "full", "semi", "anti"]
_JOIN_HOW: dict[str, tuple[_JoinHow, bool]] = {
    "Inner": ("inner", False),
    "Left": ("left", False),
    "Right": ("right", False),
    "Full": ("full", False),
    "LeftSemi": ("semi", False),
    "LeftAnti": ("anti", False),
    "RightSemi": ("semi", True),
    "RightAnti": ("anti", True),
}

# A broadcast side that is a scan (filtered, projected) of a table reading at most this many
# bytes, and no more than a scan task's least (``min_task_bytes``), is read whole from its
# files by every task that joins it, instead of by a stage of its own that sends it to them: a
# task costs about 2 ms of CPU and a round trip whatever it reads (26 of the 216 tasks of
# TPC-H at SF 1 were such stages, for nation, region and supplier), while reading a 1 MB
# table again in each of a few tasks costs about as much as receiving it.
LOCAL_SCAN_BYTES = 1_000_000
_SCAN_OPS = frozenset({"scan", "filter", "project"})

# Join types whose right (left) side may be broadcast: each row of the other side is then
# joined exactly once, in the task that holds it.
_BROADCAST_RIGHT = {"Inner", "Left", "LeftSemi", "LeftAnti"}
_BROADCAST_LEFT = {"Inner", "Right", "RightSemi", "RightAnti"}


@dataclass(frozen=True)
class PlanningContext:
    """What planning one query's stages reads: the planner (its session and table schemas),
    the catalog, tasks per stage (``buckets``), the broadcast threshold and the least bytes a
    scan task reads."""

    planner: Planner
    catalog: Catalog
    buckets: int
    threshold: int
    min_task_bytes: int


class StageOps(Protocol):
    """What join planning asks of the stage builder: plan a child node, cut a part into an
    exchange, gather it into one task, and note a strategy."""

    def part(self, node: LogicalPlan) -> Part: ...

    def exchange(
        self,
        part: Part,
        partitioning: str,
        *,
        output: OutputPartitioning = ...,
        hash_on: tuple[QualifiedColumn, ...] = (),
        keys: frozenset[QualifiedColumn] = frozenset(),
    ) -> Part: ...

    def gather(self, part: Part) -> Part: ...

    def column_type(self, part: Part, column: QualifiedColumn) -> pa.DataType: ...

    def note(self, strategy: str) -> None: ...


class JoinPlanner:
    """Places each join (broadcast a side, shuffle both, join in place, or gather) and
    rebuilds it; the stage builder hands it join nodes and does the rest."""

    def __init__(self, context: PlanningContext, stages: StageOps) -> None:
        self.context = context
        self.stages = stages
        self.planner = context.planner
        self.catalog = context.catalog
        self.buckets = context.buckets
        self.threshold = context.threshold
        self.min_task_bytes = context.min_task_bytes

    def join(self, node: LogicalPlan) -> Part:
        return self._join(node)

    def _join(self, node: LogicalPlan) -> Part:
        variant = node.to_variant()
        join_type = str(variant.join_type())
        if join_type == "LeftMark":
            return self._mark_join(node)
        if join_type not in _JOIN_HOW:
            raise NotDistributable(f"{join_type} joins are not distributed yet")
        null_equal = bool(variant.null_equals_null())  # INTERSECT and EXCEPT
        left_node, right_node = node.inputs()
        if "null_aware" in node.display().splitlines()[0] and not self._keys_not_null(node):
            raise NotDistributable("NOT IN over nullable keys is not distributed yet")
        left, right = self.stages.part(left_node), self.stages.part(right_node)
        pairs = [(wrap(a), wrap(b)) for a, b in variant.on()]
        condition = wrap(variant.filter()) if variant.filter() is not None else None
        key_pairs = [
            (as_column(a), as_column(b))
            for a, b in pairs
            if as_column(a) is not None and as_column(b) is not None
        ]
        how, swap = _JOIN_HOW[join_type]
        co_located = self._co_locate(left, right, key_pairs) is not None  # type: ignore[arg-type]
        if (
            how in ("semi", "anti")
            and condition is None
            and len(key_pairs) == len(pairs)
            and not co_located
        ):
            # Only the existence of a key matters on the other side: send each key once, and
            # only the keys the preserved side has when that side is the small one.
            left_keys = [a for a, _ in key_pairs]
            right_keys = [b for _, b in key_pairs]
            if swap:
                if not null_equal:
                    left = self._reduce(left, right, left_keys, right_keys)  # type: ignore[arg-type]
                left = self._distinct_keys(left, left_keys)  # type: ignore[arg-type]
            else:
                if not null_equal:
                    right = self._reduce(right, left, right_keys, left_keys)  # type: ignore[arg-type]
                right = self._distinct_keys(right, right_keys)  # type: ignore[arg-type]
        left, right, partitioning, why = self._place_join(join_type, left, right, key_pairs)  # type: ignore[arg-type]
        if null_equal and len(key_pairs) != len(pairs):
            raise NotDistributable("a join matching NULL keys on computed keys")
        exprs = [] if null_equal else [a == b for a, b in pairs]
        exprs += [condition] if condition is not None else []
        if not exprs and not null_equal:
            exprs = [Expr.literal(True)]
        built_left, built_right = left.build, right.build

        def build(ctx: SessionContext) -> DataFrame:
            lhs, rhs = built_left(ctx), built_right(ctx)
            on = list(exprs)
            if null_equal:
                # The Python API has no IS NOT DISTINCT FROM: parse it over both sides.
                both = lhs.join_on(rhs, Expr.literal(True), how="inner")
                on = [
                    both.parse_sql_expr(f"{_sql_column(a)} IS NOT DISTINCT FROM {_sql_column(b)}")
                    for a, b in key_pairs
                ] + on
            if swap:
                return rhs.join_on(lhs, *on, how=how)
            return lhs.join_on(rhs, *on, how=how)

        fused = joined(left, right, partitioning, why)
        if how in ("semi", "anti"):
            columns = right.columns if swap else left.columns
        else:
            columns = left.columns + right.columns
        keys = _join_keys(join_type, left, right, key_pairs)  # type: ignore[arg-type]
        # Size estimates, not bounds: a join's output is about as long as its longer side and
        # as wide as both; semi and anti joins keep at most the preserved side.
        lineage = None
        if how in ("semi", "anti"):
            size = right.size if swap else left.size
            lineage = right.lineage if swap else left.lineage
        elif left.size is None or right.size is None:
            size = None
        else:
            size = left.size + right.size
        if how == "inner" and condition is None and (size is None or size > self.threshold):
            # Where the estimate can change a later join's placement, look closer.
            estimate = self._many_to_one(left, right, key_pairs)  # type: ignore[arg-type]
            if estimate is not None:
                size, lineage = estimate
        return replace(fused, build=build, columns=columns, keys=keys, size=size, lineage=lineage)

    def _many_to_one(
        self, left: Part, right: Part, key_pairs: list[tuple[QualifiedColumn, QualifiedColumn]]
    ) -> tuple[int, Lineage] | None:
        """The size and lineage of an inner equi-join whose keys on one side are a key of that
        side's table (a foreign key join, say orders to customer): each row of the other side
        meets at most one row, kept as often as that side keeps its table's rows. The sum of
        both sides would count a filtered dimension's rows (a market segment's customers) as
        if they added rows, and shuffle a fact table against a join that shrank its partner."""
        if not key_pairs or left.lineage is None or right.lineage is None:
            return None
        estimates: list[tuple[int, Lineage]] = []
        for many, one, one_keys in (
            (left.lineage, right.lineage, [b for _, b in key_pairs]),
            (right.lineage, left.lineage, [a for a, _ in key_pairs]),
        ):
            names = dict(one.columns)
            if not all(key in names for key in one_keys):
                continue
            if not self.catalog.is_unique(one.table, sorted({names[k] for k in one_keys})):
                continue
            share = many.share() * one.share()
            width = many.width + one.width
            lineage = Lineage(many.table, many.columns, width, share=partial(float, share))
            rows = self.catalog.row_count(many.table) * share
            estimates.append((int(rows * width), lineage))
        return min(estimates, key=lambda e: e[0]) if estimates else None

    def _mark_join(self, node: LogicalPlan) -> Part:
        """A LeftMark join (``EXISTS`` or ``IN`` under ``OR``): every left row with a boolean
        ``mark``, true when the right side has its key. Placed like a semi join (the right
        side broadcast, or both shuffled on the key); built from the joins the DataFrame API
        has: the distinct left keys left-joined to the distinct right keys give each key's
        mark, under the right side's qualifier, and every left row finds its key's mark with a
        join that matches NULL keys too (their mark is false)."""
        variant = node.to_variant()
        pairs = [(wrap(a), wrap(b)) for a, b in variant.on()]
        key_pairs: list[tuple[QualifiedColumn, QualifiedColumn]] = []
        for a, b in pairs:
            left_key, right_key = as_column(a), as_column(b)
            if left_key is None or right_key is None:
                raise NotDistributable("mark joins on computed keys")
            key_pairs.append((left_key, right_key))
        if variant.filter() is not None or not pairs:
            raise NotDistributable("mark joins with a filter or without keys")
        if variant.null_equals_null():
            raise NotDistributable("mark joins matching NULL keys")
        qualifier = key_pairs[0][1][0]
        if qualifier is None:
            raise NotDistributable("a mark join whose right side has no qualifier")
        mark: QualifiedColumn = (qualifier, "mark")
        left_node, right_node = node.inputs()
        left, right = self.stages.part(left_node), self.stages.part(right_node)
        right = self._distinct_keys(right, [b for _, b in key_pairs])
        left, right, partitioning, why = self._place_join("LeftSemi", left, right, key_pairs)
        built_left, built_right = left.build, right.build
        left_columns = left.columns
        count = len(key_pairs)

        def build(ctx: SessionContext) -> DataFrame:
            lhs, rhs = built_left(ctx), built_right(ctx)
            left_keys = lhs.aggregate(
                [column_expr(a).alias(f"__k{i}") for i, (a, _) in enumerate(key_pairs)],
                [],
            )
            right_keys = rhs.aggregate(
                [column_expr(b).alias(f"__r{i}") for i, (_, b) in enumerate(key_pairs)],
                [],
            ).select(
                *[column_expr((None, f"__r{i}")) for i in range(count)],
                Expr.literal(True).alias("__m"),
            )
            marks = (
                left_keys.join_on(
                    right_keys,
                    *[
                        column_expr((None, f"__k{i}")) == column_expr((None, f"__r{i}"))
                        for i in range(count)
                    ],
                    how="left",
                )
                .select(
                    *[column_expr((None, f"__k{i}")) for i in range(count)],
                    f.coalesce(column_expr((None, "__m")), Expr.literal(False)).alias("mark"),
                )
                .alias(mark[0])  # type: ignore[arg-type]
            )
            both = lhs.join_on(marks, Expr.literal(True), how="inner")
            on = [
                both.parse_sql_expr(
                    f"{_sql_column(a)} IS NOT DISTINCT FROM {_sql_column((mark[0], f'__k{i}'))}"
                )
                for i, (a, _) in enumerate(key_pairs)
            ]
            joined_rows = lhs.join_on(marks, *on, how="inner")
            return joined_rows.select(*[column_expr(c) for c in (*left_columns, mark)])

        fused = joined(left, right, partitioning, why)
        return replace(
            fused,
            build=build,
            columns=(*left.columns, mark),
            keys=left.keys,
            size=left.size,
            lineage=left.lineage,
            ops=(*fused.ops[:-1], "mark join"),
        )

    def _reduce(
        self,
        other: Part,
        preserved: Part,
        other_keys: list[QualifiedColumn],
        preserved_keys: list[QualifiedColumn],
    ) -> Part:
        """The other side of a semi or anti join cut down to the rows whose key the preserved
        side has, when the preserved side is small and the other large (``orders EXISTS
        lineitem`` with orders filtered to a quarter): only the other side may go to every
        task, and shuffling it costs a scan's worth of output, while the preserved side's
        distinct keys, broadcast to the other side's stage, cut it to the matching keys where
        it is read. The preserved side is computed twice (once for its keys), so only a side
        read from files alone qualifies. Exact for semi and anti joins alike: a preserved row
        finds a match in the cut side exactly when it found one in the whole."""
        if (
            preserved.partitioning != FILES
            or preserved.inputs
            or preserved.size is None
            or preserved.size > self.threshold
            or other.partitioning == SINGLE
            or (other.partitioning == HASH and other.keys & set(other_keys))
            or (other.size is not None and other.size <= preserved.size * self.buckets)
        ):
            return other
        keys = self._distinct_keys(preserved, preserved_keys)
        if keys is preserved:
            return other
        keys = replace(keys, name=f"{preserved.name}'s keys")
        sent = self._broadcast(keys, other)
        built_other, built_keys = other.build, sent.build
        on = [
            column_expr(a) == column_expr(b)
            for a, b in zip(other_keys, preserved_keys, strict=True)
        ]

        def build(ctx: SessionContext) -> DataFrame:
            return built_other(ctx).join_on(built_keys(ctx), *on, how="semi")

        why = (
            f"keep the rows whose key {preserved.name} has: its distinct keys "
            f"(~{megabytes(preserved.size)} at most) are broadcast here"
        )
        fused = joined(other, sent, other.partitioning, why)
        self.stages.note("semi-join reduction")
        return replace(
            fused,
            build=build,
            columns=other.columns,
            keys=other.keys,
            size=preserved.size,
            name=other.name,
            lineage=other.lineage,
            ops=(*fused.ops[:-1], "semi join"),
        )

    def _distinct_keys(self, part: Part, keys: list[QualifiedColumn]) -> Part:
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
            for keys in join.to_variant().on():
                column = as_column(wrap(keys[position]))
                if column is None or schema.names.count(column[1]) != 1:
                    return False
                if schema.field(column[1]).nullable:
                    return False
        return True

    def _place_join(
        self,
        join_type: str,
        left: Part,
        right: Part,
        key_pairs: list[tuple[QualifiedColumn, QualifiedColumn]],
    ) -> tuple[Part, Part, str, str]:
        """Exchange the join's sides as its strategy needs; returns the sides to fuse, the
        joined partitioning and why."""
        if left.partitioning == SINGLE and right.partitioning == SINGLE:
            return left, right, SINGLE, "join in one task: both sides are gathered"
        may_right = join_type in _BROADCAST_RIGHT
        may_left = join_type in _BROADCAST_LEFT
        if left.partitioning == SINGLE and may_left:
            self.stages.note("broadcast join")
            return (
                self._broadcast(left, right),
                right,
                right.partitioning,
                "broadcast gathered left side",
            )
        if right.partitioning == SINGLE and may_right:
            self.stages.note("broadcast join")
            return (
                left,
                self._broadcast(right, left),
                left.partitioning,
                "broadcast gathered right side",
            )
        co_located = self._co_locate(left, right, key_pairs)
        if co_located is not None:
            split, (a, b) = co_located
            self.stages.note("co-located join")
            tables = " and ".join(dict.fromkeys(table for table, _ in split))
            why = (
                f"join in place on {pair(a, b)}: the files of {tables} hold disjoint ranges "
                f"of it, and each task reads the rows of its own ranges"
            )
            return left, right, FILES, why
        if SINGLE not in (left.partitioning, right.partitioning):
            for a, b in key_pairs:
                if {left.partitioning, right.partitioning} == {HASH} and (
                    a in left.keys and b in right.keys
                ):
                    self.stages.note("co-located join")
                    return (
                        left,
                        right,
                        HASH,
                        f"join in place: both sides are hash-partitioned on {pair(a, b)}",
                    )
            small = [
                (side.size or 0, position)  # known: worth broadcasting
                for side, other, position, allowed in (
                    (right, left, "right", may_right),
                    (left, right, "left", may_left),
                )
                if allowed and self._worth_broadcasting(side, other)
            ]
            if small:
                size, position = min(small)
                self.stages.note("broadcast join")
                side, other = (right, left) if position == "right" else (left, right)
                against = f", {other.name} ~{megabytes(other.size)}" if other.size else ""
                why = (
                    f"broadcast {side.name}: ~{megabytes(size)} ≤ threshold "
                    f"{megabytes(self.threshold)}{against}"
                )
                if position == "right":
                    return left, self._broadcast(right, left), left.partitioning, why
                return self._broadcast(left, right), right, right.partitioning, why
        if key_pairs:
            ranged = self._range_join(left, right, key_pairs)
            if ranged is not None:
                return ranged
            return self._shuffle_join(left, right, key_pairs)
        # No equi-join key: broadcast the smaller side the join type allows, or gather both.
        if may_left and may_right and _smaller(left, right):
            self.stages.note("broadcast join")
            why = f"broadcast {left.name}, the smaller side: the join has no equi-join key"
            return self._broadcast(left, right), right, right.partitioning, why
        if may_right and left.partitioning != SINGLE:
            self.stages.note("broadcast join")
            why = f"broadcast {right.name}: the join has no equi-join key"
            return left, self._broadcast(right, left), left.partitioning, why
        if may_left and right.partitioning != SINGLE:
            self.stages.note("broadcast join")
            why = f"broadcast {left.name}: the join has no equi-join key"
            return self._broadcast(left, right), right, right.partitioning, why
        self.stages.note("gathered join")
        return (
            self.stages.gather(left),
            self.stages.gather(right),
            SINGLE,
            "join in one task: no equi-join key and neither side may be broadcast",
        )

    def _co_locate(
        self,
        left: Part,
        right: Part,
        key_pairs: list[tuple[QualifiedColumn, QualifiedColumn]],
    ) -> tuple[tuple[tuple[str, str], ...], tuple[QualifiedColumn, QualifiedColumn]] | None:
        """Whether both sides, read from files, place their rows by the value of a join key
        (each table's files hold disjoint ranges of it, as TPC-H's orders and lineitem do of
        the order key): the join then runs where the files are read, each task taking the
        key ranges of its files of one table (the lead) and only the rows of those ranges
        of the others. Returns the tables and the column each is split on, the lead first,
        and the key pair; None when the sides are not both split so, or not compatibly."""
        if left.partitioning != FILES or right.partitioning != FILES:
            return None
        if not left.split or not right.split:
            return None
        for a, b in key_pairs:
            if a not in left.keys or b not in right.keys:
                continue
            split = merged_split(left.split, right.split)
            if split is None:
                continue
            pinned = [side for side in (left, right) if side.groups is not None]
            if any(side.split[0] != split[0] for side in pinned) or (
                len(pinned) == 2 and left.groups != right.groups
            ):
                continue  # a range exchange fixed a side's tasks to another lead's files
            return split, (a, b)
        return None

    def _range_join(
        self,
        left: Part,
        right: Part,
        key_pairs: list[tuple[QualifiedColumn, QualifiedColumn]],
    ) -> tuple[Part, Part, str, str] | None:
        """A join of a side read from files split on a key range (``lineitem`` on the order
        key) with a side that is not: instead of shuffling both on the key, only the other
        side moves, each row to the task that reads its key's range, and the file side is
        joined where it is read. Every value of the key is in exactly one task's ranges;
        NULL keys, which match nothing, go to the first task. Not when the other side is
        already hash-partitioned on its key and the larger: shuffling the file side costs
        less then."""
        for ranged, other, ranged_first in ((left, right, True), (right, left, False)):
            if ranged.partitioning != FILES or not ranged.split:
                continue
            found = next(
                ((a, b) for a, b in key_pairs if (a if ranged_first else b) in ranged.keys),
                None,
            )
            if found is None:
                continue
            other_key = found[1] if ranged_first else found[0]
            if (
                other.partitioning == HASH
                and other_key in other.keys
                and (other.size is None or ranged.size is None or other.size > ranged.size)
            ):
                continue
            if not pa.types.is_integer(self.stages.column_type(other, other_key)):
                continue
            # As many tasks as a shuffle would have, however few bytes the side reads.
            assert ranged.fact is not None
            groups = ranged.groups or tuple(self.catalog.file_groups(ranged.fact, self.buckets))
            if len(groups) < self.buckets:
                continue
            ranged = replace(ranged, groups=groups)
            table, column = ranged.split[0]
            bounds = tuple(self.catalog.group_bounds(table, column, list(groups)))
            output = OutputPartitioning("range", len(groups), bounds=bounds)
            moved = self.stages.exchange(
                other, FILES, output=output, hash_on=(other_key,), keys=frozenset({other_key})
            )
            moved = replace(moved, why=())
            self.stages.note("range join")
            tables = " and ".join(dict.fromkeys(t for t, _ in ranged.split))
            why = (
                f"join on {pair(*found)} where "
                f"the files of {tables} are read: {other.name} is sent by key range, each row "
                f"to the task that reads its range"
            )
            if ranged_first:
                return ranged, moved, FILES, why
            return moved, ranged, FILES, why
        return None

    def _worth_broadcasting(self, side: Part, other: Part) -> bool:
        """A side is broadcast when it is known to fit the threshold and sending it to every
        task costs less than shuffling both sides once: size x (tasks - 1) < the other side."""
        if side.size is None or side.size > self.threshold:
            return False
        return other.size is None or side.size * (self.buckets - 1) < other.size

    def _shuffle_join(
        self,
        left: Part,
        right: Part,
        key_pairs: list[tuple[QualifiedColumn, QualifiedColumn]],
    ) -> tuple[Part, Part, str, str]:
        # Prefer the key a side is already partitioned on: that side then stays in place.
        a, b = max(key_pairs, key=lambda p: (p[0] in left.keys) + (p[1] in right.keys))
        sides = []
        for side, key in ((left, a), (right, b)):
            if side.partitioning == HASH and key in side.keys:
                sides.append(side)
            else:
                moved = self.stages.exchange(side, HASH, hash_on=(key,), keys=frozenset({key}))
                sides.append(replace(moved, why=()))  # the join's why says it all
        self.stages.note("shuffle join")
        sizes = ", ".join(
            f"{side.name} ~{megabytes(side.size)}" if side.size is not None else f"{side.name}"
            for side in (left, right)
        )
        why = (
            f"shuffle join on {pair(a, b)}: no side the join type lets go to every task is "
            f"under the broadcast threshold {megabytes(self.threshold)} and cheaper to send "
            f"to every task than to shuffle ({sizes})"
        )
        return sides[0], sides[1], HASH, why

    def _broadcast(self, part: Part, other: Part) -> Part:
        """``part`` sent to every task of ``other``'s stage, or read by each from its files."""
        if self._read_locally(part, other):
            assert part.fact is not None
            files = len(self.catalog.tables[part.fact].files)
            return replace(
                part,
                partitioning=REPLICATED,
                fact=None,
                fact_bytes=0,
                local=(*part.local, (part.fact, part.fact_bytes)),
                keys=frozenset(),
                split=(),
                groups=None,
                why=(
                    *part.why,
                    f"read {part.fact}'s {plural(files, 'file')} in every task: "
                    f"~{megabytes(part.fact_bytes)} ≤ {megabytes(LOCAL_SCAN_BYTES)}",
                ),
            )
        return self.stages.exchange(part, REPLICATED, output=BROADCAST)

    def _read_locally(self, part: Part, other: Part) -> bool:
        """Whether every task can read the broadcast ``part`` from its table's files (not when
        ``other`` splits the same table over its tasks)."""
        return (
            part.partitioning == FILES
            and part.fact is not None
            and part.fact != other.fact
            and part.fact not in {table for table, _ in other.split}
            and not part.inputs
            and set(part.ops) <= _SCAN_OPS
            and part.fact_bytes <= min(LOCAL_SCAN_BYTES, self.min_task_bytes)
        )


def _join_keys(
    join_type: str,
    left: Part,
    right: Part,
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


def _sql_column(column: QualifiedColumn | None) -> str:
    assert column is not None
    qualifier, name = column
    quoted = quote_identifier(name)
    return f"{quote_identifier(qualifier)}.{quoted}" if qualifier else quoted


def _smaller(left: Part, right: Part) -> bool:
    """Whether the left side is known to be smaller than the right one."""
    return left.size is not None and (right.size is None or left.size < right.size)
