"""A worker announcing itself to a coordinator (``otel-dist worker --coordinator URL``).

Every ``interval_s`` the worker sends ``register_worker {url}``; the coordinator takes it into
use at its first heartbeat and drops it after a few that do not come. A coordinator that is not
there yet, or restarts, is simply tried again at the next beat (one log line when it becomes
unreachable, one when it answers again). At shutdown the worker says goodbye with
``unregister_worker`` (bounded: a coordinator that is gone does not delay the exit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading

import pyarrow.flight as flight

from otel_dist.errors import one_line
from otel_dist.exchange.clients import REMOTE_ERRORS, call_options, new_client
from otel_dist.exchange.security import SecurityConfig
from otel_dist.protocol import ACTION_REGISTER_WORKER, ACTION_UNREGISTER_WORKER

log = logging.getLogger(__name__)

GOODBYE_TIMEOUT_S = 1.0


def advertised_url(server_url: str) -> str:
    """The URL others reach this worker at: a wildcard listen address (``0.0.0.0``, ``::``)
    becomes this host's own address."""
    scheme, _, rest = server_url.partition("://")
    host, _, port = rest.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = socket.getfqdn()
    return f"{scheme}://{host}:{port}"


class Announcer:
    """Sends the heartbeats of one worker to one coordinator, on a daemon thread."""

    def __init__(
        self,
        coordinator_url: str,
        worker_url: str,
        security: SecurityConfig,
        interval_s: float = 2.0,
    ) -> None:
        self.coordinator_url = coordinator_url
        self.worker_url = worker_url
        self.interval_s = interval_s
        self._client = new_client(coordinator_url, security)
        self._body = json.dumps({"url": worker_url}).encode()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="announce", daemon=True)
        self.beats = 0

    def start(self) -> Announcer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the heartbeats and say goodbye (at most ``GOODBYE_TIMEOUT_S``)."""
        self._stop.set()
        self._thread.join(self.interval_s + 1)
        with contextlib.suppress(*REMOTE_ERRORS):
            self._call(ACTION_UNREGISTER_WORKER, GOODBYE_TIMEOUT_S)
        self._client.close()

    def _call(self, action: str, timeout_s: float) -> None:
        results = self._client.do_action(
            flight.Action(action, self._body), options=call_options(timeout_s)
        )
        for _ in results:
            pass

    def _loop(self) -> None:
        reachable: bool | None = None
        while not self._stop.is_set():
            try:
                self._call(ACTION_REGISTER_WORKER, max(1.0, self.interval_s))
                self.beats += 1
                if reachable is not True:
                    log.info(
                        "announced to coordinator %s as %s", self.coordinator_url, self.worker_url
                    )
                reachable = True
            except REMOTE_ERRORS as error:
                if reachable is not False:
                    log.warning(
                        "coordinator %s: not reachable, retrying every %gs (%s)",
                        self.coordinator_url,
                        self.interval_s,
                        one_line(error, 200),
                    )
                reachable = False
            self._stop.wait(self.interval_s)
