"""Server middleware that hands a Flight call's ``traceparent`` header to the handler, so a
worker's SERVER span of a traced call is the child of the caller's CLIENT span
(``otel_dist.telemetry.rpc``). Calls without the header get no middleware at all."""

from __future__ import annotations

import pyarrow.flight as flight

from otel_dist.telemetry.rpc import TRACEPARENT

MIDDLEWARE_KEY = "otel_dist.trace"


class _TraceParent(flight.ServerMiddleware):
    def __init__(self, traceparent: str) -> None:
        super().__init__()
        self.traceparent = traceparent


class TraceServerMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Keeps the call's ``traceparent`` (``traceparent_of(context)`` reads it)."""

    def start_call(
        self, info: flight.CallInfo, headers: dict[str, list[str | bytes]]
    ) -> flight.ServerMiddleware | None:
        values = headers.get(TRACEPARENT)
        if not values:
            return None
        value = values[0]
        return _TraceParent(value.decode("ascii", "replace") if isinstance(value, bytes) else value)


def traceparent_of(context: flight.ServerCallContext) -> str | None:
    """The ``traceparent`` header of the call, if it had one."""
    middleware = context.get_middleware(MIDDLEWARE_KEY)
    return middleware.traceparent if isinstance(middleware, _TraceParent) else None
