"""The in-band telemetry envelope carried in the final Flight message of a bucket stream.

Layout: 4 magic bytes ``ODT\\x01`` (otel_dist telemetry, version 1), a 4-byte big-endian header
length, a JSON header naming the query and the tasks whose spans follow, then an OTLP
``ExportTraceServiceRequest`` in protobuf. Decoding validates every part and raises
``EnvelopeError`` with a one-line reason; it never returns half-parsed data.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

MAGIC = b"ODT\x01"
# Sent right after a bucket's last data batch, before the (slower) telemetry message, so a
# reader can stop waiting for data while the telemetry still arrives on the same stream.
DATA_END = b"ODT\x00END"
VERSION = 1
MAX_HEADER_BYTES = 1 << 20
_LENGTH = struct.Struct(">I")


class EnvelopeError(ValueError):
    """Bytes that are not a valid telemetry envelope."""


@dataclass(frozen=True, order=True)
class TaskRef:
    """A task of a query, as telemetry names it."""

    stage_id: int
    task_index: int

    def __str__(self) -> str:
        return f"{self.stage_id}/{self.task_index}"


@dataclass(frozen=True)
class Envelope:
    """Telemetry of one or more tasks of one query."""

    query_id: str
    tasks: tuple[TaskRef, ...]
    request: ExportTraceServiceRequest
    truncated: bool = False
    # The request as it was received (``decode``), so it can be passed on without encoding it
    # again; empty when the envelope was built in this process.
    payload: bytes = field(default=b"", compare=False, repr=False)


def encode(envelope: Envelope) -> bytes:
    return encode_payload(
        envelope.query_id,
        envelope.tasks,
        envelope.request.SerializeToString(),
        envelope.truncated,
    )


def encode_payload(
    query_id: str, tasks: tuple[TaskRef, ...], payload: bytes, truncated: bool = False
) -> bytes:
    """An envelope around an already serialized ``ExportTraceServiceRequest``."""
    header = json.dumps(
        {
            "v": VERSION,
            "query_id": query_id,
            "tasks": [[t.stage_id, t.task_index] for t in tasks],
            "truncated": truncated,
        },
        separators=(",", ":"),
    ).encode()
    return b"".join((MAGIC, _LENGTH.pack(len(header)), header, payload))


def decode(data: bytes) -> Envelope:
    query_id, tasks, truncated, payload = decode_header(data)
    return Envelope(query_id, tasks, decode_payload(payload), truncated, payload)


def decode_header(data: bytes) -> tuple[str, tuple[TaskRef, ...], bool, bytes]:
    """The query id, tasks and truncated flag of an envelope, and its payload unparsed."""
    if len(data) < len(MAGIC) + _LENGTH.size or not data.startswith(MAGIC):
        raise EnvelopeError("not an otel_dist telemetry envelope (bad magic)")
    (header_length,) = _LENGTH.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    if header_length > MAX_HEADER_BYTES or start + header_length > len(data):
        raise EnvelopeError("telemetry envelope header length out of range")
    try:
        header = json.loads(data[start : start + header_length])
        if not isinstance(header, dict) or header.get("v") != VERSION:
            raise EnvelopeError("unsupported telemetry envelope version")
        query_id = header["query_id"]
        tasks = tuple(TaskRef(int(s), int(t)) for s, t in header["tasks"])
        truncated = bool(header.get("truncated", False))
        if not isinstance(query_id, str):
            raise EnvelopeError("telemetry envelope query id is not a string")
    except EnvelopeError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise EnvelopeError(f"malformed telemetry envelope header: {error}") from None
    return query_id, tasks, truncated, bytes(data[start + header_length :])


def decode_payload(payload: bytes) -> ExportTraceServiceRequest:
    """An envelope's payload (or a part of it made of whole ``resource_spans`` fields)."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(payload)
    except (DecodeError, RuntimeWarning, ValueError) as error:
        raise EnvelopeError(f"malformed OTLP payload in telemetry envelope: {error}") from None
    return request
