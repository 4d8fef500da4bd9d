"""``otel-dist tpcdsgen``: TPC-DS as parquet, one folder per table (the ``tpcds`` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from otel_dist.cli.common import UserError, stdout


def add(commands: Any) -> None:
    dsgen = commands.add_parser(
        "tpcdsgen",
        help="generate TPC-DS parquet, one folder per table (needs the tpcds extra: "
        "pip install 'otel_dist[tpcds]')",
    )
    dsgen.add_argument("--scale", type=float, required=True, help="scale factor (1 is about 1 GB)")
    dsgen.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write; a folder holding another scale is refused (remove it first)",
    )
    dsgen.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otel_dist.tpcds.datagen import SCALE_FILE, generate

    if args.scale <= 0:
        raise UserError(f"scale must be positive, got {args.scale}")
    existed = (args.out / SCALE_FILE).is_file()
    try:
        path = generate(args.scale, args.out)
    except RuntimeError as error:
        raise UserError(str(error)) from None
    done = "is already in" if existed else "written to"
    stdout.print(f"TPC-DS SF {args.scale:g} {done} {path}", markup=False, highlight=False)
    return 0
