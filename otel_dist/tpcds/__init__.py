"""TPC-DS benchmark assets: the 99 queries and the names of the 24 tables.

The queries are DuckDB's ``tpcds_queries()`` texts (the TPC-DS specification's queries with
its validation substitution parameters, in SQL that DataFusion also accepts), one file per
query in ``queries/qNN.sql``, read with :func:`query`. Data generation lives in
:mod:`otel_dist.tpcds.datagen` and needs the ``tpcds`` extra (DuckDB and its TPC-DS extension).
"""

from __future__ import annotations

from importlib import resources

__all__ = ["QUERY_NUMBERS", "TABLES", "query"]

QUERY_NUMBERS: tuple[int, ...] = tuple(range(1, 100))
"""The TPC-DS query numbers, 1 to 99."""

TABLES: tuple[str, ...] = (
    "call_center",
    "catalog_page",
    "catalog_returns",
    "catalog_sales",
    "customer",
    "customer_address",
    "customer_demographics",
    "date_dim",
    "household_demographics",
    "income_band",
    "inventory",
    "item",
    "promotion",
    "reason",
    "ship_mode",
    "store",
    "store_returns",
    "store_sales",
    "time_dim",
    "warehouse",
    "web_page",
    "web_returns",
    "web_sales",
    "web_site",
)
"""The 24 TPC-DS table names, alphabetically."""


def query(number: int) -> str:
    """Return the SQL text of TPC-DS query ``number`` (1 to 99).

    Raises:
        ValueError: if ``number`` is not a TPC-DS query number.
    """
    if isinstance(number, bool) or not isinstance(number, int) or number not in QUERY_NUMBERS:
        raise ValueError(
            f"unknown TPC-DS query number {number!r}: expected an integer from 1 to 99"
        )
    resource = resources.files(__name__).joinpath("queries", f"q{number:02d}.sql")
    return resource.read_text(encoding="utf-8")
