"""The query profile page: one self-contained HTML file (styles and script inline, nothing
fetched) with the header, the stage tree with aggregated operator metrics and collapsible
per-task detail, and a timeline with one row per worker and one bar per task.

Every task bar is an element with ``data-task="<stage>/<task>"``; hovering shows its metrics.
"""

from __future__ import annotations

import html

from otel_dist.explain.format import format_duration, format_metric, format_number
from otel_dist.explain.model import ExplainTree, OperatorNode, StageNode, TaskNode
from otel_dist.explain.text import format_metrics
from otel_dist.http_auth import printable

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")

_ROW_PX = 24

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330}
h1{font-size:20px;margin:0 0 6px} h2{font-size:16px;margin:24px 0 8px}
.meta{color:#555;font-size:13px} .meta span{margin-right:16px} .meta a{color:#1f6feb}
.status-ok{color:#2da44e;font-weight:600} .status-error{color:#cf222e;font-weight:600}
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
.read{position:absolute;bottom:0;height:4px;background:#1d2330;opacity:.45}
.blocked{position:absolute;top:0;height:100%;background:repeating-linear-gradient(45deg,
 rgba(255,255,255,.45) 0 3px,transparent 3px 6px)}
.axis{position:absolute;bottom:4px;font-size:10px;color:#555}
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
    status_class = "status-ok" if tree.status == "ok" else "status-error"
    trace = _e(tree.trace_id)
    if trace_url_template and tree.trace_id:
        url = trace_url_template.format(trace_id=tree.trace_id)
        trace = f"<a href='{_e(url)}'>{trace}</a>"
    items = [
        f"<span>query <b>{_e(tree.query_id)}</b></span>",
        f"<span>trace {trace}</span>",
        f"<span>total <b>{_e(format_duration(tree.duration_ns))}</b></span>",
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
    operators = "<table><tr><th>operator</th><th>metrics (sum over tasks)</th></tr>"
    operators += "".join(_operator_rows(op, 0) for op in stage.operators) + "</table>"
    task_rows = "".join(_task_row(stage, task) for task in stage.tasks)
    tasks_table = (
        "<details><summary>tasks</summary><table><tr><th>task</th><th>worker</th>"
        "<th>partitions</th><th>duration</th><th>rows</th><th>status</th></tr>"
        f"{task_rows}</table></details>"
    )
    children = "".join(_stage(child, colors) for child in stage.children)
    return (
        f"<details class='{classes}' id='stage-{stage.stage_id}' data-stage='{stage.stage_id}' open>"
        f"{summary}{notes}{operators}{tasks_table}{children}</details>"
    )


def _operator_rows(operator: OperatorNode, depth: int) -> str:
    metrics = format_metrics(operator, with_stats=len(operator.tasks) > 1)
    label = "  " * depth + operator.name
    row = (
        f"<tr><td class='op' title='{_e(operator.display)}'>{_e(label)}</td>"
        f"<td>{_e(metrics)}</td></tr>"
    )
    return row + "".join(_operator_rows(child, depth + 1) for child in operator.children)


def _ordered(metrics: dict[str, int]) -> list[tuple[str, int]]:
    first = [m for m in ("output_rows", "elapsed_compute") if m in metrics]
    rest = sorted(m for m in metrics if m not in first)
    return [(m, metrics[m]) for m in first + rest]


def _task_row(stage: StageNode, task: TaskNode) -> str:
    partitions = ",".join(str(p) for p in task.partitions or ())
    rows = format_number(task.rows) if task.rows is not None else "?"
    return (
        f"<tr><td>{task.task_index}</td><td>{_e(task.worker or '?')}</td><td>[{_e(partitions)}]</td>"
        f"<td class='num'>{_e(format_duration(task.duration_ns))}</td><td class='num'>{_e(rows)}</td>"
        f"<td>{_e(task.status)}{(': ' + _e(task.error)) if task.error else ''}</td></tr>"
    )


def _timeline(tree: ExplainTree, colors: dict[int, str]) -> str:
    tasks = [
        (stage, task)
        for stage in tree.all_stages()
        for task in stage.tasks
        if task.started_ns is not None and task.duration_ns is not None
    ]
    if not tasks:
        return "<p>No task timings were recorded.</p>"
    origin = min(task.started_ns for _, task in tasks)  # type: ignore[type-var]
    end = max(task.started_ns + task.duration_ns for _, task in tasks)  # type: ignore[operator]
    span = max(1, end - origin)
    workers = sorted({task.worker or "?" for _, task in tasks})
    lanes = []
    for worker in workers:
        rows = _pack([(s, t) for s, t in tasks if (t.worker or "?") == worker])
        bars = "".join(
            _bar(stage, task, origin, span, colors[stage.stage_id], row)
            for row, placed in enumerate(rows)
            for stage, task in placed
        )
        lanes.append(
            f"<div class='lane' style='height:{len(rows) * _ROW_PX + 4}px'>"
            f"<div class='lane-label' title='{_e(worker)}'>{_e(worker)}</div>{bars}</div>"
        )
    ticks = "".join(
        f"<div class='axis' style='left:calc(140px + (100% - 148px)*{f});"
        f"transform:translateX(-{f * 100:.0f}%)'>"
        f"{_e(format_duration(int(span * f)))}</div>"
        for f in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    legend = "".join(
        f"<span><i style='background:{colors[s.stage_id]}'></i>stage {s.stage_id}</span>"
        for s in tree.all_stages()
    )
    return f"<div class='legend'>{legend}</div><div class='timeline'>{''.join(lanes)}{ticks}</div>"


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


def _bar(stage: StageNode, task: TaskNode, origin: int, span: int, color: str, row: int) -> str:
    assert task.started_ns is not None and task.duration_ns is not None
    left = (task.started_ns - origin) / span * 100
    width = max(task.duration_ns / span * 100, 0.3)
    tip = [
        f"stage {stage.stage_id} task {task.task_index} ({task.status})",
        f"worker {task.worker}",
        f"duration {format_duration(task.duration_ns)}",
        *(f"{name} {format_metric(name, value)}" for name, value in _ordered(task.metrics)),
    ]
    inner = ""
    for read in task.reads:
        if read.started_ns is None:
            continue
        read_left = (read.started_ns - task.started_ns) / max(1, task.duration_ns) * 100
        read_width = max(read.duration_ns / max(1, task.duration_ns) * 100, 0.5)
        blocked = min(100.0, read.blocked_ns / max(1, read.duration_ns) * 100)
        inner += (
            f"<div class='read' style='left:{read_left:.3f}%;width:{read_width:.3f}%'>"
            f"<div class='blocked' style='left:0;width:{blocked:.1f}%'></div></div>"
        )
        tip.append(
            f"read stage {read.stage_id} task {read.task_index}: {format_number(read.rows)} rows, "
            f"blocked {format_duration(read.blocked_ns)}"
        )
    status = task.status if task.status in ("failed", "cancelled") else ""
    return (
        f"<div class='bar {status}' data-task='{stage.stage_id}/{task.task_index}' "
        f"data-stage='{stage.stage_id}' data-tip='{_e(chr(10).join(tip))}' "
        f"style='left:{left:.3f}%;width:{width:.3f}%;top:{row * _ROW_PX + 3}px;background:{color}'>"
        f"{stage.stage_id}/{task.task_index}{inner}</div>"
    )
