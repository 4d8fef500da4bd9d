"""The wire protocol: a task spec survives its JSON round trip with every field."""

from __future__ import annotations

import pyarrow as pa

from otel_dist.protocol import (
    BucketSource,
    BucketTicket,
    OutputPartitioning,
    TaskInput,
    TaskSpec,
    encode_schema,
)


def test_task_spec_round_trip_keeps_every_field() -> None:
    schema = encode_schema(pa.schema([("a", pa.int64()), ("b", pa.string())]))
    spec = TaskSpec(
        query_id="q1",
        stage_id=3,
        task_index=1,
        task_count=2,
        sql="SELECT a, b FROM t",
        inputs=(
            TaskInput("fact", files=("/data/t/1.parquet", "/data/t/2.parquet")),
            TaskInput(
                "__input",
                sources=(BucketSource("grpc://127.0.0.1:1", 2, 0, 1),),
                schema_ipc=schema,
                row_ids=True,
            ),
        ),
        output=OutputPartitioning("hash", 3, ("a",)),
        output_schema_ipc=schema,
        worker_url="grpc://127.0.0.1:2",
        partitions=(1,),
        trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    )
    assert TaskSpec.from_json(spec.to_json()) == spec


def test_bucket_ticket_round_trip() -> None:
    ticket = BucketTicket("q1", 2, 1, 0)
    assert BucketTicket.from_bytes(ticket.to_bytes()) == ticket
