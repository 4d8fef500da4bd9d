"""Where a query's result goes: a file written batch by batch, or the terminal, capped.

Files (``--output``) are written as the batches arrive, so the client holds one batch at a
time whatever the result's size: ``.parquet``, ``.csv``, and JSON Lines for ``.jsonl``,
``.ndjson`` and ``.json`` (one JSON object per row and line, as ``pyarrow.json.read_json``
and most tools read it; not a JSON array). The terminal shows at most ``max_rows`` rows, the
first and the last half, with the total count in between, like DuckDB's shell.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Protocol

import pyarrow as pa
from rich.console import Console
from rich.table import Table

WRITERS = (".parquet", ".csv", ".jsonl", ".ndjson", ".json")
DEFAULT_MAX_ROWS = 40


class ResultSink(Protocol):
    """Receives a result's batches in order; ``close`` returns the number of rows."""

    def write(self, batch: pa.RecordBatch) -> None: ...

    def close(self) -> int: ...


def check_output(path: Path | None) -> None:
    """Raise ``ValueError`` (one line) for a file name whose format is unknown."""
    if path is not None and path.suffix.lower() not in WRITERS:
        raise ValueError(f"output file {path} must end in {', '.join(WRITERS)}")


def open_sink(
    output: Path | None, schema: pa.Schema, console: Console, max_rows: int = DEFAULT_MAX_ROWS
) -> ResultSink:
    """A file writer for ``output``, else the terminal's capped table."""
    if output is None:
        return TerminalSink(schema, console, max_rows)
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        return ParquetSink(output, schema)
    if suffix == ".csv":
        return CsvSink(output, schema)
    return JsonLinesSink(output, schema)


class RowCount(Protocol):
    """Told the running row count while batches arrive, and ``finish``ed before the result
    prints (a terminal display must be gone before the table is drawn under it)."""

    def rows_received(self, rows: int) -> None: ...

    def finish(self) -> None: ...


def emit(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    output: Path | None,
    console: Console,
    max_rows: int = DEFAULT_MAX_ROWS,
    counter: RowCount | None = None,
) -> int:
    """Send every batch to its sink; the number of rows. ``counter`` hears the running
    count and is finished before the sink closes (where the terminal's table prints)."""
    sink = open_sink(output, schema, console, max_rows)
    rows = 0
    completed = False
    try:
        for batch in batches:
            sink.write(batch)
            rows += batch.num_rows
            if counter is not None:
                counter.rows_received(rows)
        completed = True
    finally:
        if counter is not None:
            counter.finish()
        # A file is closed whatever happened; the terminal's table prints only for a result
        # that arrived whole (a failed query shows its error, not an empty or partial table).
        if completed or not isinstance(sink, TerminalSink):
            rows = sink.close()
    return rows


class ParquetSink:
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        self.rows = 0
        self._writer = pq.ParquetWriter(path, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._writer.write_batch(batch)
            self.rows += batch.num_rows

    def close(self) -> int:
        self._writer.close()
        return self.rows


class CsvSink:
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        import pyarrow.csv as pacsv

        self.rows = 0
        self._writer = pacsv.CSVWriter(path, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._writer.write_batch(batch)
            self.rows += batch.num_rows

    def close(self) -> int:
        self._writer.close()
        return self.rows


class JsonLinesSink:
    """One JSON object per row and line; polars does the encoding (fast), Python's ``json``
    the types polars does not take."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.rows = 0
        self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed by close()

    def write(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        try:
            import polars as pl

            frame = pl.from_arrow(pa.Table.from_batches([batch]))
            assert isinstance(frame, pl.DataFrame)
            frame.write_ndjson(self._file)
        except Exception:  # a type polars cannot encode: slower, but any type
            for row in batch.to_pylist():
                self._file.write(json.dumps(row, default=str).encode() + b"\n")
        self.rows += batch.num_rows

    def close(self) -> int:
        self._file.close()
        return self.rows


class TerminalSink:
    """Keeps the first and the last ``max_rows // 2`` rows and counts the rest."""

    def __init__(self, schema: pa.Schema, console: Console, max_rows: int) -> None:
        self.schema = schema
        self.console = console
        self.max_rows = max(2, max_rows)
        self.rows = 0
        self._head: list[pa.RecordBatch] = []
        self._head_rows = 0
        self._tail: collections.deque[pa.RecordBatch] = collections.deque()
        self._tail_rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        self.rows += batch.num_rows
        if self._head_rows < self.max_rows:
            take = batch.slice(0, self.max_rows - self._head_rows)
            self._head.append(take)
            self._head_rows += take.num_rows
            batch = batch.slice(take.num_rows)
        # Rows beyond the head: only the last max_rows // 2 of them are kept (slices: at most
        # a few batches' buffers stay referenced).
        if batch.num_rows:
            half = self.max_rows // 2
            self._tail.append(batch.slice(max(0, batch.num_rows - half)))
            self._tail_rows += min(batch.num_rows, half)
            while self._tail and self._tail_rows - self._tail[0].num_rows >= half:
                self._tail_rows -= self._tail.popleft().num_rows

    def close(self) -> int:
        half = self.max_rows // 2
        head = pa.Table.from_batches(self._head, self.schema) if self._head else None
        tail = pa.Table.from_batches(list(self._tail), self.schema) if self._tail else None
        if self.rows <= self.max_rows:
            parts = [head, tail]
            shown = [t for t in parts if t is not None]
            self._print([row for t in shown for row in t.to_pylist()], None)
        else:
            first = head.slice(0, half).to_pylist() if head is not None else []
            rest = pa.concat_tables([t for t in (head.slice(half) if head else None, tail) if t])
            last = rest.slice(max(0, rest.num_rows - half)).to_pylist()
            self._print(
                [*first, None, *last], f"{self.rows:,} rows ({len(first) + len(last)} shown)"
            )
        return self.rows

    def _print(self, rows: list[dict[str, object] | None], caption: str | None) -> None:
        view = Table(show_lines=False, caption=caption)
        for name in self.schema.names:
            view.add_column(name, no_wrap=True)
        for row in rows:
            if row is None:
                view.add_row(*("…" for _ in self.schema.names))
            else:
                view.add_row(*("NULL" if v is None else str(v) for v in row.values()))
        self.console.print(view)
