"""The data folder as a catalog: every sub-folder is a table of parquet files named after it.

Besides the files and their column sizes (parquet footers), the catalog estimates what share
of a table's rows a filter keeps, from a sample: the first ``SAMPLE_ROWS`` rows of up to
``SAMPLE_FILES`` of its files, spread over the file list. The planner asks only for tables too
large to broadcast as they are (a filter may make them small enough); an estimate is cached
per table and filter.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datafusion import Expr, SessionContext

from otel_dist.session import new_session

log = logging.getLogger(__name__)

SAMPLE_ROWS = 20_000
SAMPLE_FILES = 4
MAX_CACHED_ESTIMATES = 1000


class CatalogError(ValueError):
    """The data folder cannot serve as a catalog."""


@dataclass(frozen=True)
class TableFiles:
    """One table: its folder and its parquet files with their sizes, in a stable order."""

    name: str
    folder: str
    files: tuple[str, ...]
    sizes: tuple[int, ...]

    @cached_property
    def footers(self) -> tuple[pq.FileMetaData, ...]:
        """Each file's parquet footer, read once: sizes, row counts and key ranges come
        from them."""
        return tuple(pq.read_metadata(path) for path in self.files)

    @cached_property
    def column_bytes(self) -> dict[str, int]:
        """Uncompressed bytes per column over all files, from the parquet footers."""
        totals: dict[str, int] = {}
        for metadata in self.footers:
            for group in range(metadata.num_row_groups):
                row_group = metadata.row_group(group)
                for index in range(row_group.num_columns):
                    chunk = row_group.column(index)
                    name = chunk.path_in_schema
                    totals[name] = totals.get(name, 0) + chunk.total_uncompressed_size
        return totals

    @cached_property
    def key_ranges(self) -> dict[str, tuple[tuple[int, int], ...]]:
        """Per integer column without NULLs, each file's smallest and largest value (in file
        order), from the parquet footers; only columns whose files hold disjoint ranges,
        such as a table written in key order and split by rows (TPC-H's orders and
        lineitem on the order key). Empty for a table of one file."""
        if len(self.files) < 2:
            return {}
        spans: dict[str, list[tuple[int, int] | None]] = {}
        for metadata in self.footers:
            schema = metadata.schema.to_arrow_schema()
            seen: dict[str, tuple[int, int] | None] = {}
            for group in range(metadata.num_row_groups):
                row_group = metadata.row_group(group)
                for index in range(row_group.num_columns):
                    name = row_group.column(index).path_in_schema
                    if name not in schema.names or not pa.types.is_integer(schema.field(name).type):
                        continue
                    stats = row_group.column(index).statistics
                    usable = (
                        stats is not None
                        and stats.has_min_max
                        and stats.null_count == 0
                        and isinstance(stats.min, int)
                        and isinstance(stats.max, int)
                    )
                    previous = seen.get(name, (stats.min, stats.max) if usable else None)
                    if not usable or previous is None:
                        seen[name] = None
                    else:
                        seen[name] = (min(previous[0], stats.min), max(previous[1], stats.max))
            for name, span in seen.items():
                spans.setdefault(name, []).append(span)
        disjoint: dict[str, tuple[tuple[int, int], ...]] = {}
        for name, per_file in spans.items():
            known = [span for span in per_file if span is not None]
            if len(known) != len(self.files):
                continue
            if all(a[1] < b[0] for a, b in pairwise(sorted(known))):
                disjoint[name] = tuple(known)
        return disjoint

    @cached_property
    def rows(self) -> int:
        """Rows over all files, from the parquet footers."""
        return sum(metadata.num_rows for metadata in self.footers)


@dataclass(frozen=True)
class Catalog:
    """Tables found in a data folder."""

    root: str
    tables: dict[str, TableFiles]
    _selectivity: dict[tuple[str, str], float] = field(
        default_factory=dict, compare=False, repr=False
    )
    _unique: dict[tuple[str, tuple[str, ...]], bool] = field(
        default_factory=dict, compare=False, repr=False
    )

    @staticmethod
    def from_folder(folder: str | os.PathLike[str]) -> Catalog:
        root = Path(folder).expanduser().resolve()
        if not root.exists():
            raise CatalogError(f"data folder {root} does not exist")
        if not root.is_dir():
            raise CatalogError(f"data folder {root} is not a folder")
        tables: dict[str, TableFiles] = {}
        for child in sorted(root.iterdir()):
            if not child.is_dir() or child.name.startswith((".", "_")):
                continue
            files = sorted(str(p) for p in child.rglob("*.parquet") if p.is_file())
            if files:
                sizes = tuple(os.path.getsize(f) for f in files)
                tables[child.name] = TableFiles(child.name, str(child), tuple(files), sizes)
        if not tables:
            raise CatalogError(f"data folder {root} has no table folders with parquet files")
        return Catalog(str(root), tables)

    def session(self, target_partitions: int = 2) -> SessionContext:
        """A DataFusion session with every table registered over its whole folder."""
        ctx = new_session(target_partitions)
        for table in self.tables.values():
            ctx.register_parquet(table.name, table.folder)
        return ctx

    def column_bytes(self, table: str, columns: list[str]) -> int:
        """Estimated bytes of ``columns`` of ``table`` (all of them when empty), from parquet
        metadata: an upper bound of what a scan of them sends, before any filter."""
        sizes = self.tables[table].column_bytes
        wanted = columns or list(sizes)
        return sum(sizes.get(name, 0) for name in wanted)

    def range_column(self, table: str, columns: list[str]) -> str | None:
        """The one column of ``columns`` whose values ``table``'s files hold in disjoint
        ranges (see ``TableFiles.key_ranges``), or None (none, or more than one)."""
        ranged = [c for c in columns if c in self.tables[table].key_ranges]
        return ranged[0] if len(ranged) == 1 else None

    def key_ranges(self, table: str, column: str) -> tuple[tuple[int, int], ...]:
        """Each file's smallest and largest value of ``column``, in file order."""
        return self.tables[table].key_ranges[column]

    def group_bounds(
        self, table: str, column: str, groups: list[tuple[str, ...]]
    ) -> list[tuple[tuple[int | None, int | None], ...]]:
        """The key ranges of ``column`` each file group of ``table`` owns, as ``[low, high)``
        intervals (None: unbounded): every file owns the values from its smallest to the
        next file's smallest, so the groups' ranges cover every value exactly once."""
        files = self.tables[table].files
        spans = dict(zip(files, self.key_ranges(table, column), strict=True))
        lows = sorted(low for low, _ in spans.values())
        owned: dict[str, tuple[int | None, int | None]] = {}
        for path, (low, _) in spans.items():
            position = lows.index(low)
            owned[path] = (
                None if position == 0 else low,
                None if position == len(lows) - 1 else lows[position + 1],
            )
        bounds = []
        for group in groups:
            merged: list[tuple[int | None, int | None]] = []
            ordered: list[tuple[int | None, int | None]] = sorted(
                (owned[path] for path in group), key=lambda b: -(2**63) if b[0] is None else b[0]
            )
            for start, end in ordered:
                if merged and merged[-1][1] == start:
                    merged[-1] = (merged[-1][0], end)
                else:
                    merged.append((start, end))
            bounds.append(tuple(merged))
        return bounds

    def files_within(
        self, table: str, column: str, bounds: tuple[tuple[int | None, int | None], ...]
    ) -> tuple[str, ...]:
        """The files of ``table`` that may hold a value of ``column`` within ``bounds``
        (at least one, so that the table exists in the task even when none does)."""
        files = self.tables[table].files
        spans = self.tables[table].key_ranges.get(column)
        if spans is None:
            return files
        chosen = tuple(
            path
            for path, (smallest, largest) in zip(files, spans, strict=True)
            if any(
                (low is None or largest >= low) and (high is None or smallest < high)
                for low, high in bounds
            )
        )
        return chosen or files[:1]

    def row_count(self, table: str) -> int:
        """Rows of ``table``, from parquet metadata."""
        return self.tables[table].rows

    def _samples(self, table: str) -> list[str]:
        """The files a sample of ``table`` reads: up to ``SAMPLE_FILES``, spread over its list."""
        files = self.tables[table].files
        return list(files[:: max(1, len(files) // SAMPLE_FILES)][:SAMPLE_FILES])

    def is_unique(self, table: str, columns: list[str]) -> bool:
        """Whether ``columns`` look like a key of ``table``: no value repeats in a sample of
        it (False when the sample cannot be taken). Only an estimate's input: a join over a
        key is estimated as many-to-one."""
        key = (table, tuple(sorted(columns)))
        cached = self._unique.get(key)
        if cached is not None:
            return cached
        try:
            ctx = new_session(1)
            samples = [
                ctx.read_parquet(path).select(*key[1]).limit(SAMPLE_ROWS)
                for path in self._samples(table)
            ]
            sample = samples[0]
            for other in samples[1:]:
                sample = sample.union(other)
            unique = sample.count() == sample.distinct().count() > 0
        except Exception as error:  # an estimate only: assume nothing
            log.debug("sampling %s for a key failed: %s", table, error)
            return False
        if len(self._unique) >= MAX_CACHED_ESTIMATES:
            self._unique.clear()
        self._unique[key] = unique
        return unique

    def filter_selectivity(self, table: str, predicates: list[Expr]) -> float:
        """The share of ``table``'s rows that pass every predicate, in a sample of its files
        (1.0 when the sample cannot be taken)."""
        key = (table, " AND ".join(sorted(str(p) for p in predicates)))
        cached = self._selectivity.get(key)
        if cached is not None:
            return cached
        passed = total = 0
        try:
            ctx = new_session(1)
            for path in self._samples(table):
                ctx.deregister_table(table)
                ctx.register_parquet(table, path)
                sample = ctx.table(table).limit(SAMPLE_ROWS)
                total += sample.count()
                filtered = sample
                for predicate in predicates:
                    filtered = filtered.filter(predicate)
                passed += filtered.count()
        except Exception as error:  # an estimate only: plan as if nothing were filtered
            log.debug("sampling %s failed: %s", table, error)
            return 1.0
        selectivity = passed / total if total else 1.0
        if len(self._selectivity) >= MAX_CACHED_ESTIMATES:
            self._selectivity.clear()
        self._selectivity[key] = selectivity
        return selectivity

    def file_groups(self, table: str, groups: int) -> list[tuple[str, ...]]:
        """Split a table's files into at most ``groups`` groups of balanced total size."""
        files = self.tables[table]
        count = max(1, min(groups, len(files.files)))
        buckets: list[list[int]] = [[] for _ in range(count)]
        loads = [0] * count
        for index in sorted(range(len(files.files)), key=lambda i: -files.sizes[i]):
            target = loads.index(min(loads))
            buckets[target].append(index)
            loads[target] += files.sizes[index]
        return [tuple(files.files[i] for i in sorted(bucket)) for bucket in buckets]
