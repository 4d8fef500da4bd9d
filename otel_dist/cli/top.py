"""``otel-dist top``: a live view of a cluster's workers and queries."""

from __future__ import annotations

import argparse
from typing import Any

from otel_dist.cli.common import UserError, security_from_args, stdout
from otel_dist.cli.options import security_options


def add(commands: Any) -> None:
    top = commands.add_parser("top", help="a live view of a cluster's workers and queries")
    top.add_argument("--coordinator", required=True, help="coordinator URL, grpc://host:port")
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    security_options(top, server=False)
    top.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otel_dist.top import TopError, run_top

    if args.interval <= 0:
        raise UserError(f"--interval must be positive, got {args.interval}")
    try:
        return run_top(args.coordinator, security_from_args(args), stdout, args.once, args.interval)
    except TopError as error:
        raise UserError(str(error)) from None
