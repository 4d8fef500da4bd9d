"""What the TPC-H and TPC-DS generators share: a scale factor's spelling, the progress bar, and
writing into a staging folder that becomes the data folder only once complete (so that an
interrupted run never leaves a folder that looks generated)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


def format_scale(scale: float) -> str:
    """A scale factor exactly and compactly: 0.1 gives ``0.1``, 1.0 gives ``1``."""
    value = float(scale)
    return str(int(value)) if value.is_integer() else repr(value)


def generation_progress(show: bool) -> Progress:
    """The progress bar of a generator, on stderr (nothing drawn when ``show`` is false)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show,
    )


@contextmanager
def staged(out_dir: Path, is_complete: Callable[[Path], bool]) -> Iterator[Path]:
    """A fresh staging folder beside ``out_dir``; when the block succeeds it is renamed to
    ``out_dir`` (an empty one is replaced; one another process completed meanwhile is kept),
    and it is removed whatever happens."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        try:
            staging.rename(out_dir)
        except OSError as exc:
            if not is_complete(out_dir):
                raise RuntimeError(f"could not move generated data into {out_dir}: {exc}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
