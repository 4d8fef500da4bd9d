"""The query profile page: one self-contained HTML file (styles and script inline, nothing
fetched) with the header, the stage tree with aggregated operator metrics and collapsible
per-task detail, and a timeline with one lane per worker (failed ones too) and one bar per task.

Every task bar is an element with ``data-task="<stage>/<task>"``; hovering shows its metrics.
Inside a bar, its time parts are stacked left to right (``data-part="<part>"``, widths in
proportion to the part's share of the task's duration). Bars of the tasks on the critical path
have the class ``critical`` and ``data-critical="<position from the root>"``; the critical path
is listed above the timeline (``id="critical-path"``).
"""

from __future__ import annotations

import html
import re

from otel_dist.explain.format import (
    format_duration,
    format_metric,
    format_number,
    format_part,
    format_share,
)
from otel_dist.explain.model import CriticalPath, ExplainTree, OperatorNode, StageNode, TaskNode
from otel_dist.explain.text import format_metrics
from otel_dist.http_auth import printable

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")

_ROW_PX = 24
# Colours of the time parts stacked inside a task bar; waits share one colour.
_PART_COLORS = {
    "planning": "#8c8c8c",
    "wait": "#d9d9d9",
    "operators": "#2f6fb3",
    "output": "#59a14f",
    "send_blocked": "#e15759",
    "spill": "#f28e2b",
    "telemetry": "#b07aa1",
    "other": "#4d4d4d",
}
_WORKER_IN_ERROR = re.compile(r"\b(?:on|worker) ((?:grpc(?:\+tls)?://)?[\w.-]+:\d+)")
_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330}
h1{font-size:20px;margin:0 0 6px} h2{font-size:16px;margin:24px 0 8px}
.meta{color:#555;font-size:13px} .meta span{margin-right:16px} .meta a{color:#1f6feb}
.status-ok{color:#2da44e;font-weight:600} .status-error{color:#cf222e;font-weight:600}
.status-running{color:#0969da;font-weight:600}
details.stage{border:1px solid #d0d7de;border-radius:6px;margin:6px 0 6px 18px;padding:4px 10px}
details.stage>summary{cursor:pointer;font-weight:600}
.skewed{border-color:#cf222e!important;background:#fff5f5}
.skew{color:#cf222e;font-size:13px} .fallback{color:#9a6700;font-size:13px} .why{color:#57606a;font-size:13px}
table{border-collapse:collapse;font-size:12px;margin:4px 0}
td,th{border-bottom:1px solid #eaeef2;padding:2px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.op{font-family:ui-monospace,Menlo,monospace;white-space:pre}
.timeline{position:relative;border:1px solid #d0d7de;border-radius:6px;padding:8px 8px 24px 140px}
.lane{position:relative;border-bottom:1px dashed #eaeef2}
.lane-label{position:absolute;left:-134px;width:128px;font-size:11px;overflow:hidden;
 text-overflow:ellipsis;white-space:nowrap;top:6px}
.bar{position:absolute;height:20px;border-radius:3px;opacity:.9;cursor:pointer;
 font-size:10px;color:#fff;overflow:hidden;white-space:nowrap;box-sizing:border-box;padding-left:3px}
.bar.failed,.bar.cancelled{outline:2px solid #cf222e}
.bar.critical{outline:3px solid #ffb000;outline-offset:1px;z-index:2}
.parts{position:absolute;left:0;right:0;bottom:0;height:7px;display:flex}
.parts i{display:block;height:100%}
.lane.dead{background:repeating-linear-gradient(45deg,#fff5f5 0 6px,#fff 6px 12px)}
.missing{position:absolute;left:0;top:5px;font-size:11px;color:#cf222e}
#critical-path ol{margin:4px 0;padding-left:22px;font-size:13px}
#critical-path .coord{color:#57606a}
.tasks-marker{color:#9a6700}
.bar.running{background-image:repeating-linear-gradient(135deg,rgba(255,255,255,.3) 0 6px,
 transparent 6px 12px);border-right:3px solid #1d2330}
.read{position:absolute;bottom:0;height:4px;background:#1d2330;opacity:.45}
.blocked{position:absolute;top:0;height:100%;background:repeating-linear-gradient(45deg,
 rgba(255,255,255,.45) 0 3px,transparent 3px 6px)}
.axis{position:absolute;bottom:4px;font-size:10px;color:#555;white-space:nowrap}
#tip{position:fixed;display:none;background:#1d2330;color:#fff;font-size:12px;padding:6px 8px;
 border-radius:4px;pointer-events:none;max-width:420px;white-space:pre;z-index:10}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
"""

_SCRIPT = """
const tip=document.getElementById('tip');
document.querySelectorAll('[data-tip]').forEach(el=>{
 el.addEventListener('mousemove',e=>{tip.textContent=el.dataset.tip;tip.style.display='block';
  tip.style.left=(e.clientX+12)+'px';tip.style.top=(e.clientY+12)+'px';});
 el.addEventListener('mouseleave',()=>{tip.style.display='none';});
 el.addEventListener('click',()=>{const d=document.getElementById('stage-'+el.dataset.stage);
  if(d){d.open=true;d.scrollIntoView({behavior:'smooth'});}});
});
"""


def render_html(tree: ExplainTree, trace_url_template: str | None = None) -> str:
    """The profile page of one query as a complete HTML document."""
    colors = {s.stage_id: _PALETTE[i % len(_PALETTE)] for i, s in enumerate(tree.all_stages())}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>otel_dist query {_e(tree.query_id)}</title><style>{_STYLE}</style></head><body>",
        _header(tree, trace_url_template),
        "<h2>Critical path</h2>",
        _critical_path(tree.critical_path, tree.status == "running"),
        "<h2>Timeline</h2>",
        _timeline(tree, colors),
        "<h2>Stages</h2>",
        *(_stage(stage, colors) for stage in tree.stages),
        "<div id='tip'></div>",
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    return printable("".join(parts))  # SQL and ids as received, lone surrogates too


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _header(tree: ExplainTree, trace_url_template: str | None) -> str:
    status_class = {"ok": "status-ok", "running": "status-running"}.get(tree.status, "status-error")
    trace = _e(tree.trace_id)
    if trace_url_template and tree.trace_id:
        url = trace_url_template.format(trace_id=tree.trace_id)
        trace = f"<a href='{_e(url)}'>{trace}</a>"
    items = [
        f"<span>query <b>{_e(tree.query_id)}</b></span>",
        f"<span>trace {trace}</span>",
        f"<span>{'elapsed' if tree.status == 'running' else 'total'} "
        f"<b>{_e(format_duration(tree.duration_ns))}</b></span>",
        f"<span>status <b class='{status_class}'>{_e(tree.status)}</b></span>",
    ]
    if tree.output_rows is not None:
        items.append(f"<span>{_e(format_number(tree.output_rows))} rows</span>")
    error = f"<p class='status-error'>{_e(tree.error)}</p>" if tree.error else ""
    sql = (
        f"<details><summary>SQL</summary><pre class='op'>{_e(tree.sql.strip())}</pre></details>"
        if tree.sql
        else ""
    )
    return f"<h1>Distributed query profile</h1><div class='meta'>{''.join(items)}</div>{error}{sql}"


def _stage(stage: StageNode, colors: dict[int, str]) -> str:
    classes = "stage skewed" if stage.skew else "stage"
    tasks = "task" if stage.task_count == 1 else "tasks"
    summary = (
        f"<summary><i style='color:{colors.get(stage.stage_id, '#888')}'>■</i> "
        f"Stage {stage.stage_id} ({stage.task_count} {tasks}) {_e(stage.kind or '')} "
        f"- {_e(format_duration(stage.duration_ns))} · {_e(stage.partitioning or '')}</summary>"
    )
    notes = ""
    if stage.fallback_reason:
        notes += f"<div class='fallback'>single-task fallback: {_e(stage.fallback_reason)}</div>"
    elif stage.strategy:
        notes += f"<div class='why'>why: {_e(stage.strategy)}</div>"
    if stage.skew:
        skew = stage.skew
        notes += (
            f"<div class='skew'>skew: task {skew.task_index} on {_e(skew.worker)} took "
            f"{skew.ratio:.1f}x the median ({_e(format_duration(skew.duration_ns))} vs "
            f"{_e(format_duration(skew.median_ns))})</div>"
        )
    with_operators = tuple(t.task_index for t in stage.tasks if t.operators)
    operators = "<table><tr><th>operator</th><th>metrics (sum over tasks)</th></tr>"
    operators += "".join(_operator_rows(op, 0, with_operators) for op in stage.operators)
    operators += "</table>"
    timing = ""
    if stage.scheduling_delay_ns is not None:
        timing = (
            f"<div class='why'>{_e(format_duration(stage.duration_ns))} from the first task's "
            f"start to the last task's end, after a scheduling delay of "
            f"{_e(format_duration(stage.scheduling_delay_ns))}</div>"
        )
    parts = ""
    if stage.time_stats:
        rows = "".join(
            f"<tr><td>{_e(format_part(name))}</td>"
            + "".join(
                f"<td class='num'>{_e(format_duration(v))}</td>"
                for v in (stats.min, stats.median, stats.max)
            )
            + f"<td class='num'>{stats.max_task}</td></tr>"
            for name, stats in sorted(stage.time_stats.items(), key=lambda i: -i[1].max)
            if stats.max > 0
        )
        parts = (
            "<table class='time-stats'><tr><th>task time</th><th>min</th><th>median</th>"
            f"<th>max</th><th>task of max</th></tr>{rows}</table>"
        )
    task_rows = "".join(_task_row(stage, task) for task in stage.tasks)
    tasks_table = (
        "<details><summary>tasks</summary><table><tr><th>task</th><th>worker</th>"
        "<th>partitions</th><th>duration</th><th>rows</th><th>status</th>"
        "<th>where the time went</th></tr>"
        f"{task_rows}</table></details>"
    )
    children = "".join(_stage(child, colors) for child in stage.children)
    return (
        f"<details class='{classes}' id='stage-{stage.stage_id}' data-stage='{stage.stage_id}' open>"
        f"{summary}{notes}{timing}{parts}{operators}{tasks_table}{children}</details>"
    )


def _operator_rows(operator: OperatorNode, depth: int, stage_tasks: tuple[int, ...]) -> str:
    metrics = format_metrics(operator, with_stats=len(operator.tasks) > 1)
    label = "  " * depth + operator.name
    marker = ""
    if operator.tasks and operator.tasks != stage_tasks:  # a per-task plan variant
        tasks = ",".join(str(t) for t in operator.tasks)
        marker = f" <span class='tasks-marker'>tasks=[{tasks}]</span>"
    row = (
        f"<tr><td class='op' title='{_e(operator.display)}'>{_e(label)}{marker}</td>"
        f"<td>{_e(metrics)}</td></tr>"
    )
    return row + "".join(
        _operator_rows(child, depth + 1, stage_tasks) for child in operator.children
    )


def _ordered(metrics: dict[str, int]) -> list[tuple[str, int]]:
    first = [m for m in ("output_rows", "elapsed_compute") if m in metrics]
    rest = sorted(m for m in metrics if m not in first)
    return [(m, metrics[m]) for m in first + rest]


def _task_row(stage: StageNode, task: TaskNode) -> str:
    partitions = ",".join(str(p) for p in task.partitions or ())
    rows = format_number(task.rows) if task.rows is not None else "?"
    parts = ", ".join(
        f"{format_part(name)} {format_duration(ns)}"
        for name, ns in sorted(task.time_breakdown_ns.items(), key=lambda item: -item[1])
        if ns > 0
    )
    again = ", ran again alone with its worker's whole memory" if task.ran_again_alone else ""
    return (
        f"<tr><td>{task.task_index}</td><td>{_e(task.worker or '?')}</td><td>[{_e(partitions)}]</td>"
        f"<td class='num'>{_e(format_duration(task.duration_ns))}</td><td class='num'>{_e(rows)}</td>"
        f"<td>{_e(task.status)}{(': ' + _e(task.error)) if task.error else ''}{_e(again)}</td>"
        f"<td>{_e(parts)}</td></tr>"
    )


def _critical_path(path: CriticalPath | None, running: bool = False) -> str:
    if path is None and running:
        return "<p id='critical-path'>Found when the query ends.</p>"
    if path is None:
        return "<p id='critical-path'>No task timings were recorded.</p>"
    items = []
    for step in path.steps:
        what = _e(step.operator or "no operator time")
        if step.wait_ns and step.duration_ns:
            what += (
                f"; {format_share(step.wait_ns, step.duration_ns)} of its "
                f"{_e(format_duration(step.duration_ns))} waiting"
            )
            if step.waited_on is not None:
                what += f" on stage {step.waited_on[0]} task {step.waited_on[1]}"
        items.append(
            f"<li data-step='{step.stage_id}/{step.task_index}'>"
            f"<b>{format_share(step.ns, path.total_ns)}</b> {_e(format_duration(step.ns))} "
            f"stage {step.stage_id} task {step.task_index} on {_e(step.worker or '?')} "
            f"({what})</li>"
        )
    coordinator = path.before_ns + path.after_ns
    items.append(
        f"<li class='coord'><b>{format_share(coordinator, path.total_ns)}</b> "
        f"{_e(format_duration(coordinator))} coordinator "
        f"({_e(format_duration(path.before_ns))} planning and scheduling before, "
        f"{_e(format_duration(path.after_ns))} reading the result and telemetry after)</li>"
    )
    return (
        f"<div id='critical-path'><span>{_e(format_duration(path.total_ns))}, the root task "
        f"first (highlighted on the timeline)</span><ol>{''.join(items)}</ol></div>"
    )


def _workers(tree: ExplainTree) -> list[str]:
    """Every worker the query used or named: task workers, and those named in errors (a
    worker that died leaves no task span)."""
    workers = {task.worker for stage in tree.all_stages() for task in stage.tasks if task.worker}
    errors = [tree.error or ""] + [
        task.error or "" for stage in tree.all_stages() for task in stage.tasks
    ]
    for error in errors:
        for match in _WORKER_IN_ERROR.finditer(error):
            url = match.group(1)
            workers.add(url if "://" in url else f"grpc://{url}")
    return sorted(workers)


def _timeline(tree: ExplainTree, colors: dict[int, str]) -> str:
    everything = [(stage, task) for stage in tree.all_stages() for task in stage.tasks]
    tasks = [
        (stage, task)
        for stage, task in everything
        if task.started_ns is not None and task.duration_ns is not None
    ]
    workers = _workers(tree)
    if not tasks and not workers:
        return "<p>No task timings were recorded.</p>"
    times = [(t.started_ns or 0, t.duration_ns or 0) for _, t in tasks]  # both known: above
    origin = min((start for start, _ in times), default=0)
    if tree.started_ns is not None and tasks:
        origin = min(origin, tree.started_ns)
    end = max((start + duration for start, duration in times), default=origin + 1)
    if tree.started_ns is not None and tree.duration_ns is not None and tasks:
        end = max(end, tree.started_ns + tree.duration_ns)
    span = max(1, end - origin)
    critical = {
        (step.stage_id, step.task_index): position
        for position, step in enumerate(tree.critical_path.steps if tree.critical_path else ())
    }
    lanes = []
    for worker in workers or ["?"]:
        mine = [(s, t) for s, t in tasks if (t.worker or "?") == worker]
        rows = _pack(mine)
        bars = "".join(
            _bar(stage, task, origin, span, colors[stage.stage_id], row, critical)
            for row, placed in enumerate(rows)
            for stage, task in placed
        )
        missing = [
            f"{s.stage_id}/{t.task_index}"
            for s, t in everything
            if t.worker == worker and (t.started_ns is None or t.duration_ns is None)
        ]
        dead = not mine
        if missing or dead:
            label = "no telemetry from this worker" if dead else "no telemetry"
            if missing:
                label += f" (tasks {', '.join(missing)})"
            bars += f"<div class='missing'>{_e(label)}</div>"
        height = max(len(rows), 1) * _ROW_PX + 4
        lanes.append(
            f"<div class='lane{' dead' if dead else ''}' data-worker='{_e(worker)}' "
            f"style='height:{height}px'>"
            f"<div class='lane-label' title='{_e(worker)}'>{_e(worker)}</div>{bars}</div>"
        )
    unit, scale = _axis_unit(span)
    ticks = "".join(
        f"<div class='axis' style='left:calc(140px + (100% - 148px)*{f});"
        f"transform:translateX(-{f * 100:.0f}%)'>"
        f"{_e(_axis_label(span * f / scale, unit))}</div>"
        for f in _TICKS
    )
    legend = "".join(
        f"<span><i style='background:{colors[s.stage_id]}'></i>stage {s.stage_id}</span>"
        for s in tree.all_stages()
    )
    legend += "<br>" + "".join(
        f"<span><i style='background:{color}'></i>{_e(format_part(name))}</span>"
        for name, color in _PART_COLORS.items()
    )
    legend += "<span><i style='outline:3px solid #ffb000'></i>critical path</span>"
    return (
        f"<div class='legend'>{legend}</div><div class='timeline'>{''.join(lanes)}{ticks}</div>"
        f"<div class='meta'>time since the query started ({_e(unit)})</div>"
    )


def _axis_unit(span_ns: int) -> tuple[str, int]:
    """One unit for every tick of an axis ``span_ns`` long."""
    if span_ns >= 2_000_000_000:
        return "s", 1_000_000_000
    if span_ns >= 2_000_000:
        return "ms", 1_000_000
    return "µs", 1_000


def _axis_label(value: float, unit: str) -> str:
    digits = 0 if value >= 10 or value == 0 else 1
    return f"{value:.{digits}f} {unit}"


def _pack(tasks: list[tuple[StageNode, TaskNode]]) -> list[list[tuple[StageNode, TaskNode]]]:
    """Rows of one worker's lane so that bars of tasks running at once do not overlap."""
    rows: list[list[tuple[StageNode, TaskNode]]] = []
    ends: list[int] = []
    for stage, task in sorted(tasks, key=lambda item: item[1].started_ns or 0):
        start = task.started_ns or 0
        row = next((i for i, end in enumerate(ends) if end <= start), len(rows))
        if row == len(rows):
            rows.append([])
            ends.append(0)
        rows[row].append((stage, task))
        ends[row] = start + (task.duration_ns or 0)
    return rows


def _part_color(name: str) -> str:
    return (
        _PART_COLORS["wait" if name.startswith("wait_") else name]
        if (name.startswith("wait_") or name in _PART_COLORS)
        else _PART_COLORS["other"]
    )


def _bar(
    stage: StageNode,
    task: TaskNode,
    origin: int,
    span: int,
    color: str,
    row: int,
    critical: dict[tuple[int, int], int],
) -> str:
    assert task.started_ns is not None and task.duration_ns is not None
    left = (task.started_ns - origin) / span * 100
    width = max(task.duration_ns / span * 100, 0.3)
    duration = max(1, task.duration_ns)
    tip = [
        f"stage {stage.stage_id} task {task.task_index} ({task.status})",
        f"worker {task.worker}",
        f"duration {format_duration(task.duration_ns)}",
    ]
    parts = sorted(task.time_breakdown_ns.items(), key=lambda item: _part_order(item[0]))
    tip += [
        f"  {format_part(name)} {format_duration(ns)} ({format_share(ns, duration)})"
        for name, ns in parts
        if ns > 0
    ]
    tip += [
        f"{name} {format_metric(name, value)}"
        for name, value in _ordered(task.metrics)
        if name != "read_blocked_time"  # summed over concurrent reads: not wall time
    ]
    inner = "".join(
        f"<i data-part='{_e(name)}' style='width:{ns / duration * 100:.3f}%;"
        f"background:{_part_color(name)}'></i>"
        for name, ns in parts
        if ns > 0
    )
    if inner:
        inner = f"<div class='parts'>{inner}</div>"
    for read in task.reads:
        tip.append(
            f"read stage {read.stage_id} task {read.task_index}: {format_number(read.rows)} rows, "
            f"{format_metric('bytes', read.bytes)} in {format_duration(read.duration_ns)}"
        )
    status = task.status if task.status in ("failed", "cancelled", "running") else ""
    position = critical.get((stage.stage_id, task.task_index))
    marks = ""
    if position is not None:
        status += " critical"
        marks = f" data-critical='{position}'"
        tip.insert(1, f"on the critical path (step {position + 1})")
    return (
        f"<div class='bar {status.strip()}' data-task='{stage.stage_id}/{task.task_index}' "
        f"data-stage='{stage.stage_id}'{marks} data-tip='{_e(chr(10).join(tip))}' "
        f"style='left:{left:.3f}%;width:{width:.3f}%;top:{row * _ROW_PX + 3}px;background:{color}'>"
        f"{stage.stage_id}/{task.task_index}{inner}</div>"
    )


def _part_order(name: str) -> tuple[int, str]:
    """Parts in the order a task goes through them."""
    order = ("planning", "wait_", "operators", "output", "send_blocked", "spill", "telemetry")
    for position, prefix in enumerate(order):
        if name.startswith(prefix):
            return position, name
    return len(order), name
