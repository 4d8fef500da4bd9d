"""A real, in-process OTLP/gRPC receiver for tests and benchmarks.

``OtlpReceiver`` stands in for an OpenTelemetry Collector: it serves the official
``TraceService``, ``MetricsService`` and ``LogsService`` gRPC definitions from
``opentelemetry-proto`` on ``127.0.0.1`` (a free port), keeps every export request it
accepts, and offers decoded views of the data (``spans()``, ``metrics()``,
``metric_names()``), blocking waits, and an OTLP/JSON dump in the format of the
Collector's ``file`` exporter (one ``ExportTraceServiceRequest`` per line).

Example::

    with OtlpReceiver() as receiver:
        exporter = OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True)
        ...
        spans = receiver.wait_for_spans(lambda spans: len(spans) >= 2)

Failure injection: set ``receiver.mode`` to ``"unavailable"`` (every export is aborted with
``UNAVAILABLE``) or ``"slow"`` (every export sleeps ``receiver.slow_seconds`` before
answering). Exports rejected by the injected failure are never stored; they are counted in
``receiver.rejected_exports``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, NoReturn, TypeVar, get_args

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from otel_dist.telemetry.otlp import (
    SpanRecord,
    decode_attributes,
    read_otlp_json_lines,
    span_records,
    trace_request_to_otlp_json,
)

__all__ = [
    "ExportTraceServiceRequest",
    "OtlpReceiver",
    "ReceivedMetric",
    "ReceiverMode",
    "SpanRecord",
    "read_otlp_json_lines",
]

ExportTraceServiceRequest = trace_service_pb2.ExportTraceServiceRequest
ExportMetricsServiceRequest = metrics_service_pb2.ExportMetricsServiceRequest
ExportLogsServiceRequest = logs_service_pb2.ExportLogsServiceRequest

ReceiverMode = Literal["ok", "unavailable", "slow"]
_MODES: Final[frozenset[str]] = frozenset(get_args(ReceiverMode))

_HOST: Final = "127.0.0.1"
_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
_DEFAULT_STOP_GRACE_SECONDS: Final = 1.0

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Plain data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMetric:
    """One raw ``Metric`` proto with the context it arrived in.

    ``metric`` is a copy of the received ``opentelemetry.proto.metrics.v1.Metric`` (its data
    points are untouched); ``resource`` is the decoded resource attributes and
    ``scope_name`` the instrumentation scope name of the enclosing ``ScopeMetrics``.
    """

    metric: Metric
    resource: dict[str, object]
    scope_name: str


# --------------------------------------------------------------------------------------------
# gRPC servicers
# --------------------------------------------------------------------------------------------


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._accept(self._receiver._traces, request, context)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._receiver._accept(self._receiver._metrics, request, context)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: ExportLogsServiceRequest, context: grpc.ServicerContext
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        self._receiver._accept(self._receiver._logs, request, context)
        return logs_service_pb2.ExportLogsServiceResponse()


# --------------------------------------------------------------------------------------------
# Receiver
# --------------------------------------------------------------------------------------------


def _copy(message: _T) -> _T:
    duplicate = type(message)()
    duplicate.CopyFrom(message)  # type: ignore[attr-defined]
    return duplicate


class OtlpReceiver:
    """An OTLP/gRPC receiver (traces, metrics, logs) on ``127.0.0.1`` with a free port.

    Use as a context manager (``start()`` on enter, ``stop()`` on exit) or call
    ``start()``/``stop()`` directly. All accessors are thread-safe and return snapshots.

    ``mode`` selects failure injection: ``"ok"`` (default) stores and acknowledges every
    export; ``"unavailable"`` aborts every export with ``grpc.StatusCode.UNAVAILABLE`` and
    stores nothing; ``"slow"`` waits ``slow_seconds`` before answering and then stores the
    export only if the client is still waiting for it (an export whose client deadline
    expired, or that is still pending when the receiver stops, is not stored).
    """

    def __init__(
        self,
        *,
        mode: ReceiverMode = "ok",
        slow_seconds: float = 1.0,
        max_workers: int = 16,
        stop_grace_seconds: float = _DEFAULT_STOP_GRACE_SECONDS,
    ) -> None:
        self._mode: ReceiverMode = "ok"
        self.mode = mode
        self.slow_seconds = slow_seconds
        self._max_workers = max_workers
        self._stop_grace_seconds = stop_grace_seconds
        self._cond = threading.Condition(threading.Lock())
        self._generation = 0
        self._rejected = 0
        self._traces: list[ExportTraceServiceRequest] = []
        self._metrics: list[ExportMetricsServiceRequest] = []
        self._logs: list[ExportLogsServiceRequest] = []
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        """Start serving on ``127.0.0.1`` with a free port; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("OtlpReceiver is already started")
        self._stopping.clear()
        executor = ThreadPoolExecutor(
            max_workers=self._max_workers, thread_name_prefix="otlp-receiver"
        )
        server = grpc.server(
            executor,
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), server
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), server)
        port = server.add_insecure_port(f"{_HOST}:0")
        if port == 0:
            executor.shutdown(wait=False)
            raise RuntimeError(f"OtlpReceiver could not bind a port on {_HOST}")
        server.start()
        self._server, self._executor, self._port = server, executor, port
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop the server, giving in-flight exports at most ``grace`` seconds (default
        ``stop_grace_seconds``). Pending ``"slow"`` exports are released immediately and
        not stored. Stored data stays readable. Safe to call more than once."""
        server, executor = self._server, self._executor
        if server is None:
            return
        grace = self._stop_grace_seconds if grace is None else grace
        self._stopping.set()
        server.stop(grace).wait(timeout=grace + 5.0)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self._server = self._executor = None
        self._port = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- configuration -----------------------------------------------------------------------

    @property
    def mode(self) -> ReceiverMode:
        """Failure injection mode: ``"ok"``, ``"unavailable"`` or ``"slow"``."""
        return self._mode

    @mode.setter
    def mode(self, value: ReceiverMode) -> None:
        if value not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, not {value!r}")
        self._mode = value

    @property
    def port(self) -> int:
        """The bound TCP port (only while started)."""
        if self._port is None:
            raise RuntimeError("OtlpReceiver is not started")
        return self._port

    @property
    def endpoint(self) -> str:
        """``"http://127.0.0.1:PORT"``, suitable for the OTLP gRPC exporters."""
        return f"http://{_HOST}:{self.port}"

    @property
    def rejected_exports(self) -> int:
        """How many exports (any signal) were rejected by failure injection."""
        with self._cond:
            return self._rejected

    # -- server side -------------------------------------------------------------------------

    def _reject(
        self, context: grpc.ServicerContext, code: grpc.StatusCode, detail: str
    ) -> NoReturn:
        with self._cond:
            self._rejected += 1
        context.abort(code, detail)  # raises
        raise AssertionError("grpc.ServicerContext.abort did not raise")  # pragma: no cover

    def _accept(self, store: list[Any], request: Any, context: grpc.ServicerContext) -> None:
        """Apply failure injection, then store ``request`` and wake waiters."""
        mode = self._mode
        if mode == "unavailable":
            self._reject(context, grpc.StatusCode.UNAVAILABLE, "OtlpReceiver: injected UNAVAILABLE")
        if mode == "slow":
            if self._stopping.wait(self.slow_seconds):
                self._reject(context, grpc.StatusCode.UNAVAILABLE, "OtlpReceiver: stopping")
            if not context.is_active():
                with self._cond:
                    self._rejected += 1
                return
        with self._cond:
            store.append(request)
            self._generation += 1
            self._cond.notify_all()

    # -- raw requests ------------------------------------------------------------------------

    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        """Copies of every stored ``ExportTraceServiceRequest``, in arrival order."""
        with self._cond:
            stored = list(self._traces)
        return [_copy(request) for request in stored]

    def metrics_requests(self) -> list[ExportMetricsServiceRequest]:
        """Copies of every stored ``ExportMetricsServiceRequest``, in arrival order."""
        with self._cond:
            stored = list(self._metrics)
        return [_copy(request) for request in stored]

    def logs_requests(self) -> list[ExportLogsServiceRequest]:
        """Copies of every stored ``ExportLogsServiceRequest``, in arrival order."""
        with self._cond:
            stored = list(self._logs)
        return [_copy(request) for request in stored]

    def clear(self) -> None:
        """Forget every stored request and reset ``rejected_exports``."""
        with self._cond:
            self._traces.clear()
            self._metrics.clear()
            self._logs.clear()
            self._rejected = 0
            self._generation += 1
            self._cond.notify_all()

    # -- decoded views -----------------------------------------------------------------------

    def spans(self) -> list[SpanRecord]:
        """Every received span, flattened (resource_spans → scope_spans → spans)."""
        with self._cond:
            stored = list(self._traces)
        return span_records(stored)

    def metrics(self) -> list[ReceivedMetric]:
        """Every received ``Metric`` proto (a copy) with its resource attributes and scope
        name, flattened (resource_metrics → scope_metrics → metrics), in arrival order."""
        with self._cond:
            stored = list(self._metrics)
        result: list[ReceivedMetric] = []
        for request in stored:
            for resource_metrics in request.resource_metrics:
                resource = decode_attributes(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        result.append(
                            ReceivedMetric(
                                metric=_copy(metric),
                                resource=dict(resource),
                                scope_name=scope_metrics.scope.name,
                            )
                        )
        return result

    def metric_names(self) -> set[str]:
        """Names of every received metric."""
        with self._cond:
            stored = list(self._metrics)
        return {
            metric.name
            for request in stored
            for resource_metrics in request.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        }

    # -- waiting -----------------------------------------------------------------------------

    def _wait_until(
        self,
        snapshot: Callable[[], _T],
        predicate: Callable[[_T], bool],
        timeout: float,
        describe: Callable[[_T], str],
    ) -> _T:
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._generation
            current = snapshot()
            if predicate(current):
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"OtlpReceiver: condition not met after {timeout:g}s; {describe(current)}"
                )
            with self._cond:
                if self._generation == seen:  # nothing new since the snapshot
                    self._cond.wait(remaining)

    def wait_for_spans(
        self, predicate: Callable[[list[SpanRecord]], bool], timeout: float = 10.0
    ) -> list[SpanRecord]:
        """Block until ``predicate(self.spans())`` is true and return those spans.

        The predicate runs without the receiver lock held, after each stored export.
        Raises ``TimeoutError`` (one-line message) after ``timeout`` seconds.
        """
        return self._wait_until(self.spans, predicate, timeout, _describe_spans)

    def wait_for_metrics(
        self, predicate: Callable[[list[ReceivedMetric]], bool], timeout: float = 10.0
    ) -> list[ReceivedMetric]:
        """Like ``wait_for_spans`` but for ``self.metrics()``."""
        return self._wait_until(self.metrics, predicate, timeout, _describe_metrics)

    # -- output ------------------------------------------------------------------------------

    def write_otlp_json(self, path: Path) -> None:
        """Write every stored trace request to ``path`` as OTLP/JSON, one
        ``ExportTraceServiceRequest`` per line (the Collector ``file`` exporter format).
        Read it back with ``read_otlp_json_lines``."""
        with self._cond:
            stored = list(self._traces)
        with open(path, "w", encoding="utf-8") as handle:
            for request in stored:
                handle.write(trace_request_to_otlp_json(request))
                handle.write("\n")


def _describe_names(kind: str, names: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    more = f", ... (+{len(names) - limit})" if len(names) > limit else ""
    return f"{len(names)} {kind} received: [{shown}{more}]"


def _describe_spans(spans: list[SpanRecord]) -> str:
    return _describe_names("span(s)", [span.name for span in spans])


def _describe_metrics(metrics: list[ReceivedMetric]) -> str:
    return _describe_names("metric(s)", [metric.metric.name for metric in metrics])
