"""``otel-dist top --coordinator URL [--once]``: a live terminal view of a cluster, read from
its coordinator alone (Flight action ``cluster_status``): every worker with its status,
running and queued tasks, CPU %, resident memory and rows/s, and every query in flight with
its progress. ``--once`` prints one snapshot and exits, for scripts and tests.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow.flight as flight
from rich.console import Console
from rich.live import Live

from otel_dist.exchange.clients import REMOTE_ERRORS, new_client
from otel_dist.exchange.security import SecurityConfig
from otel_dist.progress_view import render_cluster
from otel_dist.protocol import ACTION_CLUSTER_STATUS

CALL_TIMEOUT_S = 10.0


class TopError(RuntimeError):
    """The coordinator could not be asked (unreachable, refused, bad answer)."""


def cluster_status(client: flight.FlightClient, url: str) -> dict[str, Any]:
    try:
        results = client.do_action(
            flight.Action(ACTION_CLUSTER_STATUS, b""),
            options=flight.FlightCallOptions(timeout=CALL_TIMEOUT_S),
        )
        return dict(json.loads(b"".join(r.body.to_pybytes() for r in results)))
    except flight.FlightUnavailableError:
        raise TopError(f"coordinator {url} is unreachable") from None
    except flight.FlightTimedOutError:
        raise TopError(f"coordinator {url} did not answer in {CALL_TIMEOUT_S:.0f}s") from None
    except REMOTE_ERRORS as error:
        raise TopError(f"coordinator {url}: {' '.join(str(error).split())[:300]}") from None
    except ValueError:
        raise TopError(f"coordinator {url} sent a malformed cluster status") from None


def run_top(
    url: str, security: SecurityConfig, console: Console, once: bool, interval_s: float = 1.0
) -> int:
    """Print one snapshot (``once``) or refresh a live view until Ctrl-C."""
    client = new_client(url, security)
    try:
        if once:
            console.print(render_cluster(cluster_status(client, url)))
            return 0
        with Live(render_cluster(cluster_status(client, url)), console=console) as live:
            try:
                while True:
                    live.update(render_cluster(cluster_status(client, url)), refresh=True)
                    live.console.file.flush()
                    time.sleep(interval_s)
            except KeyboardInterrupt:
                return 0
    finally:
        client.close()
