"""Small helpers over DataFusion's logical plan nodes and expressions, shared by the planner."""

from __future__ import annotations

from datafusion import Expr
from datafusion.expr import SortExpr
from datafusion.plan import LogicalPlan

# (qualifier, name) of an output column; the qualifier is None for computed columns.
QualifiedColumn = tuple[str | None, str]


class NotDistributable(Exception):
    """A plan shape this planner does not distribute; the single-task fallback takes over."""


def wrap(raw: object) -> Expr:
    return raw if isinstance(raw, Expr) else Expr(raw)


def kind(plan: LogicalPlan) -> str:
    """The node's variant name: 'Projection', 'Join', 'TableScan'..."""
    return type(plan.to_variant()).__name__


def literal_int(raw: object) -> int | None:
    if raw is None:
        return None
    value = wrap(raw).python_value()
    return None if value is None else int(value)


def as_column(expr: Expr) -> QualifiedColumn | None:
    """(qualifier, name) when the expression is a plain column reference."""
    if expr.variant_name() != "Column":
        return None
    variant = expr.to_variant()
    return variant.relation(), variant.name()


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def column_expr(column: QualifiedColumn) -> Expr:
    qualifier, name = column
    if qualifier is None:
        return Expr.column(quote_identifier(name))
    return Expr.column(f"{quote_identifier(qualifier)}.{quote_identifier(name)}")


def sort_expr(raw: object) -> SortExpr:
    return SortExpr(wrap(raw.expr()), raw.ascending(), raw.nulls_first())  # type: ignore[attr-defined]


def output_column(expr: Expr) -> tuple[QualifiedColumn, QualifiedColumn | None]:
    """The column a projection expression produces, and the input column it passes through
    unchanged (a plain or renamed column), if any."""
    column = as_column(expr)
    if column is not None:
        return column, column
    if expr.variant_name() == "Alias":
        variant = expr.to_variant()
        return (None, variant.alias()), as_column(wrap(variant.expr()))
    return (None, expr.schema_name()), None
