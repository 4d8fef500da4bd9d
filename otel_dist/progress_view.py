"""Live progress on the terminal: the display ``otel-dist query`` and ``otel-dist local`` draw
on stderr while a query runs (per stage: tasks done / running / queued, rows so far, elapsed),
and the tables of ``otel-dist top``.

A display is drawn only when stderr is a terminal and ``--no-progress`` is not given; it is
transient, so it is gone when the result prints. It reads a query's progress summary (see
``LiveQuery.summary`` in ``coordinator/progress.py``) from a poll function a few times a
second on its own thread; a poll that fails or returns nothing just leaves the last frame.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from otel_dist.explain.format import format_bytes, format_duration, format_number
from otel_dist.protocol import ACTION_QUERY_PROGRESS

Summary = dict[str, Any]
POLL_INTERVAL_S = 0.25


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no live progress display on stderr (drawn only when stderr is a terminal)",
    )


def wanted(args: argparse.Namespace) -> bool:
    """Whether to draw: stderr is a terminal and ``--no-progress`` was not given."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def remote_poll(client: Any, query_id: str) -> Callable[[], Summary | None]:
    """Poll a coordinator's ``query_progress`` for one query (None until it runs there)."""
    import json

    import pyarrow.flight as flight

    body = json.dumps({"query_id": query_id}).encode()
    options = flight.FlightCallOptions(timeout=2)

    def poll() -> Summary | None:
        results = client.do_action(flight.Action(ACTION_QUERY_PROGRESS, body), options=options)
        summary = json.loads(b"".join(r.body.to_pybytes() for r in results))
        return summary if summary.get("status") == "running" else None

    return poll


def local_poll(coordinator: Any) -> Callable[[], Summary | None]:
    """Poll an in-process coordinator running one query at a time (``otel-dist local``)."""

    def poll() -> Summary | None:
        queries = coordinator.progress.queries()
        return queries[0].summary() if queries else None

    return poll


class ProgressDisplay:
    """``with ProgressDisplay(poll, console, enabled):`` draws the query's progress until the
    block ends, then removes it."""

    def __init__(
        self,
        poll: Callable[[], Summary | None],
        console: Console,
        enabled: bool,
        interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.poll = poll
        self.console = console
        self.enabled = enabled
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._rows = 0

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self._thread = threading.Thread(target=self._draw, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish()

    def rows_received(self, rows: int) -> None:
        """The rows the client has received so far (a line under the stages)."""
        self._rows = rows

    def finish(self) -> None:
        """Remove the display (before anything prints under it); later calls do nothing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _draw(self) -> None:
        with Live(
            Text("starting the query…"),
            console=self.console,
            transient=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            summary: Summary | None = None
            while not self._stop.is_set():
                with contextlib.suppress(Exception):  # the display never breaks the query
                    summary = self.poll() or summary
                if not self._stop.is_set() and (summary is not None or self._rows):
                    live.update(self._frame(summary), refresh=True)
                self._stop.wait(self.interval_s)

    def _frame(self, summary: Summary | None) -> RenderableType:
        received = Text(f"{format_number(self._rows)} rows received…") if self._rows else None
        if summary is None:
            return received or Text("")
        stages = render_query(summary, self._started)
        return Group(stages, received) if received is not None else stages


def render_query(summary: Summary, started: float | None = None) -> RenderableType:
    """One query's progress: a header line, then one row per stage."""
    elapsed_ns = summary.get("elapsed_ns")
    if elapsed_ns is None and started is not None:
        elapsed_ns = int((time.monotonic() - started) * 1e9)
    stages = summary.get("stages") or []
    done = sum(int(s["done"]) for s in stages)
    total = sum(int(s["task_count"]) for s in stages)
    header = Text.assemble(
        ("query ", "dim"),
        (str(summary.get("query_id", ""))[:12], "bold"),
        f"  {summary.get('phase', summary.get('status', ''))}",
        f"  {done}/{total} tasks" if stages else "",
        ("  elapsed ", "dim"),
        format_duration(elapsed_ns),
    )
    if not stages:
        return header
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="dim")
    for name, justify in (
        ("stage", "left"),
        ("", "left"),
        ("tasks done", "right"),
        ("running", "right"),
        ("queued", "right"),
        ("rows out", "right"),
        ("rows so far", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for stage in sorted(stages, key=lambda s: int(s["stage_id"])):
        count = max(1, int(stage["task_count"]))
        table.add_row(
            f"{stage['stage_id']} {stage.get('kind') or ''}"[:32],
            ProgressBar(total=count, completed=int(stage["done"]), width=20),
            f"{stage['done']}/{stage['task_count']}",
            str(stage["running"]),
            str(stage["queued"]),
            format_number(int(stage["rows"])),
            format_number(int(stage.get("rows_processed", stage["rows"]))),
        )
    return Group(header, table)


def render_cluster(status: Summary) -> RenderableType:
    """``otel-dist top``: every worker's load, then every query in flight."""
    workers = Table(title="workers", title_justify="left", expand=False)
    for name in ("worker", "status", "running", "queued", "CPU %", "RSS", "rows/s"):
        workers.add_column(name, justify="left" if name in ("worker", "status") else "right")
    for worker in status.get("workers", []):
        up = worker.get("status") == "up"
        workers.add_row(
            str(worker.get("url", "")),
            Text(str(worker.get("status", "?")), style="green" if up else "red"),
            str(worker.get("running_tasks", "-")) if up else "-",
            str(worker.get("queued_tasks", "-")) if up else "-",
            f"{float(worker.get('cpu_percent', 0)):.0f}" if up else "-",
            format_bytes(int(worker.get("rss_bytes", 0))) if up else "-",
            format_number(int(worker.get("rows_per_s", 0))) if up else "-",
        )
    queries = Table(title="queries in flight", title_justify="left", expand=False)
    for name in ("query", "elapsed", "tasks done", "running", "queued", "rows so far", "SQL"):
        queries.add_column(name, justify="left" if name in ("query", "SQL") else "right")
    running = status.get("queries", [])
    for query in running:
        stages = query.get("stages") or []
        queries.add_row(
            str(query.get("query_id", "")),
            format_duration(query.get("elapsed_ns")),
            f"{sum(int(s['done']) for s in stages)}/{sum(int(s['task_count']) for s in stages)}",
            str(sum(int(s["running"]) for s in stages)),
            str(sum(int(s["queued"]) for s in stages)),
            format_number(sum(int(s.get("rows_processed", s["rows"])) for s in stages)),
            " ".join(str(query.get("sql", "")).split())[:60],
        )
    parts: list[RenderableType] = [workers]
    parts.append(queries if running else Text("no query in flight", style="dim"))
    return Group(*parts)
