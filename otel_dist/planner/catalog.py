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
from pathlib import Path

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
    def column_bytes(self) -> dict[str, int]:
        """Uncompressed bytes per column over all files, from the parquet footers."""
        totals: dict[str, int] = {}
        for path in self.files:
            metadata = pq.read_metadata(path)
            for group in range(metadata.num_row_groups):
                row_group = metadata.row_group(group)
                for index in range(row_group.num_columns):
                    chunk = row_group.column(index)
                    name = chunk.path_in_schema
                    totals[name] = totals.get(name, 0) + chunk.total_uncompressed_size
        return totals

    @cached_property
    def rows(self) -> int:
        """Rows over all files, from the parquet footers."""
        return sum(pq.read_metadata(path).num_rows for path in self.files)


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
