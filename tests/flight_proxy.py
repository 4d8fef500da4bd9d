"""A Flight proxy for fault tests: forwards calls to one upstream Flight server and can damage
the telemetry message at the end of every stream, as a faulty network or peer would."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight


class FlightProxy(flight.FlightServerBase):
    """Forwards ``do_get`` and ``do_action`` to ``upstream``; with ``corrupt_telemetry`` the
    app_metadata of zero-row messages is replaced by garbage of the same length."""

    def __init__(self, upstream: str, corrupt_telemetry: bool = False) -> None:
        super().__init__(location="grpc://127.0.0.1:0")
        self.url = f"grpc://127.0.0.1:{self.port}"
        self.upstream = flight.FlightClient(upstream)
        self.corrupt_telemetry = corrupt_telemetry
        self.corrupted = 0

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        reader = self.upstream.do_get(ticket)
        return flight.GeneratorStream(reader.schema, self._forward(reader))

    def _forward(
        self, reader: flight.FlightStreamReader
    ) -> Iterator[pa.RecordBatch | tuple[pa.RecordBatch, pa.Buffer]]:
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return
            metadata = chunk.app_metadata
            if metadata is None:
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
