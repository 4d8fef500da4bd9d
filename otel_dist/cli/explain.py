"""``otel-dist explain``: the EXPLAIN ANALYZE tree of a query in an OTLP/JSON trace file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from otel_dist.cli.common import stderr, stdout


def add(commands: Any) -> None:
    explain = commands.add_parser(
        "explain", help="the EXPLAIN ANALYZE tree of a query in an OTLP/JSON trace file"
    )
    explain.add_argument("--trace", type=Path, required=True, help="OTLP/JSON, one request a line")
    explain.add_argument("--query-id", help="which query, when the file holds several")
    explain.add_argument("--json", action="store_true", help="print the tree as JSON")
    explain.add_argument("--verbose", action="store_true", help="every task's operator tree")
    explain.add_argument("--html", type=Path, help="also write the profile page to this file")
    explain.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otel_dist.explain.build import build_tree, load_trace_file
    from otel_dist.explain.html import render_html
    from otel_dist.explain.json_tree import tree_to_dict
    from otel_dist.explain.statements import trace_url_template
    from otel_dist.explain.text import render_text

    tree = build_tree(load_trace_file(args.trace), args.query_id)
    if args.json:
        print(json.dumps(tree_to_dict(tree), indent=1))
    else:
        text = render_text(tree, verbose=args.verbose, trace_url_template=trace_url_template())
        stdout.print(text, markup=False, highlight=False)
    if args.html:
        args.html.write_text(render_html(tree, trace_url_template()))
        stderr.print(f"profile page written to {args.html}", markup=False)
    return 0
