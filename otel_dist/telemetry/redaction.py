"""Redacting SQL literals before the text goes into ``db.query.text``."""

from __future__ import annotations

import re

_LITERALS = re.compile(
    r"""'(?:[^']|'')*'        # string literals, with doubled quotes inside
      | \b\d+(?:\.\d+)?\b     # numbers
    """,
    re.VERBOSE,
)


def redact_sql(sql: str) -> str:
    """The SQL with every string and numeric literal replaced by ``?``."""
    return _LITERALS.sub("?", sql)


def operation_name(sql: str) -> str:
    """The statement's first keyword (``SELECT``, ``WITH``, ``EXPLAIN``...), for spans."""
    for line in sql.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            return stripped.split()[0].upper().rstrip(";")
    return ""
