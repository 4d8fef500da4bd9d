"""Turning exceptions from DataFusion, Arrow and gRPC into one-line messages for people."""

from __future__ import annotations

import re

_PARSER_ERROR = re.compile(r'^ParserError\("(.*)"\)$')
_RECURSION_LIMIT = re.compile(r"^RecursionLimitExceeded \(current limit: (\d+)\)")
_NOISE_PREFIXES = (
    "DataFusion error: ",
    "Error during planning: ",
    "SQL error: ",
    "Execution error: ",
    "External error: ",
    "ArrowError(",
)
_DETAIL_MARKERS = (". Detail:", " Detail:", "gRPC client debug context", "Client context:")


def one_line(error: BaseException, limit: int = 500) -> str:
    """The first meaningful line of an error, without gRPC debug context or engine prefixes."""
    text = str(error).strip()
    for marker in _DETAIL_MARKERS:
        text = text.split(marker)[0]
    text = " ".join(text.split())
    for prefix in _NOISE_PREFIXES:
        text = text.replace(prefix, "")
    parser = _PARSER_ERROR.match(text)
    if parser:
        text = f"SQL syntax error: {parser.group(1)}"
    recursion = _RECURSION_LIMIT.match(text)
    if recursion:
        text = (
            "the SQL nests parentheses, subqueries or CASE deeper than DataFusion's parser "
            f"allows (datafusion.sql_parser.recursion_limit, {recursion.group(1)})"
        )
    return text[:limit] or type(error).__name__
