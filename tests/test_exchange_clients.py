"""The shared Flight clients' flow control: a slow reader holds a bounded number of batches,
whatever gRPC's bandwidth probing would have estimated (a real Flight server on 127.0.0.1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight

from otel_dist.exchange.clients import STREAM_WINDOW_BYTES, new_client

BATCH = pa.record_batch([pa.array(range(512 * 1024), pa.int64())], names=["x"])  # 4 MiB
BATCHES = 100


class CountingServer(flight.FlightServerBase):
    """Streams ``BATCHES`` batches as fast as gRPC takes them, counting what it handed over."""

    def __init__(self) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.produced = 0

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.GeneratorStream:
        def batches() -> Iterator[pa.RecordBatch]:
            for number in range(BATCHES):
                self.produced = number + 1
                yield BATCH

        return flight.GeneratorStream(BATCH.schema, batches())


def test_a_slow_reader_holds_a_few_batches_not_what_the_sender_could_push() -> None:
    """With gRPC's bandwidth-delay probing the receive window grows (to 28 MB here on a quiet
    machine, up to 1 GiB on a loaded one); the fixed window keeps the sender within it."""
    server = CountingServer()
    threading.Thread(target=server.serve, daemon=True).start()
    try:
        reader = new_client(f"127.0.0.1:{server.port}").do_get(flight.Ticket(b"all"))
        ahead = 0
        for read in range(1, BATCHES + 1):
            reader.read_chunk()
            ahead = max(ahead, server.produced - read)
            time.sleep(0.02)  # a reader slower than the sender
        window_batches = STREAM_WINDOW_BYTES // BATCH.nbytes
        assert 0 < ahead <= window_batches + 1, ahead
    finally:
        server.shutdown()
