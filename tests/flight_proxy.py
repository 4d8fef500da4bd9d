"""A Flight proxy for fault and streaming tests: forwards calls to one upstream Flight server,
can damage the telemetry message at the end of every stream, as a faulty network or peer
would, and can slow every data batch down, recording when it forwarded each."""

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
    ``spared_stage``)."""

    def __init__(
        self, upstream: str, corrupt_telemetry: bool = False, delay_s: float = 0.0
    ) -> None:
        super().__init__(location="grpc://127.0.0.1:0")
        self.url = f"grpc://127.0.0.1:{self.port}"
        self.upstream = flight.FlightClient(upstream)
        self.corrupt_telemetry = corrupt_telemetry
        self.corrupted = 0
        self.delay_s = delay_s
        self.forwarded: list[Forwarded] = []
        self.spared_stage: int | None = None

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
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
