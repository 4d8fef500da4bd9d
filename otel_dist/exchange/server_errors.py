"""Errors Flight servers send to clients: the one-line cause, never a Python traceback.

pyarrow.flight sends an exception raised by a Python handler with its formatted traceback in
the gRPC status (``Detail: Python exception: Traceback ... File ".../server.py", line 84``),
unless it is a ``FlightError``, whose message goes alone; but no ``FlightError`` maps to
INVALID_ARGUMENT. So:

* ``do_get`` answers bad input with a stream that fails on its first read, the error raised
  from C (a finished generator's ``throw`` called by ``map``), so that it carries no Python
  frame and the status stays INVALID_ARGUMENT (clients see ``pyarrow.ArrowInvalid``);
* actions, whose results pyarrow reads through a frame of its own, answer bad input with a
  ``FlightServerError`` (gRPC UNKNOWN) whose message starts with ``invalid argument:``;
* anything unexpected is logged with its traceback here and sent as one line.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator

import pyarrow as pa
import pyarrow.flight as flight

from otel_dist.errors import one_line

log = logging.getLogger(__name__)


def failed_stream(error: pa.ArrowException) -> flight.FlightDataStream:
    """A ``do_get`` answer failing with ``error`` (e.g. INVALID_ARGUMENT), without traceback."""
    batches = map(_finished_generator().throw, [error])
    return flight.RecordBatchStream(pa.RecordBatchReader.from_batches(pa.schema([]), batches))


def for_client(error: BaseException, what: str) -> flight.FlightError:
    """The error to raise towards a client for ``error``: Flight errors as they are, Arrow
    errors (``invalid_argument``, ...) by their message, anything else logged here with its
    traceback and sent as one line."""
    if isinstance(error, flight.FlightError):
        return error
    if isinstance(error, pa.ArrowException):
        return flight.FlightServerError(one_line(error))
    log.warning("%s failed", what, exc_info=error)
    return flight.FlightServerError(f"internal error: {one_line(error)}")


def get_error(error: BaseException, what: str) -> flight.FlightDataStream:
    """``do_get``'s answer for ``error``: INVALID_ARGUMENT for Arrow's invalid-argument
    errors, else the error ``for_client`` makes (raised)."""
    if isinstance(error, pa.ArrowInvalid) and not isinstance(error, flight.FlightError):
        return failed_stream(pa.ArrowInvalid(one_line(error)))
    raise for_client(error, what) from None


def _finished_generator() -> Generator[object, None, None]:
    generator: Iterator[object] = iter(())
    finished = (item for item in generator)
    for _ in finished:
        pass
    return finished


class UnsupportedCalls:
    """Flight calls the servers do not serve, refused in one line (pyarrow's defaults raise a
    bare ``NotImplementedError`` with a traceback). Mix in before ``FlightServerBase``."""

    def _unsupported(self, call: str) -> flight.FlightError:
        return flight.FlightServerError(
            f"not supported: {call}; this server answers do_get and do_action"
        )

    def list_flights(self, context: object, criteria: bytes) -> Iterator[flight.FlightInfo]:
        raise self._unsupported("list_flights")

    def get_flight_info(self, context: object, descriptor: object) -> flight.FlightInfo:
        raise self._unsupported("get_flight_info")

    def get_schema(self, context: object, descriptor: object) -> flight.SchemaResult:
        raise self._unsupported("get_schema")

    def do_put(self, context: object, descriptor: object, reader: object, writer: object) -> None:
        raise self._unsupported("do_put")

    def do_exchange(
        self, context: object, descriptor: object, reader: object, writer: object
    ) -> None:
        raise self._unsupported("do_exchange")
