"""Parts: relations computed per task of a stage that is not cut yet, and how their rows are
spread over those tasks. The stage builder (``stages.py``) makes one per plan node; cutting a
part makes a stage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pyarrow as pa
from datafusion import DataFrame, SessionContext

from otel_dist.planner.exprs import NotDistributable, QualifiedColumn
from otel_dist.planner.model import Stage
from otel_dist.protocol import OutputPartitioning

GATHER = OutputPartitioning("single")
BROADCAST = OutputPartitioning("broadcast")
ORDERING = {"sort", "top-k", "merge"}

# How a part's rows are spread over the tasks of its (future) stage.
FILES = "files"  # the fact table's file groups, one per task
HASH = "hash"  # hash buckets of exchanged inputs, one per task
SINGLE = "single"  # one task holds every row
REPLICATED = "replicated"  # every task holds every row (a broadcast input)


@dataclass(frozen=True)
class Input:
    """An upstream stage read by the stage being built, under a name unique in that stage."""

    name: str
    stage: Stage
    row_ids: bool
    schema: pa.Schema


Build = Callable[[SessionContext], DataFrame]

# Operations after which each row is still one row of the relation under them.
_ROW_KEEPING = frozenset({"filter", "project", "sort", "top-k", "merge", "limit", "window"})


@dataclass(frozen=True)
class Lineage:
    """Where a part's rows come from, for estimating joins: each row is one distinct row of
    ``table`` (filters and many-to-one joins keep that true), about ``share()`` of its rows,
    each about ``width`` bytes wide. ``columns`` maps the part's columns that are the table's
    own to their names there. ``share`` is lazy: it samples the table only when asked."""

    table: str
    columns: tuple[tuple[QualifiedColumn, str], ...]
    width: float
    share: Callable[[], float]

    def renamed(self, mapping: dict[QualifiedColumn, QualifiedColumn]) -> Lineage:
        """The lineage of a projection: ``mapping`` gives each passed column its new name."""
        columns = tuple(
            (mapping[column], name) for column, name in self.columns if column in mapping
        )
        return replace(self, columns=columns)


@dataclass(frozen=True)
class Part:
    """A relation computed by each task of a stage that is not cut yet."""

    build: Build
    columns: tuple[QualifiedColumn, ...]
    partitioning: str
    name: str
    keys: frozenset[QualifiedColumn] = frozenset()  # columns whose hash alone places a row
    fact: str | None = None  # the table scanned from files (FILES)
    fact_bytes: int = 0  # estimated bytes of the fact table's columns the stage reads
    local: tuple[tuple[str, int], ...] = ()  # small tables every task reads whole, with bytes
    inputs: tuple[Input, ...] = ()
    size: int | None = None  # upper bound of the bytes, None when unknown
    ops: tuple[str, ...] = ()
    why: tuple[str, ...] = ()
    ordered: bool = False  # the rows come out sorted (a sort, merge or top-k is on top)
    lineage: Lineage | None = None  # the base table each row is one row of, when known
    # FILES parts whose ``keys`` place rows by value: the tables read from files and the
    # column each is split on, the first (``fact``) by its file groups and the others by the
    # key ranges of those groups. See ``JoinPlanner._co_locate``.
    split: tuple[tuple[str, str], ...] = ()
    # The fact's file groups, fixed once an input was sent to them by key range.
    groups: tuple[tuple[str, ...], ...] | None = None

    def then(
        self,
        build: Build,
        op: str,
        *,
        columns: tuple[QualifiedColumn, ...] | None = None,
        keys: frozenset[QualifiedColumn] | None = None,
        size: int | None = -1,  # -1 keeps the current size
        name: str | None = None,
        lineage: Lineage | None = None,
    ) -> Part:
        """The part with ``op`` applied. Its lineage is kept (or ``lineage``, given) when
        ``op`` keeps each row one row of the relation under it, and dropped otherwise."""
        if lineage is None and op in _ROW_KEEPING and self.lineage is not None:
            kept = set(self.columns if columns is None else columns)
            lineage = self.lineage.renamed({c: c for c in kept})
        return replace(
            self,
            build=build,
            columns=self.columns if columns is None else columns,
            keys=self.keys if keys is None else keys,
            size=self.size if size == -1 else size,
            name=self.name if name is None else name,
            lineage=lineage if op in _ROW_KEEPING else None,
            ops=(*self.ops, op),
            ordered=op in ORDERING or (self.ordered and op in ("limit", "project")),
        )


def joined(left: Part, right: Part, partitioning: str, why: str) -> Part:
    """The parts of both join sides fused into one stage (inputs, fact and history). Both
    may read files only when they are split on a common key range (a co-located join)."""
    facts = {p.fact for p in (left, right) if p.fact is not None}
    split = left.split or right.split
    if left.groups and right.groups and left.groups != right.groups:
        raise NotDistributable("two file splits pinned by range exchanges in one stage")
    if left.fact is not None and right.fact is not None:
        both = merged_split(left.split, right.split) if left.split and right.split else None
        if both is None and len(facts) > 1:
            raise NotDistributable("two tables scanned from files in one stage")
        split = both or split
        facts = {split[0][0]} if split else facts
    local_bytes: dict[str, int] = {}
    for table, scan_bytes in (*left.local, *right.local):  # a table under two aliases once
        local_bytes[table] = max(scan_bytes, local_bytes.get(table, 0))
    local = tuple(local_bytes.items())
    if (facts | {table for table, _ in split}) & set(local_bytes):
        raise NotDistributable("a table both split over the tasks and read whole by each")
    return Part(
        build=left.build,
        columns=left.columns + right.columns,
        partitioning=partitioning,
        name=f"{left.name} ⋈ {right.name}",
        fact=next(iter(facts), None),
        fact_bytes=left.fact_bytes + right.fact_bytes,
        local=local,
        inputs=left.inputs + right.inputs,
        ops=(*left.ops, *right.ops, "join"),
        why=(*left.why, *right.why, why),
        split=split,
        groups=left.groups or right.groups,
    )


def merged_split(
    left: tuple[tuple[str, str], ...], right: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...] | None:
    """The tables of two co-located sides and their split columns: under the left side's
    lead when both share it or the right side is one table, else under the right side's
    when the left is one table; None when a table would be split on two columns."""
    if left[0] == right[0] or len(right) == 1:
        merged = left + tuple(item for item in right if item not in left)
    elif len(left) == 1:
        merged = right + tuple(item for item in left if item not in right)
    else:
        return None
    tables = [table for table, _ in merged]
    return merged if len(set(tables)) == len(tables) else None


def label(ops: tuple[str, ...]) -> str:
    """A stage's kind from the operations fused into it, e.g. 'scan + join + partial
    aggregate'; projections and filters are implied."""
    seen: list[str] = []
    for op in ops:
        if op not in ("project", "filter") and op not in seen:
            seen.append(op)
    return " + ".join(seen) or "exchange"


def column_name(column: QualifiedColumn) -> str:
    qualifier, name = column
    return f"{qualifier}.{name}" if qualifier else name


def pair(a: QualifiedColumn, b: QualifiedColumn) -> str:
    return f"{column_name(a)} = {column_name(b)}"


def plural(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def megabytes(size: int) -> str:
    if size < 1_000_000:
        return f"{size / 1e3:.1f} kB"
    return f"{size / 1e6:.1f} MB"


def register_empty(ctx: SessionContext, name: str, schema: pa.Schema) -> None:
    ctx.register_record_batches(name, [[pa.RecordBatch.from_pylist([], schema=schema)]])
