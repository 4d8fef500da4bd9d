"""How deep and how large a SQL text may be before DataFusion is given it.

DataFusion's parser bounds nesting (parentheses, subqueries, CASE: its
``datafusion.sql_parser.recursion_limit``, 50), but builds chains of operators (``1+1+...``,
``a and b and ...``, ``x::int::int...``, ``union all`` and join chains) in a loop, as trees as
deep as the chain is long; every later pass (planning, optimizing, executing, dropping)
recurses over them. 10,000 terms overflowed the native stack of the thread doing it (a segfault
of the whole process), and a chain's cost grows with the square of its length (2,000 terms
took 4.7 s to plan here, 8,000 took 98 s).

``measure`` reads the text once with a tokenizer (strings, quoted names and comments skipped)
and estimates, without parsing, the deepest chain of operators (operators in one list item of
one parenthesised level, plus the levels around it, plus the join and set-operation chains of
each level) and the number of operators in all. It over-counts rather than under-counts (a
chain of ``x = 1 or x = 2 or ...`` counts both the ``=`` and the ``or``: an IN list is the
better way to write it anyway). ``check`` refuses text beyond either limit with a one-line
error naming it, before anything is planned.

The defaults bound the cost of planning: one chain of 500 took 2 s from SQL to result on a
busy 2-core machine (a chain's cost grows with the square of its length), ten of them in one
statement (5,000 operators) 14 s, 499 ``union all`` 7 s; the TPC-H queries reach depth 33
and 56 operators. ClickHouse's comparable ``max_ast_depth`` is 1,000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from otel_dist.settings import SETTINGS

DEFAULT_MAX_SQL_DEPTH: int = SETTINGS["OTEL_DIST_MAX_SQL_DEPTH"].default
DEFAULT_MAX_SQL_OPERATORS: int = SETTINGS["OTEL_DIST_MAX_SQL_OPERATORS"].default


class SqlTooComplex(ValueError):
    """The SQL text nests deeper, or holds more operators, than the configured limit."""


@dataclass(frozen=True)
class SqlLimits:
    """The deepest operator chain and the most operators a statement may have."""

    max_depth: int = DEFAULT_MAX_SQL_DEPTH
    max_operators: int = DEFAULT_MAX_SQL_OPERATORS


@dataclass(frozen=True)
class SqlComplexity:
    """What ``measure`` found (it stops counting once a limit is passed)."""

    depth: int
    operators: int


_TOKEN = re.compile(
    r"""
    (?P<skip>\s+|--[^\n]*|/\*.*?(?:\*/|\Z)
        |'(?:[^']|'')*(?:'|\Z)|"(?:[^"]|"")*(?:"|\Z)|`[^`]*(?:`|\Z))
   |(?P<word>[A-Za-z_][A-Za-z0-9_$]*)
   |(?P<number>[0-9][0-9.]*(?:[eE][-+]?[0-9]+)?)
   |(?P<open>[(\[])
   |(?P<close>[)\]])
   |(?P<comma>,)
   |(?P<op>::|\|\||<=|>=|<>|!=|->>|->|=>|<<|>>|[-+*/%=<>|&^~!#@?:])
   |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
# Infix and postfix keywords: each one may add a level to the chain it is in.
_OPERATOR_WORDS = frozenset(
    [
        "and",
        "or",
        "xor",
        "not",
        "is",
        "in",
        "like",
        "ilike",
        "between",
        "similar",
        "div",
        "collate",
        "at",
        "overlaps",
        "regexp",
        "rlike",
        "escape",
    ]
)
# Keywords that chain relations: the plan grows one level deeper with each.
_CHAIN_WORDS = frozenset(["union", "except", "intersect", "minus", "join"])
# Keywords that start a new list item or clause: the chain of operators before them ends.
_CLAUSE_WORDS = frozenset(
    [
        "select",
        "where",
        "group",
        "by",
        "having",
        "order",
        "limit",
        "offset",
        "qualify",
        "window",
        "when",
        "then",
        "else",
        "as",
        "with",
        "values",
        "on",
        "using",
    ]
)
_FROM_ENDS = frozenset(
    [
        "where",
        "group",
        "having",
        "order",
        "limit",
        "offset",
        "qualify",
        "window",
        "union",
        "except",
        "intersect",
        "minus",
    ]
)


@dataclass
class _Level:
    ops: int = 0  # operators since the last list item or clause
    chain: int = 0  # joins, set operations and FROM items: never reset within the level
    in_from: bool = False
    case: bool = False


def measure(sql: str, limits: SqlLimits | None = None) -> SqlComplexity:
    """The estimated deepest chain and the operator count of ``sql`` (linear time); with
    ``limits``, counting stops as soon as one is passed."""
    stop_depth = limits.max_depth if limits else None
    stop_ops = limits.max_operators if limits else None
    stack = [_Level()]
    outer = 0  # sum of ops + chain + 1 over the levels below the top one
    depth = operators = 0
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind == "skip" or kind == "number":
            continue
        top = stack[-1]
        if kind == "word":
            word = match.group().lower()
            if word in _OPERATOR_WORDS:
                top.ops += 1
            elif word in _CHAIN_WORDS:
                top.chain += 1
                top.in_from = word == "join"
            elif word == "from":
                top.ops, top.in_from = 0, True
            elif word == "case":
                outer += top.ops + top.chain + 1
                stack.append(_Level(case=True))
                continue
            elif word == "end" and top.case and len(stack) > 1:
                stack.pop()
                outer -= stack[-1].ops + stack[-1].chain + 1
                continue
            elif word in _CLAUSE_WORDS or word in _FROM_ENDS:
                top.ops = 0
                top.in_from = top.in_from and word not in _FROM_ENDS and word != "select"
                continue
            else:
                continue
        elif kind == "op":
            top.ops += 1
        elif kind == "comma":
            if top.in_from:
                top.chain += 1
            else:
                top.ops = 0
            continue
        elif kind == "open":
            top.ops += 1  # a call or subscript binds to what precedes it
            outer += top.ops + top.chain + 1
            stack.append(_Level())
            continue
        elif kind == "close":
            while len(stack) > 1 and stack[-1].case:  # an unclosed CASE: the parser says so
                stack.pop()
                outer -= stack[-1].ops + stack[-1].chain + 1
            if len(stack) > 1:
                stack.pop()
                outer -= stack[-1].ops + stack[-1].chain + 1
            continue
        else:
            continue
        operators += 1
        depth = max(depth, outer + top.ops + top.chain)
        if (stop_depth is not None and depth > stop_depth) or (
            stop_ops is not None and operators > stop_ops
        ):
            break
    return SqlComplexity(depth, operators)


def check(sql: str, limits: SqlLimits) -> None:
    """Raise ``SqlTooComplex`` (one line, naming the limit) for SQL beyond ``limits``."""
    found = measure(sql, limits)
    if found.depth > limits.max_depth:
        raise SqlTooComplex(
            f"the SQL chains or nests operators more than {limits.max_depth} deep "
            f"(max_sql_depth); use IN lists or split long chains"
        )
    if found.operators > limits.max_operators:
        raise SqlTooComplex(
            f"the SQL has more than {limits.max_operators} operators (max_sql_operators)"
        )
