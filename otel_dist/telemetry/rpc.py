"""CLIENT and SERVER spans of otel_dist's Flight calls, per the RPC semantic conventions, so
that Tempo's service graph, Jaeger's dependency view and the collector's ``servicegraph``
connector can draw coordinator <-> worker and worker <-> worker edges.

Arrow Flight is gRPC: ``rpc.system`` is ``grpc``, ``rpc.service`` the Flight service and
``rpc.method`` ``DoGet`` or ``DoAction`` (``otel_dist.rpc.action`` names the action). A
CLIENT span carries ``server.address`` and ``server.port``. The caller sends a W3C
``traceparent`` naming its CLIENT span in the call headers; the server's span is that span's
child (the pairing the service graph needs). Only calls that belong to a query are traced:
task submissions, bucket reads (the ``otel_dist.read`` spans are the CLIENT side) and
telemetry fetches; one span per call, never per batch.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Final

import pyarrow as pa
import pyarrow.flight as flight
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

RPC_SYSTEM: Final = "rpc.system"
RPC_SERVICE: Final = "rpc.service"
RPC_METHOD: Final = "rpc.method"
RPC_ACTION: Final = "otel_dist.rpc.action"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
GRPC: Final = "grpc"
FLIGHT_SERVICE: Final = "arrow.flight.protocol.FlightService"
DO_GET: Final = "DoGet"
DO_ACTION: Final = "DoAction"
TRACEPARENT: Final = "traceparent"
RPC_GRPC_STATUS_CODE: Final = "rpc.grpc.status_code"
GRPC_OK: Final = 0
GRPC_CANCELLED: Final = 1
GRPC_UNKNOWN: Final = 2
# The gRPC codes of the errors pyarrow.flight raises and sends (one class per code), most
# specific first: Flight's errors are Arrow errors too.
_CODES: Final = (
    (flight.FlightCancelledError, GRPC_CANCELLED),
    (flight.FlightTimedOutError, 4),  # DEADLINE_EXCEEDED
    (flight.FlightUnauthenticatedError, 16),  # UNAUTHENTICATED
    (flight.FlightUnauthorizedError, 7),  # PERMISSION_DENIED
    (flight.FlightUnavailableError, 14),  # UNAVAILABLE
    (flight.FlightInternalError, 13),  # INTERNAL
    (flight.FlightServerError, GRPC_UNKNOWN),
    (pa.ArrowInvalid, 3),  # INVALID_ARGUMENT
    (pa.ArrowNotImplementedError, 12),  # UNIMPLEMENTED
    (pa.ArrowKeyError, 5),  # NOT_FOUND
)
# Codes for which a SERVER span is an error; every code but OK is for a CLIENT span.
SERVER_ERROR_CODES: Final = frozenset({GRPC_UNKNOWN, 4, 12, 13, 14, 15})

_ids = RandomIdGenerator()
_propagator = TraceContextTextMapPropagator()


def grpc_status_code(error: BaseException | None) -> int:
    """The gRPC status code of a call that ended with ``error`` (None: OK). A domain error
    raised in place of a Flight error (``raise ... from None``) is read through the error it
    replaced; anything else is UNKNOWN, as gRPC reports an unexpected failure."""
    seen = 0
    while error is not None and seen < 4:
        if isinstance(error, GeneratorExit):
            return GRPC_CANCELLED  # the caller stopped reading: the call is cancelled
        for kind, code in _CODES:
            if isinstance(error, kind):
                return code
        error, seen = error.__cause__ or error.__context__, seen + 1
    return GRPC_OK if seen == 0 else GRPC_UNKNOWN


def span_name(method: str) -> str:
    """``{rpc.service}/{rpc.method}``, the conventions' name of an RPC span."""
    return f"{FLIGHT_SERVICE}/{method}"


def rpc_attributes(method: str, action: str | None = None) -> dict[str, str]:
    attributes = {RPC_SYSTEM: GRPC, RPC_SERVICE: FLIGHT_SERVICE, RPC_METHOD: method}
    if action is not None:
        attributes[RPC_ACTION] = action
    return attributes


def client_attributes(url: str, method: str, action: str | None = None) -> dict[str, object]:
    """RPC attributes of a CLIENT span calling ``url`` (``grpc://host:port``)."""
    attributes: dict[str, object] = dict(rpc_attributes(method, action))
    parsed = urllib.parse.urlsplit(url if "://" in url else f"grpc://{url}")
    if parsed.hostname:
        attributes[SERVER_ADDRESS] = parsed.hostname
    if parsed.port:
        attributes[SERVER_PORT] = parsed.port
    return attributes


def new_span_id() -> int:
    return _ids.generate_span_id()


def traceparent_of(context: SpanContext) -> dict[str, str]:
    """The ``traceparent`` header naming ``context`` as the caller's span ({} if invalid)."""
    if not context.is_valid:
        return {}
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, trace.set_span_in_context(trace.NonRecordingSpan(context)))
    return carrier


def with_span_id(carrier: Mapping[str, str], span_id: int) -> tuple[dict[str, str], bool]:
    """``carrier`` (a W3C trace context) with its ``traceparent`` naming span ``span_id`` of
    the same trace, and whether that trace is sampled; unchanged (and False) without one."""
    parent = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
    if not parent.is_valid:
        return dict(carrier), False
    child = SpanContext(parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state)
    return {**carrier, **traceparent_of(child)}, parent.trace_flags.sampled


def extract(traceparent: str | None) -> Context | None:
    """The remote parent a call's ``traceparent`` header names, or None."""
    if not traceparent:
        return None
    context = _propagator.extract({TRACEPARENT: traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None
