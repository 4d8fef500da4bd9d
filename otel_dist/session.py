"""DataFusion session set-up shared by the coordinator, the workers and the single-node oracle."""

from __future__ import annotations

import pyarrow as pa
from datafusion import RuntimeEnvBuilder, SessionConfig, SessionContext, SQLOptions

DEFAULT_TARGET_PARTITIONS = 2
# Rows per batch, DataFusion's default being 8192. Every batch a worker exchanges crosses Python
# a few times (drain, hash partition, bucket, Flight, reader), so at TPC-H SF 1 the larger
# batches took a fifth off the distributed queries' time, and 5% off single-node DataFusion's.
DEFAULT_BATCH_SIZE = 32_768

# Only queries run anywhere: DDL would change a session (CREATE EXTERNAL TABLE ... LOCATION
# '/etc/passwd'), DML and COPY would write files.
QUERY_ONLY = SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)


def new_session(
    target_partitions: int = DEFAULT_TARGET_PARTITIONS,
    runtime: RuntimeEnvBuilder | None = None,
    pool_bytes: int | None = None,
) -> SessionContext:
    """A DataFusion session with otel_dist's settings (partitions sized for small machines,
    larger batches); single-node DataFusion, the oracle and the benchmark baseline, uses it too.
    ``runtime``: its memory pool (of ``pool_bytes``) and spill folder (workers bound each
    task's memory); a sort keeps an eighth of the pool, at most DataFusion's 10 MiB, for
    merging what it spilled."""
    config = (
        SessionConfig()
        .with_target_partitions(max(1, target_partitions))
        .with_batch_size(DEFAULT_BATCH_SIZE)
        .set("datafusion.sql_parser.map_string_types_to_utf8view", "false")
    )
    if pool_bytes is not None:
        reserve = max(64 << 10, min(10 << 20, pool_bytes // 8))
        config = config.set("datafusion.execution.sort_spill_reservation_bytes", str(reserve))
    return SessionContext(config, runtime)


_VIEW_TYPES: dict[pa.DataType, pa.DataType] = {
    pa.string_view(): pa.string(),
    pa.binary_view(): pa.binary(),
}


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """The schema with Arrow view types replaced by their plain equivalents.

    Exchanged data uses plain types because pyarrow's take/filter kernels do not support views.
    """
    return pa.schema(
        [field.with_type(_VIEW_TYPES.get(field.type, field.type)) for field in schema],
        metadata=schema.metadata,
    )


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Rename and cast a batch, column by position, to the declared schema."""
    if batch.schema.equals(schema):
        return batch
    columns = [
        column if column.type == field.type else column.cast(field.type)
        for column, field in zip(batch.columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
