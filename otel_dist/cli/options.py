"""Argument definitions several commands share, and the help formatter that shows defaults."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from otel_dist.cli.common import (
    MAX_RESULT_BYTES_ENV,
    MAX_SQL_BYTES_ENV,
    MAX_SQL_DEPTH_ENV,
    MAX_SQL_OPERATORS_ENV,
    MAX_TOTAL_RESULT_BYTES_ENV,
    byte_count,
)
from otel_dist.settings import read


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds "(default: X)" to every option whose help does not already say its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)"


def describe_subcommands(commands: Any) -> None:
    """Every subcommand's parser gets its help line as its description and the formatter
    that shows defaults (subcommands added later included)."""
    add_parser = commands.add_parser

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("formatter_class", HelpFormatter)
        if "help" in kwargs:
            kwargs.setdefault("description", kwargs["help"][:1].upper() + kwargs["help"][1:] + ".")
        return add_parser(name, **kwargs)

    commands.add_parser = add


def logging_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="the least severe log lines written to stderr (default: warning)",
    )


def security_options(parser: argparse.ArgumentParser, server: bool) -> None:
    what = "this server's" if server else "the client's (for servers that verify clients)"
    parser.add_argument("--tls-cert", type=Path, help=f"TLS: {what} certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help=f"TLS: {what} private key (PEM)")
    parser.add_argument(
        "--tls-ca", type=Path, help="TLS: CA certificate(s) to verify servers by (PEM)"
    )
    if server:
        parser.add_argument(
            "--tls-verify-client",
            action="store_true",
            help="TLS: require client certificates signed by --tls-ca",
        )
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        help="file holding the client token (default: OTEL_DIST_AUTH_TOKEN): clients present "
        "it to the coordinator, every HTTP endpoint (/queries, /metrics) requires it"
        + (
            "; a worker without --internal-secret-file also takes it as the internal secret"
            if server
            else ""
        ),
    )
    if server:
        parser.add_argument(
            "--internal-secret-file",
            type=Path,
            help="file holding the cluster-internal secret that coordinator-to-worker and "
            "worker-to-worker calls carry and workers require (default: "
            "OTEL_DIST_INTERNAL_SECRET_FILE, OTEL_DIST_INTERNAL_SECRET; else the client token); "
            "otel-dist local generates one",
        )


def coordinator_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-sql-bytes",
        type=int,
        default=read(MAX_SQL_BYTES_ENV, default=None),
        help=f"refuse longer SQL (default: {MAX_SQL_BYTES_ENV}, else 1 MiB)",
    )
    parser.add_argument(
        "--max-result-bytes",
        type=int,
        default=read(MAX_RESULT_BYTES_ENV, default=None),
        help=f"fail queries with larger results (default: {MAX_RESULT_BYTES_ENV}, else 2 GiB)",
    )
    parser.add_argument(
        "--max-total-result-bytes",
        type=byte_count,
        default=read(MAX_TOTAL_RESULT_BYTES_ENV, default=None),
        metavar="BYTES",
        help="result bytes all running queries together may hold in the coordinator "
        f"(gathered results: explain runs, --explain-*; default: {MAX_TOTAL_RESULT_BYTES_ENV}, "
        "else 4 GiB)",
    )
    parser.add_argument(
        "--redact-sql",
        action="store_true",
        help="replace literals in db.query.text by ? (as OTEL_DIST_REDACT_SQL=true does)",
    )
    sql_limit_options(parser)


def sql_limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-sql-depth",
        type=int,
        default=read(MAX_SQL_DEPTH_ENV, default=None),
        help=f"refuse SQL chaining or nesting operators deeper (default: {MAX_SQL_DEPTH_ENV}, "
        "else 500)",
    )
    parser.add_argument(
        "--max-sql-operators",
        type=int,
        default=read(MAX_SQL_OPERATORS_ENV, default=None),
        help=f"refuse SQL with more operators (default: {MAX_SQL_OPERATORS_ENV}, else 5000)",
    )


def explain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--explain-analyze", action="store_true", help="print the distributed EXPLAIN ANALYZE tree"
    )
    parser.add_argument("--explain-json", type=Path, help="write the explain tree as JSON")
    parser.add_argument("--profile-html", type=Path, help="write the query profile page")
    parser.add_argument("--verbose", action="store_true", help="explain every task's operators")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format"
    )


def output_options(parser: argparse.ArgumentParser) -> None:
    from otel_dist.output import DEFAULT_MAX_ROWS

    parser.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="write the result, batch by batch, to a .parquet, .csv or JSON Lines file "
        "(.jsonl, .ndjson; .json is JSON Lines too) instead of printing it",
    )
    parser.add_argument(
        "--max-rows",
        type=int,
        default=DEFAULT_MAX_ROWS,
        metavar="N",
        help="rows printed at most: the first and the last half, with the total count",
    )
