"""One shared ``pyarrow.flight`` client per remote location and security settings, with call
options and the errors a remote call can raise in one place.

Clients reconnect quickly after their server came back (gRPC's reconnect backoff is capped
at ``MAX_RECONNECT_BACKOFF_MS`` instead of its default two minutes), so a worker that
restarts at the same address is usable again within about a second.

A ``DoGet`` that fails with UNAVAILABLE before its first message (a connection that failed
or was reset, a server momentarily unable to take the call) is retried by gRPC itself, a
few times within about a second (``READ_RETRY_POLICY``). Once a stream has delivered data
gRPC never retries it, so no bucket is read twice.

Each stream's receive window is fixed at ``STREAM_WINDOW_BYTES`` (gRPC's bandwidth-delay
probing is off): with probing, gRPC grows the window, up to 1 GiB, whenever acknowledgements
come back slowly, and a reader descheduled on a loaded machine then holds hundreds of MB
that the sender pushed ahead of it. A fixed window keeps what a reader holds to a few
batches.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import threading

import pyarrow as pa
import pyarrow.flight as flight

from otel_dist.exchange.security import (
    NO_SECURITY,
    SecurityConfig,
    client_options,
    secure_url,
)

INITIAL_RECONNECT_BACKOFF_MS = 200
MAX_RECONNECT_BACKOFF_MS = 1000
STREAM_WINDOW_BYTES = 8 * 1024 * 1024

# gRPC's service config (https://github.com/grpc/grpc/blob/master/doc/service_config.md):
# retry reads only; actions such as submit_tasks are not idempotent.
READ_RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{"service": "arrow.flight.protocol.FlightService", "method": "DoGet"}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}

# What a failed remote call raises: Flight errors, and Arrow errors for the gRPC codes Arrow
# maps to its own statuses (INVALID_ARGUMENT is ``pa.ArrowInvalid``, NOT_FOUND a key error).
REMOTE_ERRORS: tuple[type[BaseException], ...] = (flight.FlightError, pa.ArrowException)

_clients: dict[tuple[str, SecurityConfig], flight.FlightClient] = {}
_lock = threading.Lock()


def new_client(location: str, security: SecurityConfig = NO_SECURITY) -> flight.FlightClient:
    """A new client for a Flight location, with the process's TLS and token settings;
    ``host:port`` means ``grpc://host:port``."""
    if "://" not in location:
        location = f"grpc://{location}"
    return flight.FlightClient(
        secure_url(location, security),
        generic_options=[
            ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
            ("grpc.min_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
            ("grpc.enable_retries", 1),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
            ("grpc.service_config", json.dumps(READ_RETRY_POLICY)),
        ],
        **client_options(security),
    )


def client_for(location: str, security: SecurityConfig = NO_SECURITY) -> flight.FlightClient:
    """The process-wide client for a Flight location such as ``grpc://127.0.0.1:50051``."""
    key = (location, security)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = new_client(location, security)
            _clients[key] = client
        return client


def call_options(
    timeout_s: float, headers: dict[str, str] | None = None
) -> flight.FlightCallOptions:
    encoded = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return flight.FlightCallOptions(timeout=timeout_s, headers=encoded)


@atexit.register
def close_all() -> None:
    """Close every cached client while the interpreter is still whole (at exit), rather than
    leave gRPC channels and Python middleware to be torn down in no particular order."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()
