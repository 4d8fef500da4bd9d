"""The in-band telemetry envelope carried in the final Flight message of a bucket stream.

Layout: 4 magic bytes ``ODT\\x02`` (otel_dist telemetry, version 2), a 4-byte big-endian header
length, a JSON header, then the spans: one serialized OTLP ``ExportTraceServiceRequest`` per
task, one after the other. Serialized requests concatenate into one valid request, so the
payload as a whole is the OTLP request of every task it carries.

The header names the query and, for each chunk of the payload, the task whose spans it holds
and its length in bytes (a chunk of stage and task ``-1`` holds spans of no single task, such
as a whole query's). So a worker forwarding what its upstream tasks sent cuts the payload
into tasks and joins it again without parsing a span; only the coordinator parses them.

Decoding validates the header and the chunk lengths and raises ``EnvelopeError`` with a
one-line reason; the chunks' protobuf is parsed (and validated) by whoever reads the spans.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

MAGIC = b"ODT\x02"
# Sent right after a bucket's last data batch, before the (slower) telemetry message, so a
# reader can stop waiting for data while the telemetry still arrives on the same stream.
DATA_END = b"ODT\x00END"
VERSION = 2
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


NO_TASK = TaskRef(-1, -1)  # the owner of spans that belong to no single task


@dataclass(frozen=True)
class Envelope:
    """Telemetry of one query: each chunk is one task's spans, a serialized OTLP request."""

    query_id: str
    chunks: tuple[tuple[TaskRef, bytes], ...]
    truncated: bool = False

    @property
    def tasks(self) -> tuple[TaskRef, ...]:
        return tuple(task for task, _ in self.chunks if task != NO_TASK)

    def request(self) -> ExportTraceServiceRequest:
        """Every chunk's spans as one parsed request."""
        return decode_request(b"".join(chunk for _, chunk in self.chunks))


def encode(
    query_id: str, chunks: Sequence[tuple[TaskRef, bytes]], truncated: bool = False
) -> bytes:
    """An envelope around chunks of serialized ``ExportTraceServiceRequest``s."""
    header = json.dumps(
        {
            "v": VERSION,
            "query_id": query_id,
            "chunks": [[task.stage_id, task.task_index, len(chunk)] for task, chunk in chunks],
            "truncated": truncated,
        },
        separators=(",", ":"),
    ).encode()
    return b"".join((MAGIC, _LENGTH.pack(len(header)), header, *(chunk for _, chunk in chunks)))


def decode(data: bytes) -> Envelope:
    """The envelope's query, chunks and truncated flag; the chunks are not parsed."""
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
        if not isinstance(query_id, str):
            raise EnvelopeError("telemetry envelope query id is not a string")
        position = start + header_length
        chunks: list[tuple[TaskRef, bytes]] = []
        for stage_id, task_index, size in header["chunks"]:
            if not all(type(v) is int for v in (stage_id, task_index, size)) or size < 0:
                raise EnvelopeError("telemetry envelope chunk is not three integers")
            if position + size > len(data):
                raise EnvelopeError("telemetry envelope chunks exceed the message")
            chunks.append((TaskRef(stage_id, task_index), bytes(data[position : position + size])))
            position += size
        if position != len(data):
            raise EnvelopeError("telemetry envelope has bytes after its chunks")
        truncated = header.get("truncated", False)
        if not isinstance(truncated, bool):
            raise EnvelopeError("telemetry envelope truncated flag is not a boolean")
    except EnvelopeError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise EnvelopeError(f"malformed telemetry envelope header: {error}") from None
    return Envelope(query_id, tuple(chunks), truncated)


def decode_request(payload: bytes) -> ExportTraceServiceRequest:
    """Serialized OTLP spans (one chunk, or several joined) as a request."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(payload)
    except (DecodeError, RuntimeWarning, ValueError) as error:
        raise EnvelopeError(f"malformed OTLP payload in telemetry envelope: {error}") from None
    return request
