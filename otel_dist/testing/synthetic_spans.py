"""Synthetic span sets shaped like a real query's, for explain-tree build benchmarks."""

from __future__ import annotations

import itertools

from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.otlp import SpanRecord

_OPERATORS = ("ProjectionExec", "AggregateExec", "RepartitionExec", "FilterExec", "DataSourceExec")


def synthetic_query_spans(
    span_count: int, stages: int = 4, query_id: str = "synthetic"
) -> list[SpanRecord]:
    """About ``span_count`` spans: a query, ``stages`` chained stages, and tasks of
    ``len(_OPERATORS)`` nested operators plus one read each, with varied durations."""
    per_task = len(_OPERATORS) + 2
    tasks_per_stage = max(1, (span_count - 1 - stages) // (stages * per_task))
    ids = (f"{n:016x}" for n in itertools.count(1))
    trace_id = "ab" * 16
    base = 1_700_000_000_000_000_000
    spans: list[SpanRecord] = []

    def add(name: str, parent: str, start: int, end: int, attributes: dict[str, object]) -> str:
        span_id = next(ids)
        spans.append(
            SpanRecord(
                name=name,
                trace_id=trace_id,
                span_id=span_id,
                parent_span_id=parent,
                start_ns=start,
                end_ns=end,
                attributes={c.QUERY_ID: query_id, **attributes},
                resource={"service.name": "otel-dist-worker"},
                status_code=0,
                events=(),
            )
        )
        return span_id

    query = add(c.SPAN_QUERY, "", base, base + 10**9, {c.DB_QUERY_TEXT: "select 1"})
    parent = query
    for stage_id in range(stages, 0, -1):
        inputs = [stage_id - 1] if stage_id > 1 else []
        stage = add(
            c.SPAN_STAGE,
            parent,
            base,
            base + 10**9,
            {
                c.STAGE_ID: stage_id,
                c.STAGE_TASK_COUNT: tasks_per_stage,
                c.STAGE_PARTITIONING: "single",
                c.STAGE_KIND: "synthetic",
                c.STAGE_INPUTS: tuple(inputs),
            },
        )
        for task_index in range(tasks_per_stage):
            duration = 10**6 * (10 + (task_index * 7919) % 23)
            common = {c.STAGE_ID: stage_id, c.TASK_INDEX: task_index}
            task = add(
                c.SPAN_TASK,
                stage,
                base,
                base + duration,
                {
                    **common,
                    c.TASK_PARTITIONS: (task_index,),
                    c.WORKER_URL: f"grpc://10.0.0.{task_index % 3 + 1}:50051",
                    c.TASK_STATUS: "finished",
                    c.TASK_OUTPUT_ROWS: 1000 + task_index,
                    c.TASK_OUTPUT_BYTES: 8000 + task_index,
                },
            )
            operator_parent, path = task, "0"
            for name in _OPERATORS:
                operator_parent = add(
                    name,
                    operator_parent,
                    base,
                    base + duration,
                    {
                        **common,
                        c.OPERATOR_NAME: name,
                        c.OPERATOR_DISPLAY: f"{name}: synthetic",
                        c.OPERATOR_PATH: path,
                        c.METRIC_PREFIX + "output_rows": 1000 + task_index,
                        c.METRIC_PREFIX + "elapsed_compute": duration // 2,
                    },
                )
                path += ".0"
            add(c.SPAN_READ, task, base, base + duration, {**common, c.READ_ROWS: 10})
        parent = stage
    return spans
