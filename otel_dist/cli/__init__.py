"""The ``otel-dist`` command line: demo, tpchgen, tpcdsgen, local, worker, coordinator, query, top,
explain, bench.

Errors a user can cause (bad SQL, unknown table, bad folder, unreachable worker) end with a
one-line message on stderr and exit code 1, never a traceback; Ctrl-C ends with exit code 130
(and ``query`` first cancels its query on the coordinator).

Security options (TLS, token) are the same on every command that talks over Flight; the token
is read from ``OTEL_DIST_AUTH_TOKEN`` or ``--auth-token-file``, never from the command line.
Servers also take the cluster-internal secret (``--internal-secret-file``,
``OTEL_DIST_INTERNAL_SECRET_FILE`` or ``OTEL_DIST_INTERNAL_SECRET``), which clients never hold.

One module per command (``demo``, ``tpchgen``, ``local``, ``worker``, ``coordinator``,
``query``, ``top``, ``explain``, ``bench``), each with ``add`` (its arguments) and ``run``;
``common`` and ``options`` hold what they share.
"""

from __future__ import annotations

import argparse
import sys

from otel_dist.cli import (
    bench,
    coordinator,
    demo,
    explain,
    local,
    query,
    top,
    tpcdsgen,
    tpchgen,
    worker,
)
from otel_dist.cli.common import EXIT_USER_ERROR, UserError, stderr
from otel_dist.cli.options import HelpFormatter, describe_subcommands
from otel_dist.coordinator.core import QueryError
from otel_dist.logs import configure_logging
from otel_dist.planner.catalog import CatalogError
from otel_dist.planner.distribute import PlanningError
from otel_dist.settings import SettingError

COMMANDS = (demo, tpchgen, tpcdsgen, local, worker, coordinator, query, top, explain, bench)
DESCRIPTION = (
    "Distributed SQL over Arrow Flight with DataFusion, observable end to end with "
    "OpenTelemetry: run SQL on worker processes, see where its time went (EXPLAIN ANALYZE "
    "tree, traces, metrics)."
)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except (UserError, SettingError) as error:  # a bad default from an environment variable
        stderr.print(f"otel-dist: error: {error}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging(
        getattr(args, "log_format", "text"), getattr(args, "log_level", "warning").upper()
    )
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        stderr.print("otel-dist: interrupted")
        return 130
    except (
        UserError,
        QueryError,
        PlanningError,
        CatalogError,
        RuntimeError,
        OSError,
        ValueError,
    ) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        stderr.print(f"otel-dist: error: {message}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-dist", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    describe_subcommands(commands)
    for command in COMMANDS:
        command.add(commands)
    return parser
