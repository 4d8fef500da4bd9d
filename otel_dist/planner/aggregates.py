"""Split an aggregate into a partial aggregate run per task and a final one per group bucket.

The partial aggregate keeps plain-column group keys under their own qualified names (so the
final stage can restore their qualifiers) and names every other key ``__g<i>``; each aggregate
call becomes one or two partial columns ``__p<i>`` (``avg`` travels as ``__p<i>s`` and
``__p<i>c``). The final expressions read those columns unqualified.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
from datafusion import Expr
from datafusion import functions as f

from otel_dist.planner.exprs import (
    NotDistributable,
    QualifiedColumn,
    as_column,
    column_expr,
    wrap,
)

_SPLITTABLE_AGGREGATES = {"sum", "count", "min", "max", "avg", "mean"}


@dataclass
class AggregateSplit:
    """The partial and final halves of one aggregate node."""

    partial_groups: list[Expr]
    partial_aggregates: list[Expr]
    partial_columns: list[QualifiedColumn]
    final_groups: list[Expr]
    final_aggregates: list[Expr]  # plain aggregate calls (Substrait carries no other)
    final_projection: list[Expr]  # over the final aggregate: names, casts, avg's division
    output_columns: list[QualifiedColumn]
    key_columns: list[QualifiedColumn]  # partial columns the shuffle hashes on

    @property
    def grouped(self) -> bool:
        return bool(self.partial_groups)


def split_aggregate(
    groups: list[Expr], aggregates: list[Expr], variant: object, output_types: pa.Schema
) -> AggregateSplit:
    """Both halves of ``Aggregate(groups, aggregates)``; ``output_types`` is its schema."""
    partial_groups: list[Expr] = []
    partial_columns: list[QualifiedColumn] = []
    final_groups: list[Expr] = []
    final_projection: list[Expr] = []
    output_columns: list[QualifiedColumn] = []
    for index, expr in enumerate(groups):
        column = as_column(expr)
        if column is not None:
            partial_groups.append(expr)
            partial_columns.append(column)
            final_groups.append(column_expr(column))
            final_projection.append(column_expr(column))
            output_columns.append(column)
        else:
            name = f"__g{index}"
            partial_groups.append(expr.alias(name))
            partial_columns.append((None, name))
            final_groups.append(column_expr((None, name)))
            final_projection.append(column_expr((None, name)).alias(expr.schema_name()))
            output_columns.append((None, expr.schema_name()))
    keys = list(partial_columns)
    partial_aggregates: list[Expr] = []
    final_aggregates: list[Expr] = []
    for index, expr in enumerate(aggregates):
        out_type = output_types.field(len(groups) + index).type
        partials, finals, combined = _split_call(variant, expr, index, out_type)
        partial_aggregates.extend(partials)
        partial_columns.extend((None, p.schema_name()) for p in partials)
        final_aggregates.extend(finals)
        final_projection.append(combined.alias(expr.schema_name()))
        output_columns.append((None, expr.schema_name()))
    return AggregateSplit(
        partial_groups,
        partial_aggregates,
        partial_columns,
        final_groups,
        final_aggregates,
        final_projection,
        output_columns,
        keys,
    )


def _split_call(
    variant: object, expr: Expr, index: int, output_type: pa.DataType
) -> tuple[list[Expr], list[Expr], Expr]:
    """The partial aggregates computed per task, the final aggregates over them and the
    expression over the final aggregates that gives the call's value."""
    inner = expr
    if inner.variant_name() == "Alias":
        inner = wrap(inner.to_variant().expr())
    if inner.variant_name() != "AggregateFunction":
        raise NotDistributable(f"aggregate {expr.schema_name()} is not a plain aggregate call")
    aggregate = inner.to_variant()
    name = variant.agg_func_name(expr.expr)  # type: ignore[attr-defined]
    if (
        name not in _SPLITTABLE_AGGREGATES
        or aggregate.is_distinct()
        or " FILTER (" in expr.schema_name()
        or " ORDER BY " in expr.schema_name()
    ):
        raise NotDistributable(f"aggregate {expr.schema_name()} is not split in two phases yet")
    args = [wrap(a) for a in variant.aggregation_arguments(expr.expr)]  # type: ignore[attr-defined]
    if len(args) != 1:
        raise NotDistributable(f"aggregate {expr.schema_name()} has {len(args)} arguments")
    (arg,) = args

    def partial(suffix: str) -> Expr:
        return column_expr((None, f"__p{index}{suffix}"))

    def final(suffix: str) -> Expr:
        return column_expr((None, f"__f{index}{suffix}"))

    combine: dict[str, tuple[Callable[[Expr], Expr], Callable[[Expr], Expr]]] = {
        "sum": (f.sum, f.sum),
        "count": (f.count, f.sum),
        "min": (f.min, f.min),
        "max": (f.max, f.max),
    }
    if name in combine:
        partial_fn, final_fn = combine[name]
        combined = final("").cast(output_type)
        if name == "count":
            combined = f.coalesce(combined, Expr.literal(0)).cast(output_type)
        return (
            [partial_fn(arg).alias(f"__p{index}")],
            [final_fn(partial("")).alias(f"__f{index}")],
            combined,
        )
    partials = [f.sum(arg).alias(f"__p{index}s"), f.count(arg).alias(f"__p{index}c")]
    finals = [f.sum(partial("s")).alias(f"__f{index}s"), f.sum(partial("c")).alias(f"__f{index}c")]
    divisor = f.nullif(final("c"), Expr.literal(0))
    if not pa.types.is_decimal(output_type):
        combined = final("s").cast(pa.float64()) / divisor.cast(pa.float64())
        return partials, finals, combined.cast(output_type)
    # DataFusion's decimal avg truncates to the output scale; decimal division truncates too,
    # so dividing at a finer scale and then truncating to the output scale gives the same digits.
    scale = output_type.scale
    quotient = final("s").cast(pa.decimal128(38, scale)) / divisor.cast(pa.decimal128(20, 0))
    unit = Expr.literal(pa.scalar(decimal.Decimal(1).scaleb(-scale), pa.decimal128(38, scale)))
    return partials, finals, (quotient - quotient % unit).cast(output_type)
