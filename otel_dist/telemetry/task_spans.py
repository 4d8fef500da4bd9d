"""Spans of one finished task on a worker: the task span, one span per DataFusion operator with
its metrics, and one span per upstream bucket read.

Spans are created when the task ends, with the start and end times that were recorded, so
building them costs nothing while data flows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from otel_dist.telemetry import conventions as c
from otel_dist.telemetry import rpc
from otel_dist.telemetry.setup import Telemetry


@dataclass(frozen=True)
class ReadRecord:
    """One upstream bucket read by a task or by the coordinator."""

    endpoint: str
    stage_id: int
    task_index: int
    bucket: int
    started_ns: int
    ended_ns: int
    rows: int
    batches: int
    bytes: int
    first_batch_ns: int | None
    blocked_ns: int
    telemetry_bytes: int
    span_id: int = 0  # chosen when the read started (its server span's parent); 0: none yet
    grpc_status_code: int | None = None  # the call's, as far as its data went; None: unknown


@dataclass(frozen=True)
class TaskRecord:
    """What a task did, as its spans report it."""

    query_id: str
    stage_id: int
    task_index: int
    partitions: tuple[int, ...]
    worker_url: str
    status: str
    error: str | None
    started_ns: int
    ended_ns: int
    output_rows: int
    output_bytes: int
    reads: Sequence[ReadRecord] = field(default_factory=tuple)
    time_breakdown: dict[str, int] | None = None  # part -> ns, adding up to the duration
    output_done_ns: int | None = None  # when the output was complete (unix ns)
    error_type: str | None = None  # the exception's class name, when it failed
    upstream_failed: bool = False  # failed because an upstream task did: not the root cause
    queued_ns: int | None = None  # waited for a turn to execute (admission control)
    ran_again_alone: bool = False  # out of its share of memory, run again alone on its worker


@dataclass(frozen=True)
class OperatorMetrics:
    """One operator of an executed physical plan with its metrics summed over partitions."""

    name: str
    display: str
    totals: dict[str, int]
    per_partition: dict[str, list[int]]
    start_ns: int | None
    end_ns: int | None
    children: list[OperatorMetrics]


# DataFusion's memory gauges (``c.MEMORY_GAUGE_SUFFIX``): the Python API gives a gauge no
# value, only its display, in binary units with one decimal (``579.8 MB``), so they are read
# from it, to that precision.
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|TB|PB)\s*$")
_SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}


def gauge_bytes(display: str) -> int | None:
    """Bytes of a memory gauge's display (``11.7 KB``), or None for anything else."""
    match = _SIZE.match(display)
    if match is None:
        return None
    return round(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def operator_metrics(plan: object) -> OperatorMetrics:
    """Read a DataFusion ``ExecutionPlan`` tree (after execution) into plain metrics."""
    # The Python wrappers of ``datafusion.plan`` add a Python object and a property call per
    # metric read; the plan they wrap has the same methods without them, so read that one.
    return _read_operator(getattr(plan, "_raw_plan", plan))


def _read_operator(plan: Any) -> OperatorMetrics:
    display = " ".join(plan.display().split())
    name = display.split(":", 1)[0].strip()
    totals: dict[str, int] = {}
    partitions: dict[str, dict[int, int]] = {}
    starts: list[dt.datetime] = []
    ends: list[dt.datetime] = []
    # A metric's partition is the output partition whose execution recorded it, so with one
    # output partition there is nothing to split by (a scan has some 20 metrics per file).
    by_partition = plan.partition_count > 1
    metrics_set = plan.metrics()
    for metric in metrics_set.metrics() if metrics_set is not None else ():
        value = metric.value
        if type(value) is not int:  # the common case first; bool is no int here
            if isinstance(value, dt.datetime):
                metric_name = metric.name
                if metric_name == "start_timestamp":
                    starts.append(value)
                elif metric_name == "end_timestamp":
                    ends.append(value)
                continue
            if value is None and metric.name.endswith(c.MEMORY_GAUGE_SUFFIX):
                value = gauge_bytes(str(metric))
            if not isinstance(value, int) or isinstance(value, bool):
                continue
        metric_name = metric.name
        totals[metric_name] = totals.get(metric_name, 0) + value
        if not by_partition:
            continue
        partition = metric.partition
        if partition is not None:
            values = partitions.get(metric_name)
            if values is None:
                partitions[metric_name] = {partition: value}
            else:
                values[partition] = values.get(partition, 0) + value
    per_partition = {
        metric_name: [values[p] for p in sorted(values)]
        for metric_name, values in partitions.items()
        if len(values) > 1
    }
    # _ns never decreases as time goes on, so the earliest start in nanoseconds is _ns of the
    # earliest start (and the same for the latest end): one conversion each.
    return OperatorMetrics(
        name,
        display,
        totals,
        per_partition,
        _ns(min(starts)) if starts else None,
        _ns(max(ends)) if ends else None,
        [_read_operator(child) for child in plan.children()],
    )


def with_scan_names(operator: OperatorMetrics, folder: str) -> OperatorMetrics:
    """The operator tree with a task's scratch ``folder`` of links to its files removed from
    the displays: ``tmp/.../task-.../lineitem/00003-part-1.parquet`` -> ``lineitem/part-1.parquet``
    (the table, then the file's name)."""
    folder = folder.strip("/")
    display = operator.display
    if folder in display:
        # Split at the folder rather than compile a pattern naming it: the folder is new for
        # every task, and compiling took more of a task's telemetry time than its spans.
        head, *links = display.split(folder)
        display = head + "".join(
            folder + link
            if (match := _LINK.match(link)) is None
            else match[1] + link[match.end() :]
            for link in links
        )
    children = [with_scan_names(child, folder) for child in operator.children]
    if display == operator.display and all(
        new is old for new, old in zip(children, operator.children, strict=True)
    ):
        return operator
    return dataclasses.replace(operator, display=display, children=children)


# What follows the scratch folder in a link's path: ``/<table>/<5 digits>-``.
_LINK = re.compile(r"/([^/\s,\]]+/)\d{5}-")


def without_details(operator: OperatorMetrics) -> OperatorMetrics:
    """The operator tree with each display reduced to the operator's name: DataFusion shows
    literals of predicates there (``n_name@1 = SECRET``), so SQL redaction removes them."""
    return dataclasses.replace(
        operator,
        display=operator.name,
        children=[without_details(child) for child in operator.children],
    )


def record_task_spans(
    telemetry: Telemetry,
    parent: Context | None,
    task: TaskRecord,
    operators: OperatorMetrics | None,
) -> list[ReadableSpan]:
    """Build the task's spans, finished, and hand them to the span processors; return them
    (empty when the sampler does not record the task span).

    The task span is sampled by the tracer provider's sampler, as the SDK's ``start_span``
    would; its children (operators, reads) inherit that decision. Every span is built as a
    finished ``ReadableSpan``: every value they carry is an int, a str or a list of ints made
    here, so the SDK's per-attribute checks and copies on span start, and its locking on end,
    buy nothing while costing a good part of a task's telemetry time.
    """
    assert telemetry.provider is not None, "record_task_spans needs telemetry on"
    common = {c.QUERY_ID: task.query_id, c.STAGE_ID: task.stage_id, c.TASK_INDEX: task.task_index}
    attributes: dict[str, Any] = {
        **common,
        c.TASK_PARTITIONS: list(task.partitions),
        c.WORKER_URL: task.worker_url,
        c.TASK_STATUS: task.status,
        c.TASK_OUTPUT_ROWS: task.output_rows,
        c.TASK_OUTPUT_BYTES: task.output_bytes,
    }
    for part, ns in (task.time_breakdown or {}).items():
        attributes[c.TASK_TIME_PREFIX + part] = ns
    if task.queued_ns is not None:
        attributes[c.TASK_QUEUED_TIME] = task.queued_ns
    if task.ran_again_alone:
        attributes[c.TASK_RAN_AGAIN_ALONE] = True
    if task.output_done_ns is not None:
        attributes[c.TASK_OUTPUT_DONE] = max(0, task.output_done_ns - task.started_ns)
    parent_context: SpanContext | None = trace.get_current_span(parent).get_span_context()
    if parent_context is None or not parent_context.is_valid:
        parent_context = None
        trace_id = _Children.ids.generate_trace_id()
    else:
        trace_id = parent_context.trace_id
    sampling = telemetry.provider.sampler.should_sample(
        parent, trace_id, c.SPAN_TASK, SpanKind.INTERNAL, attributes
    )
    if not sampling.decision.is_recording():
        return []
    flags = TraceFlags(TraceFlags.SAMPLED if sampling.decision.is_sampled() else 0)
    context = SpanContext(
        trace_id, _Children.ids.generate_span_id(), False, flags, sampling.trace_state
    )
    children = _Children(context, telemetry.provider.resource, telemetry.scope)
    task_end = max(task.ended_ns, task.started_ns)
    if operators is not None:
        _operator_spans(children, context, operators, "0", common, task.started_ns, task_end)
    for read in task.reads:
        start, end = _within(read.started_ns, read.ended_ns, task.started_ns, task_end)
        children.add(
            c.SPAN_READ,
            context,
            read_attributes(read, common),
            start,
            end,
            SpanKind.CLIENT,
            read.span_id,
        )
    status = Status(StatusCode.UNSET)
    events: tuple[Event, ...] = ()
    if task.status != "finished":
        attributes[c.TASK_ERROR] = task.error or task.status
    # ERROR only on a task whose own work failed: cancelled work is no error, and a task
    # stopped by its upstream's failure leaves the error to that task (one root cause).
    if task.status == "failed" and not task.upstream_failed:
        error_type = task.error_type or "failed"
        attributes[c.ERROR_TYPE] = error_type
        status = Status(StatusCode.ERROR, task.error or task.status)
        events = (
            Event(
                "exception",
                {"exception.type": error_type, "exception.message": task.error or task.status},
                timestamp=max(task.ended_ns, task.started_ns),
            ),
        )
    elif task.upstream_failed:
        attributes[c.TASK_UPSTREAM_FAILED] = True
    children.spans.append(
        ReadableSpan(
            c.SPAN_TASK,
            context=context,
            parent=parent_context,
            resource=children.resource,
            attributes={**sampling.attributes, **attributes} if sampling.attributes else attributes,
            events=events,
            kind=SpanKind.INTERNAL,
            status=status,
            start_time=task.started_ns,
            end_time=max(task.ended_ns, task.started_ns),
            instrumentation_scope=children.scope,
        )
    )
    telemetry.emit_finished(children.spans)
    return children.spans


class _Children:
    """Finished spans of one task: same trace, sampling, resource and scope."""

    ids = RandomIdGenerator()

    def __init__(
        self, task: SpanContext, resource: Resource, scope: InstrumentationScope | None
    ) -> None:
        self._trace_id = task.trace_id
        self._flags = task.trace_flags
        self._state = task.trace_state
        self.resource = resource
        self.scope = scope
        self.spans: list[ReadableSpan] = []

    def add(
        self,
        name: str,
        parent: SpanContext,
        attributes: dict[str, Any],
        start: int,
        end: int,
        kind: SpanKind = SpanKind.INTERNAL,
        span_id: int = 0,
    ) -> SpanContext:
        context = SpanContext(
            self._trace_id, span_id or self.ids.generate_span_id(), False, self._flags, self._state
        )
        self.spans.append(
            ReadableSpan(
                name,
                context=context,
                parent=parent,
                resource=self.resource,
                attributes=attributes,
                kind=kind,
                start_time=start,
                end_time=max(end, start),
                instrumentation_scope=self.scope,
            )
        )
        return context


def read_attributes(read: ReadRecord, common: dict[str, object]) -> dict[str, Any]:
    """The attributes of the span of one upstream bucket read (a Flight ``DoGet`` call)."""
    attributes = {
        **common,
        **rpc.client_attributes(read.endpoint, rpc.DO_GET),
        c.READ_ENDPOINT: read.endpoint,
        c.READ_STAGE_ID: read.stage_id,
        c.READ_TASK_INDEX: read.task_index,
        c.READ_BUCKET: read.bucket,
        c.READ_ROWS: read.rows,
        c.READ_BATCHES: read.batches,
        c.READ_BYTES: read.bytes,
        c.READ_BLOCKED_NS: read.blocked_ns,
        c.READ_TELEMETRY_BYTES: read.telemetry_bytes,
    }
    if read.first_batch_ns is not None:
        attributes[c.READ_FIRST_BATCH_NS] = read.first_batch_ns
    if read.grpc_status_code is not None:
        attributes[rpc.RPC_GRPC_STATUS_CODE] = read.grpc_status_code
    return attributes


def record_read_span(
    telemetry: Telemetry, parent: SpanContext, read: ReadRecord, common: dict[str, object]
) -> ReadableSpan | None:
    """The CLIENT span of one of the coordinator's reads of the root stage, child of the
    stage span ``parent`` and inside its time; handed to the span processors. None when
    ``parent`` is not recorded (the sampler recorded nothing)."""
    if telemetry.provider is None or not parent.is_valid:
        return None
    children = _Children(parent, telemetry.provider.resource, telemetry.scope)
    end = max(read.ended_ns, read.started_ns)
    children.add(
        c.SPAN_READ,
        parent,
        read_attributes(read, common),
        read.started_ns,
        end,
        SpanKind.CLIENT,
        read.span_id,
    )
    telemetry.emit_finished(children.spans)
    return children.spans[0]


def _operator_spans(
    children: _Children,
    parent: SpanContext,
    operator: OperatorMetrics,
    path: str,
    common: dict[str, object],
    parent_start: int,
    parent_end: int,
) -> None:
    attributes: dict[str, Any] = {
        **common,
        c.OPERATOR_NAME: operator.name,
        c.OPERATOR_DISPLAY: operator.display,
        c.OPERATOR_PATH: path,
    }
    for name, total in operator.totals.items():
        attributes[c.METRIC_PREFIX + name] = total
    for name, values in operator.per_partition.items():
        attributes[c.METRIC_PREFIX + name + c.PARTITIONS_SUFFIX] = values
    # An operator without timestamps (an in-memory input) spans its parent; DataFusion's own
    # timestamps are clamped into the parent's (a child is executed, so stamped, before the
    # parent that calls it), so every span lies inside its parent's time.
    start, end = _within(
        operator.start_ns or parent_start, operator.end_ns or parent_end, parent_start, parent_end
    )
    context = children.add(operator.name, parent, attributes, start, end)
    for index, child in enumerate(operator.children):
        _operator_spans(children, context, child, f"{path}.{index}", common, start, end)


def _within(start: int, end: int, parent_start: int, parent_end: int) -> tuple[int, int]:
    """``[start, end]`` clamped into ``[parent_start, parent_end]`` (and ``end >= start``)."""
    start = min(max(start, parent_start), parent_end)
    return start, min(max(end, start), parent_end)


def _ns(value: dt.datetime) -> int:
    return int(value.timestamp() * 1_000_000) * 1000
