"""Plain-text rendering of the distributed EXPLAIN ANALYZE tree, for a terminal or a log.

No ANSI colours; the tree is drawn with box-drawing characters. Each stage lists its notes
(fallback reason, skew), its operators aggregated over its tasks, one line per task, then the
stages it reads. Numbers are formatted for people by ``otel_dist.explain.format``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from otel_dist.explain.format import format_bytes, format_duration, format_metric, format_number
from otel_dist.explain.model import (
    STATUS_UNKNOWN,
    ExplainTree,
    MetricStats,
    OperatorNode,
    ReadNode,
    SkewInfo,
    StageNode,
    TaskNode,
)
from otel_dist.http_auth import printable

_HEADLINE_METRICS = frozenset({"output_rows", "elapsed_compute", "output_bytes"})
_STATS_METRICS = frozenset({"output_rows", "elapsed_compute"})
_FIRST_METRICS = ("output_rows", "elapsed_compute")
_DISPLAY_LIMIT = 120


@dataclass
class _Line:
    text: str
    children: list[_Line] = field(default_factory=list)


def render_text(
    tree: ExplainTree, verbose: bool = False, trace_url_template: str | None = None
) -> str:
    """The tree as text. ``verbose`` adds every task's own operator tree and reads, stage SQL
    and zero-valued spill metrics; ``trace_url_template`` (containing ``{trace_id}``) adds a
    link to the trace."""
    lines = [_header(tree)]
    if trace_url_template:
        lines.append(f"Trace: {trace_url_template.replace('{trace_id}', tree.trace_id)}")
    if tree.error:
        lines.append(f"Error: {_one_line(tree.error)}")
    if verbose:
        lines += [f"Coordinator {_read_text(read)}" for read in tree.reads]
    for stage in tree.stages:
        root = _stage_line(stage, verbose)
        lines.append(root.text)
        _draw(root.children, "", lines)
    return printable("\n".join(lines) + "\n")  # SQL and ids as received, surrogates too


def _header(tree: ExplainTree) -> str:
    return (
        f"Distributed EXPLAIN ANALYZE  query={tree.query_id}  trace={tree.trace_id}  "
        f"total={format_duration(tree.duration_ns)}  status={tree.status}"
    )


def _draw(nodes: Sequence[_Line], prefix: str, out: list[str]) -> None:
    for position, node in enumerate(nodes):
        last = position == len(nodes) - 1
        out.append(f"{prefix}{'└─ ' if last else '├─ '}{node.text}")
        _draw(node.children, prefix + ("   " if last else "│  "), out)


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
    if verbose and stage.sql:
        children.append(_Line(f"sql: {_one_line(stage.sql)}"))
    context = _OperatorContext(verbose, stage.task_count > 1, _tasks_with_operators(stage))
    children += [_operator_line(op, context) for op in stage.operators]
    children += [_task_line(task, verbose) for task in stage.tasks]
    children += [_stage_line(child, verbose) for child in stage.children]
    return _Line(text, children)


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
    outcome = f"{_rows(task.rows or 0)}, {format_bytes(task.bytes or 0)}"
    if task.status != "finished":
        outcome = f"{task.status}" + (f": {_one_line(task.error)}" if task.error else "")
    text = f"{head} - {format_duration(task.duration_ns)}, {outcome}"
    if not verbose:
        return _Line(text)
    context = _OperatorContext(verbose, False, ())
    children = [_operator_line(op, context) for op in task.operators]
    children += [_Line(_read_text(read)) for read in task.reads]
    return _Line(text, children)


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
    if not context.verbose and len(display) > _DISPLAY_LIMIT:
        display = display[: _DISPLAY_LIMIT - 1] + "…"
    text = display
    if operator.tasks and operator.tasks != context.stage_tasks:
        text += "  tasks=" + _int_list(operator.tasks)
    with_stats = context.with_stats and len(operator.tasks) > 1
    metrics = format_metrics(operator, context.verbose, with_stats)
    if metrics:
        text += f"  metrics=[{metrics}]"
    return _Line(text, [_operator_line(child, context) for child in operator.children])


def format_metrics(operator: OperatorNode, verbose: bool = False, with_stats: bool = False) -> str:
    """``output_rows`` and ``elapsed_compute`` first, then the rest alphabetically.

    Without ``verbose`` only the headline metrics (rows, compute time, output bytes, and
    spills when there were any) are shown, so a tree stays readable in a terminal; ``verbose``
    shows every metric. With ``with_stats`` a headline value is followed by
    ``(min / median / max task N)`` across tasks."""
    names = [n for n in _FIRST_METRICS if n in operator.metrics]
    names += sorted(n for n in operator.metrics if n not in _FIRST_METRICS)
    items: list[str] = []
    for name in names:
        value = operator.metrics[name]
        headline = name in _HEADLINE_METRICS or ("spill" in name and value != 0)
        if not verbose and not headline:
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
