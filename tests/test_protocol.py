"""The wire protocol: a task spec survives its JSON round trip with every field, and a
submission (one worker's tasks of one query) is taken whole or refused with a reason."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pytest

from otel_dist.protocol import (
    MAX_SUBMISSION_TASKS,
    BucketSource,
    BucketTicket,
    OutputPartitioning,
    ProtocolError,
    TaskInput,
    TaskSpec,
    decode_submission,
    encode_schema,
    encode_submission,
)


def test_task_spec_round_trip_keeps_every_field() -> None:
    spec = _spec()
    assert TaskSpec.from_json(spec.to_json()) == spec
    ranged = dataclasses.replace(
        spec, output=OutputPartitioning("range", 2, ("a",), (((None, 5),), ((5, None),)))
    )
    assert TaskSpec.from_json(ranged.to_json()) == ranged
    unmatched = dataclasses.replace(
        spec, output=OutputPartitioning("range", 3, ("a",), (((None, 5),), ((5, None),)))
    )
    with pytest.raises(ProtocolError, match="bounds for each bucket"):
        TaskSpec.from_json(unmatched.to_json())


def test_submission_round_trip_keeps_every_task_in_order() -> None:
    specs = [dataclasses.replace(_spec(), task_index=i, task_count=3) for i in (2, 0, 1)]
    assert decode_submission(encode_submission(specs)) == specs


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "not a JSON object"),
        (b"{}", "'tasks' is not a list"),
        (b'{"tasks": []}', "'tasks' is not a list"),
        (b'{"tasks": {}}', "'tasks' is not a list"),
        (b'{"tasks": [1]}', "task spec: not a JSON object"),
        (b'{"tasks": [{"sql": "select 1"}]}', "malformed task spec"),
    ],
)
def test_a_malformed_submission_is_refused_with_its_reason(body: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_submission(body)


def test_a_submission_holds_one_query_and_a_bounded_number_of_tasks() -> None:
    spec = _spec()
    other_query = dataclasses.replace(spec, query_id="q2")
    with pytest.raises(ProtocolError, match="more than one query"):
        decode_submission(encode_submission([spec, other_query]))
    too_many = json.dumps({"tasks": [{}] * (MAX_SUBMISSION_TASKS + 1)}).encode()
    with pytest.raises(ProtocolError, match="'tasks' is not a list of 1 to"):
        decode_submission(too_many)


def _spec() -> TaskSpec:
    schema = encode_schema(pa.schema([("a", pa.int64()), ("b", pa.string())]))
    return TaskSpec(
        query_id="q1",
        stage_id=3,
        task_index=1,
        task_count=2,
        sql="SELECT a, b FROM t",
        inputs=(
            TaskInput("fact", files=("/data/t/1.parquet", "/data/t/2.parquet")),
            TaskInput(
                "ranged",
                files=("/data/r/1.parquet",),
                key_column="r_key",
                key_bounds=((None, 10), (20, None)),
            ),
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


def test_bucket_ticket_round_trip() -> None:
    ticket = BucketTicket("q1", 2, 1, 0)
    assert BucketTicket.from_bytes(ticket.to_bytes()) == ticket
