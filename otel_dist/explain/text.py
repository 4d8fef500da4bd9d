"""Plain-text rendering of the distributed EXPLAIN ANALYZE tree, for a terminal or a log.

No ANSI colours; the tree is drawn with box-drawing characters. The critical path comes
first; each stage lists its notes (fallback reason, skew, scheduling delay), where its tasks'
time went (min / median / max per part), its operators aggregated over its tasks, one line per
task, then the stages it reads. Numbers are formatted for people by
``otel_dist.explain.format``.

Every line fits the width (the terminal's, or 160 columns when output is not a terminal):
an operator's display is elided (``…``) before its metrics, other lines at their end. With
``verbose`` nothing is elided.
"""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from otel_dist.explain.format import (
    format_bytes,
    format_duration,
    format_metric,
    format_number,
    format_part,
    format_share,
    is_memory_metric,
)
from otel_dist.explain.model import (
    STATUS_UNKNOWN,
    CriticalPath,
    ExplainTree,
    MetricStats,
    OperatorNode,
    ReadNode,
    SkewInfo,
    StageNode,
    TaskNode,
)
from otel_dist.http_auth import printable

_HEADLINE_METRICS = frozenset({"output_rows", "elapsed_compute"})
# What a scan spent reading and decoding its files (its elapsed_compute leaves that out) and
# what it read from storage.
_SCAN_METRICS = frozenset(
    {"time_elapsed_processing", "time_elapsed_scanning_total", "bytes_scanned"}
)
_STATS_METRICS = frozenset({"output_rows", "elapsed_compute", "time_elapsed_processing"})
_FIRST_METRICS = ("output_rows", "elapsed_compute")
NOT_A_TERMINAL_WIDTH = 160
_MIN_HEAD = 24  # an elided display keeps at least this many characters
_LAST_HEAD = 10  # with no shorter tail left, a display keeps this many characters
_ELLIPSIS = "…"
_FILE_GROUPS = re.compile(r"file_groups=\{[^{}]*\},?\s*")
_FILE = re.compile(r"([^\s\[\],{}]+\.parquet)")
# dropped first when a scan's line is too long: its total scanning time says how long it took
_BRIEF_DROPS = frozenset({"time_elapsed_processing"})


@dataclass
class _Line:
    text: str
    children: list[_Line] = field(default_factory=list)
    tail: str = ""  # kept whole when the line is elided to fit: the text is cut first
    shorter_tails: tuple[str, ...] = ()  # shorter tails, in order, for when ``tail`` leaves no room


def terminal_width() -> int:
    """The terminal's width, or 160 when standard output is not a terminal."""
    if not sys.stdout.isatty():
        return NOT_A_TERMINAL_WIDTH
    return shutil.get_terminal_size((NOT_A_TERMINAL_WIDTH, 24)).columns


def render_text(
    tree: ExplainTree,
    verbose: bool = False,
    trace_url_template: str | None = None,
    width: int | None = None,
) -> str:
    """The tree as text. ``verbose`` adds every task's own operator tree and reads, stage SQL,
    zero-valued spill metrics and every time part, and elides nothing; ``trace_url_template``
    (containing ``{trace_id}``) adds a link to the trace; ``width`` defaults to
    ``terminal_width()``."""
    limit = None if verbose else (width or terminal_width())
    lines = _header(tree, limit)
    if trace_url_template:
        lines.append(f"Trace: {trace_url_template.replace('{trace_id}', tree.trace_id)}")
    if tree.error:  # wrapped rather than elided: the error names what failed, and where
        error = f"Error: {_one_line(tree.error)}"
        lines += _wrap(error, limit) if limit else [error]
    if tree.critical_path is not None:
        path = _critical_path_line(tree.critical_path)
        lines.append(path.text)
        _draw(path.children, "", lines, limit)
    if verbose:
        lines += [f"Coordinator {_read_text(read)}" for read in tree.reads]
    for stage in tree.stages:
        root = _stage_line(stage, verbose)
        lines.append(root.text)
        _draw(root.children, "", lines, limit)
    if limit is not None:
        lines = [_fit(line, "", limit) for line in lines]
    return printable("\n".join(lines) + "\n")  # SQL and ids as received, surrogates too


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(
        text, width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
    )


def _header(tree: ExplainTree, width: int | None) -> list[str]:
    ids = f"query={tree.query_id}  trace={tree.trace_id}"
    outcome = f"total={format_duration(tree.duration_ns)}  status={tree.status}"
    line = f"Distributed EXPLAIN ANALYZE  {ids}  {outcome}"
    if width is None or len(line) <= width:
        return [line]
    return [f"Distributed EXPLAIN ANALYZE  {outcome}", ids]


def _draw(nodes: Sequence[_Line], prefix: str, out: list[str], width: int | None) -> None:
    for position, node in enumerate(nodes):
        last = position == len(nodes) - 1
        lead = f"{prefix}{'└─ ' if last else '├─ '}"
        inner = prefix + ("   " if last else "│  ")
        room = None if width is None else width - len(lead)
        shortest = (node.shorter_tails or (node.tail,))[-1]
        if room is None:
            out.append(lead + node.text + node.tail)
        elif shortest and len(shortest) + 1 + _LAST_HEAD > room:
            # too deep for the metrics beside the display: they go on a line of their own
            out.append(lead + _fit(node.text, "", room))
            below = inner + ("│  " if node.children else "   ")
            out.append(below + _fit("", shortest.strip(), width - len(below)))  # type: ignore[operator]
        else:
            out.append(lead + _fit(node.text, node.tail, room, node.shorter_tails))
        _draw(node.children, inner, out, width)


def _fit(text: str, tail: str, width: int, shorter_tails: tuple[str, ...] = ()) -> str:
    """``text + tail`` in ``width`` characters: ``text`` elided first, then the shorter tails
    tried instead of ``tail``, then the whole elided."""
    if len(text) + len(tail) <= width:
        return text + tail
    room = width - len(tail) - 1
    if shorter_tails and room < min(_MIN_HEAD, len(text)):
        return _fit(text, shorter_tails[0], width, shorter_tails[1:])
    if room >= min(_MIN_HEAD, len(text)) or (not shorter_tails and room >= _LAST_HEAD):
        return text[:room] + _ELLIPSIS + tail
    whole = text + tail
    return whole[: max(0, width - 1)] + _ELLIPSIS


# --------------------------------------------------------------------------------------------
# The critical path
# --------------------------------------------------------------------------------------------


def _critical_path_line(path: CriticalPath) -> _Line:
    """``Critical path 1.00s`` and one line per step, the root task first."""
    children: list[_Line] = []
    total = path.total_ns
    for step in path.steps:
        share = format_share(step.ns, total)
        what = step.operator or "no operator time"
        if step.wait_ns and step.duration_ns:
            waited = f"{format_share(step.wait_ns, step.duration_ns)} of its "
            waited += format_duration(step.duration_ns)
            if step.waited_on is not None:
                waited += f" waiting on stage {step.waited_on[0]} task {step.waited_on[1]}"
            else:
                waited += " waiting on upstream data"
            what += f"; {waited}"
        worker = f" on {step.worker}" if step.worker else ""
        children.append(
            _Line(
                f"{share:>4} {format_duration(step.ns):>7}  stage {step.stage_id} task "
                f"{step.task_index}{worker} ({what})"
            )
        )
    coordinator = path.before_ns + path.after_ns
    children.append(
        _Line(
            f"{format_share(coordinator, total):>4} {format_duration(coordinator):>7}  "
            f"coordinator ({format_duration(path.before_ns)} planning and scheduling before, "
            f"{format_duration(path.after_ns)} reading the result and telemetry after)"
        )
    )
    return _Line(f"Critical path {format_duration(total)}, the root task first:", children)


# --------------------------------------------------------------------------------------------
# Stages and tasks
# --------------------------------------------------------------------------------------------


def _stage_line(stage: StageNode, verbose: bool) -> _Line:
    tasks = f"{stage.task_count} task{'' if stage.task_count == 1 else 's'}"
    kind = f" {stage.kind}" if stage.kind else ""
    partitioning = f"  partitioning={stage.partitioning}" if stage.partitioning else ""
    text = (
        f"ExecutionStage: Stage {stage.stage_id} ({tasks}){kind} - "
        f"{format_duration(stage.duration_ns)} total{partitioning}"
    )
    children: list[_Line] = []
    if stage.fallback_reason:
        children.append(_Line(f"single-task fallback: {stage.fallback_reason}"))
    elif stage.strategy:
        children.append(_Line(f"why: {stage.strategy}"))
    if stage.skew is not None:
        children.append(_Line(_skew_text(stage.skew)))
    if stage.scheduling_delay_ns is not None:
        children.append(
            _Line(
                f"timing: {format_duration(stage.duration_ns)} from the first task's start to "
                f"the last task's end, after a scheduling delay of "
                f"{format_duration(stage.scheduling_delay_ns)}"
            )
        )
    if stage.time_stats:
        children.append(_time_stats_line(stage, verbose))
    if verbose and stage.sql:
        children.append(_Line(f"sql: {_one_line(stage.sql)}"))
    context = _OperatorContext(verbose, stage.task_count > 1, _tasks_with_operators(stage))
    children += [_operator_line(op, context) for op in stage.operators]
    children += [_task_line(task, verbose) for task in stage.tasks]
    children += [_stage_line(child, verbose) for child in stage.children]
    return _Line(text, children)


def _time_stats_line(stage: StageNode, verbose: bool) -> _Line:
    """Each time part across the stage's tasks, the largest first."""
    parts = sorted(stage.time_stats.items(), key=lambda item: -item[1].max)
    lines = []
    for name, stats in parts:
        if not verbose and stats.max == 0:
            continue
        low, middle, high = (format_duration(v) for v in (stats.min, stats.median, stats.max))
        lines.append(_Line(f"{format_part(name)}: {low} / {middle} / {high} task {stats.max_task}"))
    return _Line("task time by part (min / median / max, the task of the max):", lines)


def _skew_text(skew: SkewInfo) -> str:
    worker = f" on {skew.worker}" if skew.worker else ""
    return (
        f"⚠ skew: task {skew.task_index}{worker} took {skew.ratio:.1f}x the median "
        f"({format_duration(skew.duration_ns)} vs {format_duration(skew.median_ns)})"
    )


def _task_line(task: TaskNode, verbose: bool) -> _Line:
    head = f"Task {task.task_index}: {task.worker or 'unknown worker'} partitions "
    head += _partitions(task.partitions)
    if task.status == STATUS_UNKNOWN:
        return _Line(f"{head} - status=unknown (no telemetry received)")
    outcome = _rows(task.rows or 0)
    sent = task.metrics.get("sent_bytes")
    if sent is not None:
        outcome += f", {format_bytes(sent)} sent"
    if task.status != "finished":
        outcome = f"{task.status}" + (f": {_one_line(task.error)}" if task.error else "")
    if task.ran_again_alone:
        outcome += ", ran again alone with its worker's whole memory"
    text = f"{head} - {format_duration(task.duration_ns)}, {outcome}"
    parts = _parts_text(task, verbose)
    if parts:
        text += f"; {parts}"
    if not verbose:
        return _Line(text)
    context = _OperatorContext(verbose, False, ())
    children = [_operator_line(op, context) for op in task.operators]
    children += [_Line(_read_text(read)) for read in task.reads]
    return _Line(text, children)


def _parts_text(task: TaskNode, verbose: bool) -> str:
    """Where the task's time went, the largest part first (without ``verbose``: parts of at
    least 1% of it)."""
    duration = task.duration_ns or 0
    parts = sorted(task.time_breakdown_ns.items(), key=lambda item: -item[1])
    shown = [
        f"{format_part(name)} {format_duration(ns)}"
        for name, ns in parts
        if verbose or (ns > 0 and ns * 100 >= duration)
    ]
    return ", ".join(shown)


def _rows(rows: int) -> str:
    return f"{format_number(rows)} row{'' if rows == 1 else 's'}"


def _partitions(partitions: tuple[int, ...] | None) -> str:
    if partitions is None:
        return "?"
    return _int_list(partitions)


def _int_list(values: Sequence[int]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def _read_text(read: ReadNode) -> str:
    first = (
        f", first batch {format_duration(read.time_to_first_batch_ns)}"
        if read.time_to_first_batch_ns is not None
        else ""
    )
    batches = f"{format_number(read.batches)} batch{'' if read.batches == 1 else 'es'}"
    return (
        f"read Stage {read.stage_id} task {read.task_index} bucket {read.bucket} from "
        f"{read.endpoint}: {_rows(read.rows)}, {batches}, {format_bytes(read.bytes)}"
        f" in {format_duration(read.duration_ns)}{first}, blocked "
        f"{format_duration(read.blocked_ns)}"
    )


# --------------------------------------------------------------------------------------------
# Operators and metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OperatorContext:
    verbose: bool
    with_stats: bool
    stage_tasks: tuple[int, ...]


def _tasks_with_operators(stage: StageNode) -> tuple[int, ...]:
    return tuple(task.task_index for task in stage.tasks if task.operators)


def _operator_line(operator: OperatorNode, context: _OperatorContext) -> _Line:
    display = _one_line(operator.display) or operator.name
    tail = ""
    if operator.tasks and operator.tasks != context.stage_tasks:
        tail += "  tasks=" + _int_list(operator.tasks)
    with_stats = context.with_stats and len(operator.tasks) > 1
    metrics = format_metrics(operator, context.verbose, with_stats)
    shorter: list[str] = []
    if not context.verbose:
        if with_stats:
            shorter.append(tail + f"  metrics=[{format_metrics(operator, False, False)}]")
        brief = format_metrics(operator, False, False, brief=True)
        if brief:
            shorter.append(tail + f"  metrics=[{brief}]")
        display = _scan_display(operator.name, display)
    if metrics:
        tail += f"  metrics=[{metrics}]"
    children = [_operator_line(child, context) for child in operator.children]
    return _Line(display, children, tail, tuple(shorter))


def _scan_display(name: str, display: str) -> str:
    """A file scan's display with its files listed first, by name: ``DataSourceExec:
    lineitem/lineitem.1.parquet, lineitem.2.parquet; file_groups=...``."""
    if name != "DataSourceExec":
        return display
    files = _FILE.findall(display)
    if not files:
        return display
    shown: list[str] = []
    for path in files:
        table, _, file = path.rpartition("/")
        table = table.rsplit("/", 1)[-1]
        shown.append(file if shown and shown[0].startswith(f"{table}/") else f"{table}/{file}")
    rest = _FILE_GROUPS.sub("", display.split(":", 1)[1]).strip()
    return f"{name}: {', '.join(shown)}" + (f"; {rest}" if rest else "")


def format_metrics(
    operator: OperatorNode, verbose: bool = False, with_stats: bool = False, brief: bool = False
) -> str:
    """``output_rows`` and ``elapsed_compute`` first, then the rest alphabetically.

    Without ``verbose`` only the headline metrics (rows, compute time, a scan's reading time
    and bytes read from storage, and memory held and spills when there were any) are shown, so a tree stays readable in a terminal; ``verbose``
    shows every metric. With ``with_stats`` a headline value is followed by
    ``(min / median / max task N)`` across tasks."""
    scan = operator.name == "DataSourceExec" and "time_elapsed_processing" in operator.metrics
    names = [n for n in _FIRST_METRICS if n in operator.metrics]
    names += sorted(n for n in operator.metrics if n not in _FIRST_METRICS)
    items: list[str] = []
    for name in names:
        value = operator.metrics[name]
        headline = (
            name in _HEADLINE_METRICS
            or (("spill" in name or is_memory_metric(name)) and value != 0)
            or (name in _SCAN_METRICS and scan)
        )
        if scan and name == "elapsed_compute":
            headline = False  # a scan's compute time leaves its reading out: misleading
        if (not verbose and not headline) or (brief and name in _BRIEF_DROPS):
            continue
        item = f"{name}={format_metric(name, value)}"
        stats = operator.metric_stats.get(name)
        if with_stats and stats is not None and (verbose or name in _STATS_METRICS):
            item += f" {_stats_text(name, stats)}"
        items.append(item)
    return ", ".join(items)


def _stats_text(name: str, stats: MetricStats) -> str:
    low, middle, high = (format_metric(name, v) for v in (stats.min, stats.median, stats.max))
    return f"({low} / {middle} / {high} task {stats.max_task})"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())
