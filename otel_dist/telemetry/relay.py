"""Relay mode: the coordinator re-exports the worker spans it received in-band, for workers
that cannot reach a collector (``OTEL_DIST_RELAY=true``).

Requests are sent as they are (OTLP protobuf, over gRPC or HTTP as the ``OTEL_*`` variables
say) from one background thread with a bounded queue, so relaying never blocks a query; a full
queue drops the request and counts it. Without relay mode nothing is exported twice: workers
export their own spans and the coordinator only its own.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import urllib.request

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

from otel_dist.telemetry.setup import TelemetryConfig

log = logging.getLogger(__name__)


class SpanRelay:
    """Sends whole OTLP trace requests to the configured endpoint, in the background."""

    def __init__(self, config: TelemetryConfig, max_queue: int = 64) -> None:
        self.config = config
        self.relayed = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[ExportTraceServiceRequest | None] = queue.Queue(max_queue)
        self._channel: grpc.Channel | None = None
        self._thread = threading.Thread(target=self._run, name="span-relay", daemon=True)
        self._thread.start()

    def submit(self, request: ExportTraceServiceRequest) -> None:
        if not request.resource_spans:
            return
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) until what was submitted has been sent or given up on."""
        done = threading.Event()

        def drained() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=drained, daemon=True).start()
        done.wait(timeout_s)

    def shutdown(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1.0)
        self._thread.join(self.config.timeout_s + 1)
        if self._channel is not None:
            self._channel.close()

    def _run(self) -> None:
        while True:
            request = self._queue.get()
            try:
                if request is None:
                    return
                self._send(request)
                self.relayed += 1
            except Exception as error:
                self.failed += 1
                log.info("relaying spans failed: %s", error)
            finally:
                self._queue.task_done()

    def _send(self, request: ExportTraceServiceRequest) -> None:
        endpoint = self.config.endpoint or "http://localhost:4317"
        if self.config.protocol.startswith("http"):
            http = urllib.request.Request(
                endpoint,
                data=request.SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
                method="POST",
            )
            with urllib.request.urlopen(http, timeout=self.config.timeout_s):
                return
        if self._channel is None:
            target = endpoint.split("://", 1)[-1]
            self._channel = (
                grpc.secure_channel(target, grpc.ssl_channel_credentials())
                if endpoint.startswith("https://")
                else grpc.insecure_channel(target)
            )
        TraceServiceStub(self._channel).Export(request, timeout=self.config.timeout_s)
