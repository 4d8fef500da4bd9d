"""TPC-H benchmark assets: the 22 queries and the names of the 8 tables.

The queries are the TPC-H (v3) specification texts with the specification's validation
substitution parameters, written in SQL that Apache DataFusion accepts. Query 15 uses a
common table expression for ``revenue0`` instead of ``CREATE VIEW``. Each query lives in
``queries/qNN.sql`` and is read with :func:`query`. Data generation lives in
:mod:`otel_dist.tpch.datagen`.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["QUERY_NUMBERS", "TABLES", "query"]

QUERY_NUMBERS: tuple[int, ...] = tuple(range(1, 23))
"""The TPC-H query numbers, 1 to 22."""

TABLES: tuple[str, ...] = (
    "part",
    "supplier",
    "partsupp",
    "customer",
    "orders",
    "lineitem",
    "nation",
    "region",
)
"""The 8 TPC-H table names, in the specification's order."""


def query(number: int) -> str:
    """Return the SQL text of TPC-H query ``number`` (1 to 22).

    Raises:
        ValueError: if ``number`` is not a TPC-H query number.
    """
    if isinstance(number, bool) or not isinstance(number, int) or number not in QUERY_NUMBERS:
        raise ValueError(f"unknown TPC-H query number {number!r}: expected an integer from 1 to 22")
    resource = resources.files(__name__).joinpath("queries", f"q{number:02d}.sql")
    return resource.read_text(encoding="utf-8")
