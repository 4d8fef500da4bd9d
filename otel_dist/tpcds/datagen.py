"""Generate TPC-DS data as Parquet files with DuckDB's ``tpcds`` extension (dsdgen).

The extension comes from PyPI as ``duckdb-extension-tpcds`` (the ``tpcds`` extra), whose
version equals the ``duckdb`` version it loads into; it is loaded from the package's own file,
never downloaded. :func:`generate` writes one sub-folder per table into a temporary sibling
folder, tables of at least ``SPLIT_ROWS`` rows in several files, and renames it into place
only once every table is complete. A ``.tpcds-scale`` file records the scale factor, so a
folder holding another scale is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Final

from otel_dist.datafolders import format_scale, generation_progress, staged
from otel_dist.tpcds import TABLES

__all__ = ["SCALE_FILE", "existing_scale", "extension_path", "generate"]

SCALE_FILE: Final = ".tpcds-scale"
"""The file in a generated folder that holds its scale factor."""

SPLIT_ROWS: Final = 50_000
"""Tables with at least this many rows are written as several files."""

_INSTALL_HINT: Final = "install the tpcds extra: pip install 'otel_dist[tpcds]'"


def extension_path() -> str:
    """The ``tpcds.duckdb_extension`` file inside ``duckdb-extension-tpcds`` for the installed
    ``duckdb``; raises :class:`RuntimeError` naming what is missing or mismatched."""
    try:
        import duckdb
        import duckdb_extension_tpcds
    except ImportError as exc:
        raise RuntimeError(f"TPC-DS generation needs {exc.name}: {_INSTALL_HINT}") from None
    version = duckdb.__version__
    root = Path(duckdb_extension_tpcds.__file__).parent / "extensions"
    path = root / f"v{version}" / "tpcds.duckdb_extension"
    if not path.is_file():
        found = sorted(p.name for p in root.glob("v*")) if root.is_dir() else []
        raise RuntimeError(
            f"duckdb-extension-tpcds has no extension for duckdb {version} (it has "
            f"{', '.join(found) or 'none'}): install equal versions, e.g. "
            f"pip install duckdb=={version} duckdb-extension-tpcds=={version}"
        )
    return str(path)


def generate(
    scale: float, out_dir: Path, *, parts: int | None = None, show_progress: bool = True
) -> Path:
    """Generate TPC-DS Parquet data at ``scale`` into ``out_dir`` and return ``out_dir``.

    Tables of at least ``SPLIT_ROWS`` rows get ``parts`` files (default 4 below scale 1, 8
    otherwise), the others one. A folder that already holds this scale is left as it is.

    Raises:
        ValueError: if ``scale`` or ``parts`` is not positive.
        RuntimeError: if DuckDB or its extension is missing, or ``out_dir`` holds anything
            but complete TPC-DS data at this scale.
    """
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale factor must be a positive number, got {scale!r}")
    if parts is None:
        parts = 4 if scale < 1 else 8
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts!r}")
    out_dir = Path(out_dir)
    if _is_complete(out_dir):
        found = existing_scale(out_dir)
        if found is None or not math.isclose(found, scale, rel_tol=1e-9):
            held = f"SF {format_scale(found)}" if found is not None else "data of unknown scale"
            raise RuntimeError(
                f"{out_dir} already holds TPC-DS {held}, not SF {format_scale(scale)}: "
                "remove it or choose another folder"
            )
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RuntimeError(
            f"{out_dir} exists but does not hold complete TPC-DS data; remove it and retry"
        )
    extension = extension_path()
    with staged(out_dir, _is_complete) as staging:
        _generate_tables(extension, scale, parts, staging, show_progress=show_progress)
        (staging / SCALE_FILE).write_text(f"{format_scale(scale)}\n", encoding="utf-8")
    return out_dir


def _generate_tables(
    extension: str, scale: float, parts: int, staging: Path, *, show_progress: bool
) -> None:
    """Run dsdgen in an in-memory DuckDB, then write each table, advancing a progress bar."""
    import duckdb

    progress = generation_progress(show_progress)
    label = f"TPC-DS SF {format_scale(scale)}"
    connection = duckdb.connect(":memory:")
    try:
        connection.execute(f"LOAD '{_sql_string(extension)}'")
        with progress:
            task = progress.add_task(label, total=len(TABLES) + 1)
            progress.update(task, description=f"{label}: dsdgen")
            connection.execute(f"CALL dsdgen(sf={float(scale)!r})")
            progress.advance(task)
            for table in TABLES:
                progress.update(task, description=f"{label}: {table}")
                _write_table(connection, table, parts, staging)
                progress.advance(task)
            progress.update(task, description=f"{label}: done")
    except duckdb.Error as exc:
        raise RuntimeError(f"TPC-DS generation failed: {str(exc).splitlines()[0]}") from None
    finally:
        connection.close()


def _write_table(connection: object, table: str, parts: int, staging: Path) -> None:
    """One table as ``<table>/<table>.<n>.parquet``, split by row ranges when large."""
    folder = staging / table
    folder.mkdir()
    rows = connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[attr-defined]
    files = parts if rows >= SPLIT_ROWS else 1
    step = -(-rows // files) if rows else 1
    for index in range(files):
        target = _sql_string(str(folder / f"{table}.{index + 1}.parquet"))
        where = f"WHERE rowid >= {index * step} AND rowid < {(index + 1) * step}"
        connection.execute(  # type: ignore[attr-defined]
            f"COPY (SELECT * FROM {table} {where if files > 1 else ''}) "
            f"TO '{target}' (FORMAT parquet)"
        )


def existing_scale(folder: Path) -> float | None:
    """The scale factor recorded in ``folder``, None when there is none."""
    try:
        return float((Path(folder) / SCALE_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _is_complete(folder: Path) -> bool:
    return all(any((folder / table).glob("*.parquet")) for table in TABLES)


def _sql_string(text: str) -> str:
    return text.replace("'", "''")
