"""The distributed plan: a DAG of stages, each run as tasks over files or upstream buckets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from otel_dist.protocol import OutputPartitioning


@dataclass(frozen=True)
class FileScan:
    """A leaf stage's table, its files split into one group per task."""

    table_name: str
    groups: tuple[tuple[str, ...], ...]
    scan_bytes: int = 0  # estimated bytes of the columns the stage reads (parquet metadata)


@dataclass(frozen=True)
class RangeScan:
    """A table a leaf stage reads beside its ``FileScan``, split to match it: task ``i`` reads
    ``groups[i]``, keeping only the rows whose ``column`` is in one of ``bounds[i]`` (each
    ``[low, high)``, None for no bound), the key ranges of the ``FileScan``'s group ``i``."""

    table_name: str
    column: str
    groups: tuple[tuple[str, ...], ...]
    bounds: tuple[tuple[tuple[int | None, int | None], ...], ...]
    scan_bytes: int = 0


@dataclass(frozen=True)
class LocalScan:
    """A small table every task of a stage reads whole from its files, rather than receiving
    it from a stage of its own (see ``LOCAL_SCAN_BYTES`` in ``planner/joins.py``)."""

    table_name: str
    files: tuple[str, ...]
    scan_bytes: int = 0  # estimated bytes of the columns the stage reads (parquet metadata)


@dataclass(frozen=True)
class StageInput:
    """An upstream stage a stage reads, under the table name its SQL uses."""

    table_name: str
    stage_id: int
    row_ids: bool = False


@dataclass
class Stage:
    """One stage: the same work run by ``task_count`` tasks, each over its own partition group.
    ``plan`` is that work as a serialized Substrait plan over the stage's inputs; ``sql`` is
    then only its display (what EXPLAIN and the stage span show). Fallback stages have no
    plan and run ``sql``."""

    stage_id: int
    kind: str
    sql: str
    task_count: int
    output: OutputPartitioning
    schema: pa.Schema
    file_scan: FileScan | None = None
    inputs: tuple[StageInput, ...] = ()
    local_scans: tuple[LocalScan, ...] = ()
    range_scans: tuple[RangeScan, ...] = ()
    fallback_reason: str | None = None
    strategy: str = ""  # how the stage is partitioned and why, for EXPLAIN
    plan: bytes = b""  # Substrait

    @property
    def is_fallback(self) -> bool:
        return self.fallback_reason is not None


@dataclass
class DistributedPlan:
    """Stages in dependency order; the last one is the root whose tasks the coordinator reads."""

    sql: str
    stages: list[Stage]
    output_schema: pa.Schema
    strategy: str
    # The schema of every table the stages read from files, as the planning session has it: a
    # task registers its files with it instead of reading their footers to infer it again.
    table_schemas: dict[str, pa.Schema] = field(default_factory=dict)

    def file_tables(self) -> set[str]:
        """The tables some stage reads from their files."""
        return {
            scan.table_name
            for stage in self.stages
            for scan in (
                *((stage.file_scan,) if stage.file_scan else ()),
                *stage.range_scans,
                *stage.local_scans,
            )
        }

    @property
    def root(self) -> Stage:
        return self.stages[-1]

    def stage(self, stage_id: int) -> Stage:
        return next(stage for stage in self.stages if stage.stage_id == stage_id)

    def consumers(self, stage_id: int) -> list[Stage]:
        return [s for s in self.stages if any(i.stage_id == stage_id for i in s.inputs)]

    def describe(self) -> str:
        """A plain-text outline of the distributed plan, as EXPLAIN shows it."""
        lines = [f"DistributedPlan: strategy={self.strategy}, stages={len(self.stages)}"]
        for stage in reversed(self.stages):
            reads = ", ".join(f"{i.table_name}<-stage {i.stage_id}" for i in stage.inputs)
            scan = f" scan={stage.file_scan.table_name}" if stage.file_scan else ""
            scan += "".join(
                f" range={ranged.table_name}({ranged.column})" for ranged in stage.range_scans
            )
            scan += "".join(f" local={local.table_name}" for local in stage.local_scans)
            fallback = (
                f" [single-task fallback: {stage.fallback_reason}]" if stage.is_fallback else ""
            )
            lines.append(
                f"Stage {stage.stage_id} ── {stage.kind}, tasks={stage.task_count}, "
                f"output={stage.output.describe()}{scan}{' reads=' + reads if reads else ''}"
                f"{fallback}"
            )
            if stage.strategy:
                lines.append(f"    why: {stage.strategy}")
            lines.append(f"    sql: {stage.sql}")
        return "\n".join(lines)
