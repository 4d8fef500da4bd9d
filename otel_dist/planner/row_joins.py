"""Fuse a stage plan's joins of one input with itself on its row number into one read.

A stage input whose columns come from several tables is read as one relation per table,
joined back on the row number (``Stages.read``): DataFusion's Python API gives a relation one
qualifier, and the query's own expressions name columns by table. The join is the identity,
yet DataFusion runs it as a hash join that copies one side into a hash table: CPU and memory
for nothing. Once the stage is a Substrait plan, where columns are positions and the qualifiers
are gone, the join can go: ``fuse_row_joins`` rewrites every inner join of two projections of
the same table on that table's row number into one projection over one read of it.

The rewrite works on the plan's JSON form (``datafusion.substrait.Plan.to_json``) and touches
only joins of exactly that shape; anything else is left as it was.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from datafusion.substrait import Plan

from otel_dist.protocol import ROW_ID_COLUMN

Json = dict[str, Any]


def fuse_row_joins(plan: Plan) -> Plan | None:
    """``plan`` with its row-number self-joins fused, or None when it has none."""
    document = json.loads(plan.to_json())
    equal_anchors = {
        extension["extensionFunction"].get("functionAnchor", 0)
        for extension in document.get("extensions", [])
        if extension.get("extensionFunction", {}).get("name") == "equal"
    }
    fused = 0
    for relation in document.get("relations", []):
        root = relation.get("root")
        if root is not None:
            root["input"], count = _fuse(root["input"], equal_anchors)
            fused += count
    if not fused:
        return None
    return Plan.from_json(json.dumps(document))


def _fuse(rel: Json, equal_anchors: set[int]) -> tuple[Json, int]:
    """``rel`` with its row-number self-joins fused, bottom up, and how many were."""
    kind, body = next(iter(rel.items()))
    count = 0
    for key in ("input", "left", "right"):
        if isinstance(body.get(key), dict):
            body[key], fused = _fuse(body[key], equal_anchors)
            count += fused
    if isinstance(body.get("inputs"), list):  # set relations (UNION) and the like
        for index, child in enumerate(body["inputs"]):
            body["inputs"][index], fused = _fuse(child, equal_anchors)
            count += fused
    if kind == "project":
        collapsed = _collapse_projects(rel)
        if collapsed is not None:
            return collapsed, count
    if kind == "join":
        merged = _merge_row_join(body, equal_anchors)
        if merged is not None:
            return merged, count + 1
    return rel, count


def _read_of_table(rel: Json) -> Json | None:
    """The read of a whole named table (no filter, no column mask), or None."""
    read = rel.get("read")
    if read is None or "namedTable" not in read:
        return None
    if set(read) - {"namedTable", "baseSchema", "common"} or read.get("common"):
        return None
    return read


def _plain_projection(rel: Json) -> Json | None:
    """The body of a projection that has nothing but its input, expressions and output
    mapping, or None."""
    project = rel.get("project")
    if project is None or set(project) - {"input", "expressions", "common"}:
        return None
    if set(project.get("common") or {}) - {"emit", "direct"}:
        return None
    return project


def _output_mapping(project: Json, width: int) -> list[int]:
    """A projection's output as indexes into its input's ``width`` fields followed by its
    expressions."""
    mapping = (project.get("common") or {}).get("emit", {}).get("outputMapping")
    if mapping is None:
        return list(range(width + len(project.get("expressions", []))))
    return list(mapping)


def _projection_over_read(rel: Json) -> tuple[list[Json], list[int], Json] | None:
    """A projection straight over a whole-table read: its expressions, its output (as
    indexes into the read's fields followed by the expressions) and the read."""
    project = _plain_projection(rel)
    if project is None:
        return None
    read = _read_of_table(project["input"])
    if read is None:
        return None
    width = len(read["baseSchema"]["names"])
    return project.get("expressions", []), _output_mapping(project, width), read


def _merge_row_join(join: Json, equal_anchors: set[int]) -> Json | None:
    """One projection over one read for an inner join of two projections of the same
    table on its row number; None for any other join."""
    if join.get("type") != "JOIN_TYPE_INNER" or "postJoinFilter" in join:
        return None
    if set(join) - {"left", "right", "expression", "type", "common"} or join.get("common"):
        return None
    left = _projection_over_read(join["left"])
    right = _projection_over_read(join["right"])
    if left is None or right is None:
        return None
    left_exprs, left_out, read = left
    right_exprs, right_out, right_read = right
    if (
        read["namedTable"] != right_read["namedTable"]
        or read["baseSchema"] != right_read["baseSchema"]
    ):
        return None
    names = read["baseSchema"]["names"]
    if ROW_ID_COLUMN not in names:
        return None
    row_id = names.index(ROW_ID_COLUMN)
    keys = _equality_fields(join.get("expression"), equal_anchors)
    if keys is None:
        return None
    left_key, right_key = sorted(keys)
    if left_key >= len(left_out) or not 0 <= right_key - len(left_out) < len(right_out):
        return None
    width = len(names)

    def source(mapping: list[int], exprs: list[Json], position: int) -> int | None:
        """The read field an output position passes through, if it does."""
        index = mapping[position]
        if index < width:
            return index
        return _field(exprs[index - width])

    if source(left_out, left_exprs, left_key) != row_id:
        return None
    if source(right_out, right_exprs, right_key - len(left_out)) != row_id:
        return None
    offset = len(left_exprs)
    mapping = left_out + [index if index < width else index + offset for index in right_out]
    return {
        "project": {
            "common": {"emit": {"outputMapping": mapping}},
            "input": {"read": copy.deepcopy(read)},
            "expressions": left_exprs + right_exprs,
        }
    }


def _collapse_projects(rel: Json) -> Json | None:
    """A projection over a projection over a whole-table read as one projection over the
    read (the outer expressions with the inner outputs put in for their fields), so that a
    fused join can take part in the next one; None when ``rel`` is not that."""
    outer = _plain_projection(rel)
    inner = _projection_over_read(outer["input"]) if outer is not None else None
    if outer is None or inner is None:
        return None
    inner_exprs, inner_out, read = inner
    width = len(read["baseSchema"]["names"])

    def as_expression(index: int) -> Json:
        """Inner output ``index`` as an expression over the read."""
        source = inner_out[index]
        if source < width:
            return _field_reference(source)
        return copy.deepcopy(inner_exprs[source - width])

    outer_exprs = outer.get("expressions", [])
    substituted = []
    for expression in outer_exprs:
        replaced = _substitute(expression, as_expression)
        if replaced is None:
            return None
        substituted.append(replaced)
    inner_width = len(inner_out)
    outer_mapping = _output_mapping(outer, inner_width)
    # The inner outputs the outer passes through become expressions of their own.
    passed = [index for index in outer_mapping if index < inner_width]
    expressions = [as_expression(index) for index in passed] + substituted
    mapping = []
    for index in outer_mapping:
        if index < inner_width:
            mapping.append(width + passed.index(index))
        else:
            mapping.append(width + len(passed) + index - inner_width)
    return {
        "project": {
            "common": {"emit": {"outputMapping": mapping}},
            "input": {"read": copy.deepcopy(read)},
            "expressions": expressions,
        }
    }


def _field(expression: Json) -> int | None:
    """The input field a plain column reference selects, or None."""
    selection = expression.get("selection")
    if selection is None or set(selection) != {"directReference", "rootReference"}:
        return None
    reference = selection["directReference"]
    if set(reference) != {"structField"} or set(reference["structField"]) - {"field"}:
        return None
    return int(reference["structField"].get("field", 0))


def _field_reference(index: int) -> Json:
    field = {"field": index} if index else {}
    return {"selection": {"directReference": {"structField": field}, "rootReference": {}}}


def _equality_fields(expression: Json | None, equal_anchors: set[int]) -> set[int] | None:
    """The two fields of ``a = b`` on plain column references, or None."""
    if expression is None:
        return None
    function = expression.get("scalarFunction")
    if function is None or function.get("functionReference", 0) not in equal_anchors:
        return None
    arguments = function.get("arguments", [])
    if len(arguments) != 2:
        return None
    fields = [_field(argument.get("value", {})) for argument in arguments]
    if None in fields or fields[0] == fields[1]:
        return None
    return {field for field in fields if field is not None}


def _substitute(node: Any, replacement: Callable[[int], Json]) -> Any:
    """``node`` with every plain column reference to the input replaced by
    ``replacement(field)``; None when it holds a reference of another kind (a nested field,
    an outer query's column) or a subquery, which the substitution cannot follow."""
    if isinstance(node, list):
        items = [_substitute(item, replacement) for item in node]
        return None if any(item is None for item in items) else items
    if not isinstance(node, dict):
        return node
    if "subquery" in node:
        return None
    if "selection" in node:
        field = _field(node)
        return None if field is None else replacement(field)
    fields = {key: _substitute(value, replacement) for key, value in node.items()}
    return None if any(value is None for value in fields.values()) else fields
