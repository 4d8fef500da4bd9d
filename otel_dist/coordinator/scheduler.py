"""Assign a distributed plan's tasks to workers: round-robin over the healthy worker list."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from otel_dist.planner.model import DistributedPlan, Stage
from otel_dist.protocol import (
    MAX_TASK_THREADS,
    BucketSource,
    TaskInput,
    TaskSpec,
    encode_schema,
)


@dataclass(frozen=True)
class TaskAssignment:
    """Where one task runs and what it owns."""

    stage_id: int
    task_index: int
    worker_url: str


def assign(plan: DistributedPlan, workers: list[str]) -> dict[tuple[int, int], str]:
    """Map (stage id, task index) to a worker URL, continuing round-robin across stages."""
    if not workers:
        raise ValueError("no workers to schedule on")
    placement: dict[tuple[int, int], str] = {}
    cursor = 0
    for stage in plan.stages:
        for task_index in range(stage.task_count):
            placement[(stage.stage_id, task_index)] = workers[cursor % len(workers)]
            cursor += 1
    return placement


def task_specs(
    plan: DistributedPlan,
    query_id: str,
    placement: dict[tuple[int, int], str],
    trace_contexts: dict[int, dict[str, str]] | None = None,
    target_partitions: int = 0,
) -> list[TaskSpec]:
    """Every task of the plan as a spec, upstream stages first, each with its stage's
    W3C trace context so the task span becomes a child of the stage span. With
    ``target_partitions`` (the workers' partitions a task), a scan stage of fewer tasks than
    workers runs each with the idle workers' partitions too (``scan_threads``)."""
    specs: list[TaskSpec] = []
    workers = len(set(placement.values()))
    readers = _telemetry_readers(plan)
    plan_text = {s.stage_id: base64.b64encode(s.plan).decode() for s in plan.stages}
    # Each schema is encoded once per query, not once per task that carries it.
    schema_text = {s.stage_id: encode_schema(s.schema) for s in plan.stages}
    table_text = {name: encode_schema(schema) for name, schema in plan.table_schemas.items()}
    for stage in plan.stages:
        for task_index in range(stage.task_count):
            specs.append(
                TaskSpec(
                    query_id=query_id,
                    stage_id=stage.stage_id,
                    task_index=task_index,
                    task_count=stage.task_count,
                    sql="" if stage.plan else stage.sql,
                    plan=plan_text[stage.stage_id],
                    inputs=_inputs(
                        plan, stage, task_index, placement, readers, schema_text, table_text
                    ),
                    output=stage.output,
                    output_schema_ipc=schema_text[stage.stage_id],
                    worker_url=placement[(stage.stage_id, task_index)],
                    partitions=partitions_of(stage, task_index),
                    trace_context=dict((trace_contexts or {}).get(stage.stage_id, {})),
                    threads=scan_threads(stage, workers, target_partitions),
                )
            )
    return specs


def scan_threads(stage: Stage, workers: int, target_partitions: int) -> int:
    """DataFusion partitions for each task of a scan stage with fewer tasks than workers
    (0, the worker's own setting, otherwise): a table too small to split into a task per
    worker (``min_task_bytes``) is still scanned with the cluster's threads. At TPC-H SF 1,
    Q4's one lineitem task took 700 ms on one thread, single-node DataFusion the whole
    query 224 ms on three."""
    if stage.file_scan is None or target_partitions <= 0 or stage.task_count >= workers:
        return 0
    return min(MAX_TASK_THREADS, target_partitions * (workers // stage.task_count))


def partitions_of(stage: Stage, task_index: int) -> tuple[int, ...]:
    """The partition group a task owns: file indices for a leaf, its bucket otherwise."""
    if stage.file_scan is not None:
        offset = sum(len(group) for group in stage.file_scan.groups[:task_index])
        return tuple(range(offset, offset + len(stage.file_scan.groups[task_index])))
    return (task_index,)


def _inputs(
    plan: DistributedPlan,
    stage: Stage,
    task_index: int,
    placement: dict[tuple[int, int], str],
    readers: dict[int, tuple[int, int]],
    schema_text: dict[int, str],
    table_text: dict[str, str],
) -> tuple[TaskInput, ...]:
    """The task's inputs; ``schema_text`` and ``table_text``: each stage's and each file
    table's schema, encoded (empty for a table: the worker infers it)."""
    inputs: list[TaskInput] = []
    if stage.file_scan is not None:
        table = stage.file_scan.table_name
        inputs.append(
            TaskInput(
                table,
                files=stage.file_scan.groups[task_index],
                schema_ipc=table_text.get(table, ""),
            )
        )
    inputs.extend(
        TaskInput(
            ranged.table_name,
            files=ranged.groups[task_index],
            schema_ipc=table_text.get(ranged.table_name, ""),
            key_column=ranged.column,
            key_bounds=ranged.bounds[task_index],
        )
        for ranged in stage.range_scans
    )
    inputs.extend(
        TaskInput(
            local.table_name, files=local.files, schema_ipc=table_text.get(local.table_name, "")
        )
        for local in stage.local_scans
    )
    for position, stage_input in enumerate(stage.inputs):
        upstream = plan.stage(stage_input.stage_id)
        bucket = task_index if upstream.output.kind in ("hash", "range") else 0
        reads_telemetry = readers.get(upstream.stage_id) == (stage.stage_id, position)
        sources = tuple(
            BucketSource(
                placement[(upstream.stage_id, t)],
                upstream.stage_id,
                t,
                bucket,
                telemetry=reads_telemetry and t % stage.task_count == task_index,
            )
            for t in range(upstream.task_count)
        )
        inputs.append(
            TaskInput(
                stage_input.table_name,
                sources=sources,
                schema_ipc=schema_text[upstream.stage_id],
                row_ids=stage_input.row_ids,
            )
        )
    return tuple(inputs)


def _telemetry_readers(plan: DistributedPlan) -> dict[int, tuple[int, int]]:
    """Per stage, which input (consumer stage id, position among its inputs) reading its output
    gets its tasks' telemetry: the first one. Of that consumer's tasks, task ``t % task_count``
    reads upstream task ``t``'s, so each task's telemetry reaches one reader, spread evenly."""
    readers: dict[int, tuple[int, int]] = {}
    for consumer in plan.stages:
        for position, stage_input in enumerate(consumer.inputs):
            readers.setdefault(stage_input.stage_id, (consumer.stage_id, position))
    return readers
