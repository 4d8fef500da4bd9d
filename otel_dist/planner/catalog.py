"""The data folder as a catalog: every sub-folder is a table of parquet files named after it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow.parquet as pq
from datafusion import SessionContext

from otel_dist.session import new_session


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


@dataclass(frozen=True)
class Catalog:
    """Tables found in a data folder."""

    root: str
    tables: dict[str, TableFiles]

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
