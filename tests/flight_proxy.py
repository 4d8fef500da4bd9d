"""A Flight proxy for fault and streaming tests: forwards calls to one upstream Flight server,
can damage the telemetry message at the end of every stream, as a faulty network or peer
would, can slow every data batch down, recording when it forwarded each, and can refuse the
first read of every bucket with UNAVAILABLE, as a connection reset before any data does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.flight as flight

from otel_dist.protocol import BucketTicket


@dataclass(frozen=True)
class Forwarded:
    """One data batch the proxy forwarded: when (monotonic seconds), of which stage."""

    at_s: float
    stage_id: int
    rows: int


class FlightProxy(flight.FlightServerBase):
    """Forwards ``do_get`` and ``do_action`` to ``upstream``; with ``corrupt_telemetry`` the
    app_metadata of zero-row messages is replaced by garbage of the same length; with
    ``delay_s`` each data batch waits that long before it is forwarded (except the batches of
    ``spared_stage``); with ``refuse_first_reads`` the first ``do_get`` of every ticket fails
    with UNAVAILABLE before sending anything."""

    def __init__(
        self,
        upstream: str,
        corrupt_telemetry: bool = False,
        delay_s: float = 0.0,
        refuse_first_reads: bool = False,
    ) -> None:
        super().__init__(location="grpc://127.0.0.1:0")
        self.url = f"grpc://127.0.0.1:{self.port}"
        self.upstream = flight.FlightClient(upstream)
        self.corrupt_telemetry = corrupt_telemetry
        self.corrupted = 0
        self.delay_s = delay_s
        self.forwarded: list[Forwarded] = []
        self.spared_stage: int | None = None
        self.refuse_first_reads = refuse_first_reads
        self.refused: set[bytes] = set()

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        if self.refuse_first_reads and ticket.ticket not in self.refused:
            self.refused.add(ticket.ticket)
            raise flight.FlightUnavailableError("unavailable: connection reset by the proxy")
        reader = self.upstream.do_get(ticket)
        stage_id = BucketTicket.from_bytes(ticket.ticket).stage_id
        return flight.GeneratorStream(reader.schema, self._forward(reader, stage_id))

    def _forward(
        self, reader: flight.FlightStreamReader, stage_id: int
    ) -> Iterator[pa.RecordBatch | tuple[pa.RecordBatch, pa.Buffer]]:
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return
            metadata = chunk.app_metadata
            if metadata is None:
                if chunk.data.num_rows and self.delay_s and stage_id != self.spared_stage:
                    time.sleep(self.delay_s)
                self.forwarded.append(Forwarded(time.monotonic(), stage_id, chunk.data.num_rows))
                yield chunk.data
                continue
            if self.corrupt_telemetry and chunk.data.num_rows == 0:
                self.corrupted += 1
                metadata = pa.py_buffer(bytes(b ^ 0x5A for b in metadata.to_pybytes()))
            yield chunk.data, metadata

    def do_action(
        self, context: flight.ServerCallContext, action: flight.Action
    ) -> Iterator[bytes]:
        return iter([result.body.to_pybytes() for result in self.upstream.do_action(action)])
