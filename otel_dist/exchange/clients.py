"""One shared ``pyarrow.flight`` client per remote location, with call options in one place."""

from __future__ import annotations

import threading

import pyarrow.flight as flight

_clients: dict[str, flight.FlightClient] = {}
_lock = threading.Lock()


def client_for(location: str) -> flight.FlightClient:
    """The process-wide client for a Flight location such as ``grpc://127.0.0.1:50051``."""
    with _lock:
        client = _clients.get(location)
        if client is None:
            client = flight.FlightClient(location)
            _clients[location] = client
        return client


def call_options(
    timeout_s: float, headers: dict[str, str] | None = None
) -> flight.FlightCallOptions:
    encoded = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return flight.FlightCallOptions(timeout=timeout_s, headers=encoded)


def forget(location: str) -> None:
    """Drop a cached client, e.g. after its server went away."""
    with _lock:
        client = _clients.pop(location, None)
    if client is not None:
        client.close()
