"""Build the distributed EXPLAIN ANALYZE tree from spans, and read spans from a trace file.

Only span names and attributes (``otel_dist.telemetry.conventions``) and span parent links are
used, so a tree built from the coordinator's live collection equals one built later from an
OTLP/JSON trace file of the same query.

* Spans are selected by ``otel_dist.query.id``; duplicate span ids are kept once.
* Stages nest by ``otel_dist.stage.inputs`` (a stage read by several stages is nested under the
  first one; every reader still lists it in ``inputs``).
* Operators are aligned across the tasks of a stage by ``otel_dist.operator.path``.
* A task the stage planned (``otel_dist.stage.task_count``) but whose span never arrived is
  kept with status ``unknown``; its worker is taken from a read of its output, if any.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from otel_dist.errors import one_line
from otel_dist.explain.critical_path import critical_path
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
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.otlp import SpanRecord, read_otlp_json_lines, span_records

DEFAULT_SKEW_THRESHOLD = 2.0
_STATUS_ERROR = 2
_TaskKey = tuple[int, int]
_OperatorKey = tuple[tuple[tuple[int, ...], str], ...]
_OPERATOR_PATH = c.OPERATOR_PATH
_OPERATOR_NAME = c.OPERATOR_NAME
_OPERATOR_DISPLAY = c.OPERATOR_DISPLAY
_METRIC_PREFIX = c.METRIC_PREFIX
_METRIC_PREFIX_LENGTH = len(c.METRIC_PREFIX)
_PARTITIONS_SUFFIX = c.PARTITIONS_SUFFIX
_TIME_PREFIX = c.TASK_TIME_PREFIX
# DataFusion's output_bytes counts every buffer a batch holds, whole, even when the batch is a
# small slice of a shared one (8 rows of a RepartitionExec showed 13.5 MB): not a size anyone
# can reconcile, so the tree leaves it out.
_DROPPED_METRICS = frozenset({"output_bytes"})
_UNSEEN: Final = object()


def load_trace_file(path: str | os.PathLike[str]) -> list[SpanRecord]:
    """Every span of an OTLP/JSON trace file (one ``ExportTraceServiceRequest`` per line).

    Raises ``ValueError`` with a one-line message when the file is missing or malformed.
    """
    try:
        requests = read_otlp_json_lines(path)
    except FileNotFoundError:
        raise ValueError(f"trace file {os.fspath(path)} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"trace file {os.fspath(path)} is a folder") from None
    except OSError as error:
        raise ValueError(f"trace file {os.fspath(path)}: {one_line(error)}") from None
    except UnicodeDecodeError:
        raise ValueError(f"trace file {os.fspath(path)} is not UTF-8 text") from None
    except ValueError as error:
        raise ValueError(one_line(error)) from None
    except (TypeError, AttributeError, KeyError) as error:
        raise ValueError(
            f"trace file {os.fspath(path)} is not OTLP/JSON trace data ({one_line(error)})"
        ) from None
    return span_records(requests)


def build_tree(
    spans: Iterable[SpanRecord],
    query_id: str | None = None,
    skew_threshold: float = DEFAULT_SKEW_THRESHOLD,
) -> ExplainTree:
    """The EXPLAIN ANALYZE tree of one query from its spans.

    ``query_id=None`` requires exactly one query among the spans; otherwise, or when the
    given query has no spans, ``ValueError`` names the query ids present.
    """
    with _collector_paused():
        return _build_tree(spans, query_id, skew_threshold)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a tree is built.

    A build allocates an object or more per span and frees none of them in reference cycles;
    every 700 allocations the collector scans the young objects anyway, and the tree's nodes
    surviving those scans soon trigger a full collection that scans every live object (for
    10,000 spans: about one full collection every other build, 20-40 ms, which was a third
    of the build). Reference counting frees memory as usual meanwhile; the collector is
    switched back on afterwards, unless something else had switched it off before.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _build_tree(
    spans: Iterable[SpanRecord], query_id: str | None, skew_threshold: float
) -> ExplainTree:
    unique = _unique(spans)
    selected = _select_query(unique, query_id)
    index = _SpanIndex([s for s in unique if s.attributes.get(c.QUERY_ID) == selected])
    stages = _stage_nodes(index, skew_threshold)
    query_span = index.query_span()
    tree = ExplainTree(
        query_id=selected,
        trace_id=_trace_id(index, query_span),
        sql=(_str(query_span.attributes.get(c.DB_QUERY_TEXT)) or "") if query_span else "",
        duration_ns=_duration(query_span) if query_span else index.extent_ns(),
        status=_query_status(query_span),
        error=_error_message(query_span) if query_span else None,
        stages=_nest(stages),
        strategy=_str(query_span.attributes.get(c.QUERY_STRATEGY)) if query_span else None,
        output_rows=_int(query_span.attributes.get(c.QUERY_ROWS)) if query_span else None,
        reads=[_read_node(s) for s in index.coordinator_reads()],
        started_ns=query_span.start_ns if query_span else None,
    )
    tree.critical_path = critical_path(tree)
    return tree


# --------------------------------------------------------------------------------------------
# Span selection and indexing
# --------------------------------------------------------------------------------------------


def _unique(spans: Iterable[SpanRecord]) -> list[SpanRecord]:
    seen: dict[str, SpanRecord] = {}
    for span in spans:
        if span.span_id not in seen:
            seen[span.span_id] = span
    return list(seen.values())


def _select_query(spans: Sequence[SpanRecord], query_id: str | None) -> str:
    present = sorted({str(s.attributes[c.QUERY_ID]) for s in spans if c.QUERY_ID in s.attributes})
    listed = ", ".join(present) or "none"
    if query_id is not None:
        if query_id not in present:
            raise ValueError(f"no spans of query {query_id}; queries present: {listed}")
        return query_id
    if not present:
        raise ValueError(f"no otel_dist spans: no span has the attribute {c.QUERY_ID}")
    if len(present) != 1:
        raise ValueError(
            f"expected the spans of exactly one query, found {len(present)}: {listed}; "
            "choose one with query_id"
        )
    return present[0]


class _SpanIndex:
    """The spans of one query by kind, id and parent."""

    def __init__(self, spans: Sequence[SpanRecord]) -> None:
        self.spans = spans
        self.by_id = {s.span_id: s for s in spans}
        self.children: dict[str, list[SpanRecord]] = {}
        stages: list[SpanRecord] = []
        tasks: list[SpanRecord] = []
        reads: list[SpanRecord] = []
        children = self.children
        for span in spans:
            siblings = children.get(span.parent_span_id)
            if siblings is None:
                children[span.parent_span_id] = [span]
            else:
                siblings.append(span)
            name = span.name
            if name == c.SPAN_READ:
                reads.append(span)
            elif name == c.SPAN_TASK:
                tasks.append(span)
            elif name == c.SPAN_STAGE:
                stages.append(span)
        self.stage_spans = _by_stage(stages)
        self.task_spans = _by_task(tasks)
        self.endpoints = _task_endpoints(reads)
        self.sent = _bytes_sent(reads)
        self.stage_tasks: dict[int, list[int]] = {}  # stage id -> its task indexes, sorted
        self.metric_names: dict[str, str | None] = {}  # see _operator_metrics
        for stage_id, task_index in sorted(self.task_spans):
            self.stage_tasks.setdefault(stage_id, []).append(task_index)

    def first(self, name: str) -> SpanRecord | None:
        return next((s for s in self.spans if s.name == name), None)

    def query_span(self) -> SpanRecord | None:
        return next((s for s in self.spans if c.is_query_span(s.name, s.attributes)), None)

    def extent_ns(self) -> int | None:
        if not self.spans:
            return None
        return max(s.end_ns for s in self.spans) - min(s.start_ns for s in self.spans)

    def coordinator_reads(self) -> list[SpanRecord]:
        reads = [
            s
            for s in self.spans
            if s.name == c.SPAN_READ
            and self.by_id.get(s.parent_span_id, s).name != c.SPAN_TASK
            and c.TASK_INDEX not in s.attributes
        ]
        return sorted(reads, key=_read_order)


def _by_stage(spans: Iterable[SpanRecord]) -> dict[int, SpanRecord]:
    result: dict[int, SpanRecord] = {}
    for span in spans:
        stage_id = _int(span.attributes.get(c.STAGE_ID))
        if stage_id is not None:
            result.setdefault(stage_id, span)
    return result


def _by_task(spans: Iterable[SpanRecord]) -> dict[_TaskKey, SpanRecord]:
    """One task span per (stage, task): a finished one if several, else the last to end."""
    result: dict[_TaskKey, SpanRecord] = {}
    for span in spans:
        key = _task_key(span)
        if key is None:
            continue
        current = result.get(key)
        if current is None or _task_rank(span) > _task_rank(current):
            result[key] = span
    return result


def _task_rank(span: SpanRecord) -> tuple[bool, int]:
    return span.attributes.get(c.TASK_STATUS) == "finished", span.end_ns


def _task_key(span: SpanRecord) -> _TaskKey | None:
    stage_id = _int(span.attributes.get(c.STAGE_ID))
    task_index = _int(span.attributes.get(c.TASK_INDEX))
    if stage_id is None or task_index is None:
        return None
    return stage_id, task_index


def _task_endpoints(reads: Iterable[SpanRecord]) -> dict[_TaskKey, str]:
    """Which worker served each task's output, as seen by the readers of that output."""
    result: dict[_TaskKey, str] = {}
    for read in reads:
        stage_id = _int(read.attributes.get(c.READ_STAGE_ID))
        task_index = _int(read.attributes.get(c.READ_TASK_INDEX))
        endpoint = _str(read.attributes.get(c.READ_ENDPOINT))
        if stage_id is not None and task_index is not None and endpoint:
            result.setdefault((stage_id, task_index), endpoint)
    return result


def _bytes_sent(reads: Iterable[SpanRecord]) -> dict[_TaskKey, int]:
    """The bytes each task's readers received of its output, as their routers counted."""
    result: dict[_TaskKey, int] = {}
    for read in reads:
        stage_id = _int(read.attributes.get(c.READ_STAGE_ID))
        task_index = _int(read.attributes.get(c.READ_TASK_INDEX))
        if stage_id is not None and task_index is not None:
            key = (stage_id, task_index)
            result[key] = result.get(key, 0) + (_int(read.attributes.get(c.READ_BYTES)) or 0)
    return result


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def _stage_nodes(index: _SpanIndex, skew_threshold: float) -> dict[int, StageNode]:
    stage_ids = set(index.stage_spans) | {stage for stage, _ in index.task_spans}
    return {
        stage_id: _stage_node(index, stage_id, skew_threshold) for stage_id in sorted(stage_ids)
    }


def _stage_node(index: _SpanIndex, stage_id: int, skew_threshold: float) -> StageNode:
    span = index.stage_spans.get(stage_id)
    attributes = span.attributes if span else {}
    planned = _int(attributes.get(c.STAGE_TASK_COUNT))
    present = index.stage_tasks.get(stage_id, [])
    task_indexes = sorted(set(range(planned or 0)) | set(present))
    tasks = [_task_node(index, stage_id, t) for t in task_indexes]
    extent = _tasks_extent(index, stage_id)
    first_start = min((t.started_ns for t in tasks if t.started_ns is not None), default=None)
    return StageNode(
        stage_id=stage_id,
        task_count=planned if planned is not None else len(tasks),
        partitioning=_str(attributes.get(c.STAGE_PARTITIONING)),
        kind=_str(attributes.get(c.STAGE_KIND)),
        fallback_reason=_str(attributes.get(c.STAGE_FALLBACK)),
        strategy=_str(attributes.get(c.STAGE_STRATEGY)),
        # first task start to last task end; the wait before it is the scheduling delay
        duration_ns=extent if extent is not None else (_duration(span) if span else None),
        scheduling_delay_ns=(
            max(0, first_start - span.start_ns) if span and first_start is not None else None
        ),
        time_stats=_time_stats(tasks),
        sql=_str(attributes.get(c.STAGE_SQL)),
        inputs=_stage_inputs(index, span),
        operators=aggregate_operators(tasks),
        tasks=tasks,
        skew=detect_skew(tasks, skew_threshold),
    )


def _time_stats(tasks: Sequence[TaskNode]) -> dict[str, MetricStats]:
    """Each time part across the tasks that reported their parts."""
    timed = [t for t in tasks if t.time_breakdown_ns]
    names = sorted({name for t in timed for name in t.time_breakdown_ns})
    return {
        name: _stats([(t.task_index, t.time_breakdown_ns.get(name, 0)) for t in timed])
        for name in names
    }


def _stage_inputs(index: _SpanIndex, span: SpanRecord | None) -> tuple[int, ...]:
    if span is None:
        return ()
    declared = span.attributes.get(c.STAGE_INPUTS)
    if isinstance(declared, tuple | list):
        return tuple(i for i in (_int(v) for v in declared) if i is not None)
    nested = (s for s in index.children.get(span.span_id, ()) if s.name == c.SPAN_STAGE)
    return tuple(
        sorted(i for i in (_int(s.attributes.get(c.STAGE_ID)) for s in nested) if i is not None)
    )


def _tasks_extent(index: _SpanIndex, stage_id: int) -> int | None:
    spans = [index.task_spans[stage_id, t] for t in index.stage_tasks.get(stage_id, ())]
    if not spans:
        return None
    return max(s.end_ns for s in spans) - min(s.start_ns for s in spans)


def _nest(stages: dict[int, StageNode]) -> list[StageNode]:
    """Root stages (read by no other stage), each with the stages it reads nested under it."""
    read = {i for stage in stages.values() for i in stage.inputs if i != stage.stage_id}
    placed: set[int] = set()

    def place(stage: StageNode) -> StageNode:
        placed.add(stage.stage_id)
        for input_id in stage.inputs:
            child = stages.get(input_id)
            if child is not None and input_id not in placed:
                stage.children.append(place(child))
        return stage

    roots = [place(s) for i, s in sorted(stages.items(), reverse=True) if i not in read]
    roots += [place(s) for i, s in sorted(stages.items(), reverse=True) if i not in placed]
    return roots


def detect_skew(tasks: Sequence[TaskNode], threshold: float) -> SkewInfo | None:
    """The slowest task when it took more than ``threshold`` times the median task duration."""
    timed = [(t.duration_ns, t) for t in tasks if t.duration_ns is not None]
    if len(timed) < 2:
        return None
    median = statistics.median(duration for duration, _ in timed)
    duration, slowest = max(timed, key=lambda item: item[0])
    if median <= 0 or duration <= threshold * median:
        return None
    return SkewInfo(
        task_index=slowest.task_index,
        worker=slowest.worker,
        ratio=round(duration / median, 2),
        duration_ns=duration,
        median_ns=round(median),
    )


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


def _task_node(index: _SpanIndex, stage_id: int, task_index: int) -> TaskNode:
    span = index.task_spans.get((stage_id, task_index))
    if span is None:
        return TaskNode(
            task_index=task_index,
            worker=index.endpoints.get((stage_id, task_index)),
            partitions=None,
            duration_ns=None,
            status=STATUS_UNKNOWN,
            error=None,
        )
    children = index.children.get(span.span_id, [])
    operators = _operator_trees(index, children, "")
    reads = sorted((_read_node(s) for s in children if s.name == c.SPAN_READ), key=_node_order)
    status = _str(span.attributes.get(c.TASK_STATUS)) or (
        "failed" if span.status_code == _STATUS_ERROR else "finished"
    )
    return TaskNode(
        task_index=task_index,
        worker=_str(span.attributes.get(c.WORKER_URL))
        or index.endpoints.get((stage_id, task_index)),
        partitions=_int_tuple(span.attributes.get(c.TASK_PARTITIONS)),
        duration_ns=_duration(span),
        started_ns=span.start_ns,
        status=status,
        error=_task_error(span, status),
        metrics=_task_metrics(span, operators, reads, index.sent.get((stage_id, task_index))),
        operators=operators,
        reads=reads,
        time_breakdown_ns=_time_breakdown(span),
        output_done_ns=_int(span.attributes.get(c.TASK_OUTPUT_DONE)),
        ran_again_alone=span.attributes.get(c.TASK_RAN_AGAIN_ALONE) is True,
    )


def _time_breakdown(span: SpanRecord) -> dict[str, int]:
    parts: dict[str, int] = {}
    for key, value in span.attributes.items():
        if key.startswith(_TIME_PREFIX):
            ns = _int(value)
            if ns is not None:
                parts[key[len(_TIME_PREFIX) :]] = ns
    return parts


def _task_error(span: SpanRecord, status: str) -> str | None:
    error = _str(span.attributes.get(c.TASK_ERROR))
    if error:
        return error
    if status != "finished" and span.status_code == _STATUS_ERROR:
        return span.status_message or None
    return None


def _task_metrics(
    span: SpanRecord,
    operators: Sequence[OperatorNode],
    reads: Sequence[ReadNode],
    sent_bytes: int | None,
) -> dict[str, int]:
    metrics = {
        "output_rows": _int(span.attributes.get(c.TASK_OUTPUT_ROWS)) or 0,
        "output_bytes": _int(span.attributes.get(c.TASK_OUTPUT_BYTES)) or 0,
        "elapsed_compute": _metric_sum(operators, "elapsed_compute"),
    }
    if reads:
        metrics["read_rows"] = sum(r.rows for r in reads)
        metrics["read_bytes"] = sum(r.bytes for r in reads)
        metrics["read_blocked_time"] = sum(r.blocked_ns for r in reads)
    if sent_bytes is not None:
        metrics["sent_bytes"] = sent_bytes
    return metrics


def _metric_sum(operators: Iterable[OperatorNode], name: str) -> int:
    total = 0
    pending = list(operators)
    while pending:
        operator = pending.pop()
        total += operator.metrics.get(name, 0)
        pending.extend(operator.children)
    return total


def _read_node(span: SpanRecord) -> ReadNode:
    get = span.attributes.get
    return ReadNode(
        endpoint=_str(get(c.READ_ENDPOINT)) or "",
        stage_id=_int(get(c.READ_STAGE_ID)) or 0,
        task_index=_int(get(c.READ_TASK_INDEX)) or 0,
        bucket=_int(get(c.READ_BUCKET)) or 0,
        rows=_int(get(c.READ_ROWS)) or 0,
        batches=_int(get(c.READ_BATCHES)) or 0,
        bytes=_int(get(c.READ_BYTES)) or 0,
        duration_ns=_duration(span),
        started_ns=span.start_ns,
        time_to_first_batch_ns=_int(get(c.READ_FIRST_BATCH_NS)),
        blocked_ns=_int(get(c.READ_BLOCKED_NS)) or 0,
    )


def _read_order(span: SpanRecord) -> tuple[int, int, int]:
    return _node_order(_read_node(span))


def _node_order(read: ReadNode) -> tuple[int, int, int]:
    return read.stage_id, read.task_index, read.bucket


# --------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------


def _operator_trees(
    index: _SpanIndex, spans: Sequence[SpanRecord], parent_path: str
) -> list[OperatorNode]:
    operators = [
        s for s in spans if _OPERATOR_PATH in s.attributes or _OPERATOR_NAME in s.attributes
    ]
    if len(operators) > 1:  # most operators have one child: skip parsing paths to sort
        operators.sort(
            key=lambda s: (path_key(_str(s.attributes.get(_OPERATOR_PATH)) or ""), s.start_ns)
        )
    nodes: list[OperatorNode] = []
    children = index.children
    for position, span in enumerate(operators):
        attributes = span.attributes
        path = attributes.get(_OPERATOR_PATH)
        if type(path) is not str or not path:
            path = _str(path) or (f"{parent_path}.{position}" if parent_path else str(position))
        name = attributes.get(_OPERATOR_NAME)
        display = attributes.get(_OPERATOR_DISPLAY)
        nodes.append(
            OperatorNode(
                name=name if type(name) is str and name else _str(name) or span.name,
                display=(
                    display if type(display) is str and display else _str(display) or span.name
                ).strip(),
                path=path,
                metrics=_operator_metrics(span, index.metric_names),
                children=_operator_trees(index, children.get(span.span_id, ()), path),
            )
        )
    return nodes


def _operator_metrics(span: SpanRecord, names: dict[str, str | None]) -> dict[str, int]:
    """The span's metrics; ``names`` caches attribute key -> metric name (None: no metric)."""
    metrics: dict[str, int] = {}
    for key, value in span.attributes.items():
        name = names.get(key, _UNSEEN)
        if name is _UNSEEN:
            is_metric = key.startswith(_METRIC_PREFIX) and not key.endswith(_PARTITIONS_SUFFIX)
            name = key[_METRIC_PREFIX_LENGTH:] if is_metric else None
            name = names[key] = None if name in _DROPPED_METRICS else name
        if name is None:
            continue
        if type(value) is not int:
            value = _int(value)
            if value is None:
                continue
        metrics[name] = value  # type: ignore[index]
    return metrics


def aggregate_operators(tasks: Sequence[TaskNode]) -> list[OperatorNode]:
    """The stage's operator tree, operators aligned across tasks by path and metrics summed.

    Task plans can differ (a task over more files needs no round-robin repartition), so an
    operator is identified by its path and the names of its ancestors: operators that differ
    stay apart, each listing the ``tasks`` that ran it.
    """
    by_key: dict[_OperatorKey, list[tuple[int, OperatorNode]]] = {}
    path_keys: dict[str, tuple[int, ...]] = {}  # tasks repeat the same few paths
    for task in sorted(tasks, key=lambda t: t.task_index):
        task_index = task.task_index
        # depth first, each operator before its children, as the plan lists them
        pending: list[tuple[_OperatorKey, OperatorNode]] = [
            ((), operator) for operator in reversed(task.operators)
        ]
        while pending:
            parent, operator = pending.pop()
            parsed = path_keys.get(operator.path)
            if parsed is None:
                parsed = path_keys[operator.path] = path_key(operator.path)
            key = (*parent, (parsed, operator.name))
            entries = by_key.get(key)
            if entries is None:
                by_key[key] = [(task_index, operator)]
            else:
                entries.append((task_index, operator))
            if operator.children:
                pending.extend((key, child) for child in reversed(operator.children))
    merged = {key: _merge(entries) for key, entries in by_key.items()}

    def plan_order(key: _OperatorKey) -> tuple[tuple[tuple[int, ...], int, str], ...]:
        return tuple(
            (path, merged[key[: i + 1]].tasks[0], name) for i, (path, name) in enumerate(key)
        )

    roots: list[OperatorNode] = []
    for key in sorted(merged, key=plan_order):
        owner = merged.get(key[:-1])
        (owner.children if owner is not None else roots).append(merged[key])
    return roots


def _merge(entries: Sequence[tuple[int, OperatorNode]]) -> OperatorNode:
    first_task, first = entries[0]
    if len(entries) == 1:  # most stages run one task: nothing to sum or spread
        return OperatorNode(
            name=first.name,
            display=first.display,
            path=first.path,
            metrics=dict(first.metrics),
            metric_stats={
                name: MetricStats(value, value, value, first_task)
                for name, value in first.metrics.items()
            },
            tasks=(first_task,),
        )
    per_metric: dict[str, list[tuple[int, int]]] = {}
    for task_index, operator in entries:
        for name, value in operator.metrics.items():
            per_metric.setdefault(name, []).append((task_index, value))
    return OperatorNode(
        name=first.name,
        display=first.display,
        path=first.path,
        metrics={name: sum(v for _, v in values) for name, values in per_metric.items()},
        metric_stats={name: _stats(values) for name, values in per_metric.items()},
        tasks=tuple(task_index for task_index, _ in entries),
    )


def _stats(values: Sequence[tuple[int, int]]) -> MetricStats:
    numbers = sorted(v for _, v in values)
    middle = len(numbers) // 2
    # statistics.median's value, without its type checks (a third of building a tree)
    median = (
        numbers[middle] if len(numbers) % 2 else round((numbers[middle - 1] + numbers[middle]) / 2)
    )
    max_task, max_value = max(values, key=lambda item: item[1])
    return MetricStats(min=numbers[0], median=median, max=max_value, max_task=max_task)


def walk(operators: Iterable[OperatorNode]) -> Iterable[OperatorNode]:
    """Every operator of the trees, depth first."""
    pending = list(reversed(list(operators)))
    while pending:
        operator = pending.pop()
        yield operator
        pending.extend(reversed(operator.children))


def path_key(path: str) -> tuple[int, ...]:
    """``"0.10.2"`` -> ``(0, 10, 2)``, so paths sort in plan order."""
    return tuple(int(part) if part.isdigit() else -1 for part in path.split(".") if part)


# --------------------------------------------------------------------------------------------
# Query and attribute helpers
# --------------------------------------------------------------------------------------------


def _query_status(span: SpanRecord | None) -> str:
    if span is None:
        return STATUS_UNKNOWN
    return "error" if span.status_code == _STATUS_ERROR else "ok"


def _error_message(span: SpanRecord) -> str | None:
    if span.status_code != _STATUS_ERROR:
        return None
    return span.status_message or "failed"


def _trace_id(index: _SpanIndex, query_span: SpanRecord | None) -> str:
    if query_span is not None:
        return query_span.trace_id
    return index.spans[0].trace_id if index.spans else ""


def _duration(span: SpanRecord) -> int:
    return max(0, span.end_ns - span.start_ns)


def _int(value: object) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _int_tuple(value: object) -> tuple[int, ...] | None:
    if not isinstance(value, tuple | list):
        return None
    return tuple(i for i in (_int(v) for v in value) if i is not None)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
