"""Generate TPC-H data as Parquet files with the ``tpchgen-cli`` executable.

:func:`generate` writes one sub-folder per table (``lineitem/lineitem.1.parquet``, ...) into
a temporary sibling folder and renames it into place only once every table is complete, so a
half-written folder never looks complete. :func:`default_cache_dir` gives the conventional
location for a given scale factor.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from otel_dist.datafolders import format_scale, generation_progress, staged
from otel_dist.settings import read
from otel_dist.tpch import TABLES

__all__ = ["default_cache_dir", "generate"]

CACHE_DIR_ENV: Final = "OTEL_DIST_CACHE_DIR"
"""Environment variable that overrides the cache root used by :func:`default_cache_dir`."""

TIMEOUT_SECONDS: Final = 30 * 60
"""Longest wait for one ``tpchgen-cli`` run (one table)."""

_EXECUTABLE: Final = "tpchgen-cli"


def default_cache_dir(scale: float) -> Path:
    """Return the default data folder for ``scale``: ``<cache root>/tpch-sf<scale>``.

    The cache root is ``$OTEL_DIST_CACHE_DIR`` when set, else ``~/.cache/otel_dist``. The scale
    is formatted compactly, so 0.1 gives ``tpch-sf0.1`` and 1 gives ``tpch-sf1``.
    """
    root_env = read(CACHE_DIR_ENV)
    root = Path(root_env).expanduser() if root_env else Path.home() / ".cache" / "otel_dist"
    return root / f"tpch-sf{format_scale(scale)}"


def generate(
    scale: float,
    out_dir: Path,
    *,
    parts: int | None = None,
    show_progress: bool = True,
) -> Path:
    """Generate TPC-H Parquet data at ``scale`` into ``out_dir`` and return ``out_dir``.

    Each table gets its own sub-folder holding ``parts`` files (small tables may get fewer).
    ``parts`` defaults to 4 below scale 1 and 8 otherwise. If ``out_dir`` already holds all
    8 table folders with Parquet files, nothing is generated.

    Raises:
        ValueError: if ``scale`` or ``parts`` is not positive.
        RuntimeError: if ``tpchgen-cli`` is missing, fails, or times out, or if ``out_dir``
            exists, is not empty and is not complete TPC-H data.
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
        if found is not None and not math.isclose(found, scale, rel_tol=0.05):
            raise RuntimeError(
                f"{out_dir} already holds TPC-H SF {format_scale(found)}, not SF "
                f"{format_scale(scale)}: remove it or choose another folder"
            )
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RuntimeError(
            f"{out_dir} exists but does not hold complete TPC-H data; remove it and retry"
        )

    executable = _find_executable()
    with staged(out_dir, _is_complete) as staging:
        _generate_tables(executable, scale, parts, staging, show_progress=show_progress)
        if not _is_complete(staging):
            raise RuntimeError(f"tpchgen-cli finished but left incomplete data in {staging}")
    return out_dir


def _generate_tables(
    executable: str, scale: float, parts: int, staging: Path, *, show_progress: bool
) -> None:
    """Run ``tpchgen-cli`` once per table into ``staging``, advancing a progress bar."""
    progress = generation_progress(show_progress)
    label = f"TPC-H SF {format_scale(scale)}"
    with progress:
        task = progress.add_task(label, total=len(TABLES))
        for table in TABLES:
            progress.update(task, description=f"{label}: {table}")
            _run_tpchgen(executable, scale, parts, table, staging)
            progress.advance(task)
        progress.update(task, description=f"{label}: done")


def _run_tpchgen(executable: str, scale: float, parts: int, table: str, staging: Path) -> None:
    """Generate one table with ``tpchgen-cli``; raise :class:`RuntimeError` on any failure."""
    command = [
        executable,
        "parquet",
        "-s",
        format_scale(scale),
        f"--parts={parts}",
        f"--tables={table}",
        f"--output-dir={staging}",
    ]
    # stderr goes to a file rather than a pipe, so a stray child process holding the pipe open
    # can never make the wait outlast the timeout.
    with tempfile.TemporaryFile() as stderr_file:
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr_file,
                timeout=TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"tpchgen-cli timed out after {TIMEOUT_SECONDS} s generating table {table}"
            ) from exc
        except OSError as exc:
            raise RuntimeError(f"could not run tpchgen-cli ({executable}): {exc}") from exc
        stderr_file.seek(0)
        stderr = stderr_file.read().decode("utf-8", errors="replace")
    if result.returncode != 0:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        detail = f": {lines[-1]}" if lines else ""
        raise RuntimeError(
            f"tpchgen-cli exited with status {result.returncode} generating table {table}{detail}"
        )


def _find_executable() -> str:
    """Locate ``tpchgen-cli`` on ``PATH``, else next to the running Python interpreter."""
    found = shutil.which(_EXECUTABLE)
    if found is None:
        found = shutil.which(_EXECUTABLE, path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError(
            "tpchgen-cli not found on PATH or next to the Python interpreter; "
            "install it with 'pip install tpchgen-cli'"
        )
    return found


def existing_scale(folder: Path) -> float | None:
    """The scale factor of the TPC-H data in ``folder``, from its supplier count (10,000 per
    unit of scale), read from the Parquet footers; None when it cannot be read."""
    try:
        import pyarrow.parquet as pq

        rows = sum(
            pq.ParquetFile(f).metadata.num_rows for f in (folder / "supplier").glob("*.parquet")
        )
    except Exception:
        return None
    return round(rows / 10_000, 6) if rows else None


def _is_complete(folder: Path) -> bool:
    """Return whether ``folder`` holds a sub-folder with Parquet files for every table."""
    return all(any((folder / table).glob("*.parquet")) for table in TABLES)
