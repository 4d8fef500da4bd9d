"""The data folder as a catalog: every sub-folder is a table of parquet files named after it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
