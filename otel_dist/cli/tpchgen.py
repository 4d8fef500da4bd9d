"""``otel-dist tpchgen``: TPC-H as parquet, one folder per table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from otel_dist.cli.common import UserError, stdout


def add(commands: Any) -> None:
    gen = commands.add_parser("tpchgen", help="generate TPC-H parquet, one folder per table")
    gen.add_argument(
        "--scale", type=float, required=True, help="scale factor (1 is about 1 GB of CSV)"
    )
    gen.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write; a folder holding another scale is refused (remove it first)",
    )
    gen.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otel_dist.tpch.datagen import generate

    if args.scale <= 0:
        raise UserError(f"scale must be positive, got {args.scale}")
    existed = (args.out / "lineitem").is_dir()
    path = generate(args.scale, args.out)
    done = "is already in" if existed else "written to"
    stdout.print(f"TPC-H SF {args.scale:g} {done} {path}", markup=False, highlight=False)
    return 0
