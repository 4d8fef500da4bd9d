"""Distributed EXPLAIN ANALYZE built only from a query's spans.

The tree is rebuilt from ``SpanRecord``s alone (the coordinator's live collection or an
OTLP/JSON trace file read later), so both give the same result:

* ``build.build_tree(spans, query_id=None)`` -> ``model.ExplainTree``
* ``build.load_trace_file(path)`` -> the spans of an OTLP/JSON file
* ``text.render_text(tree)`` -> a plain-text report for a terminal or a log
* ``json_tree.tree_to_dict(tree)`` -> a JSON-serialisable dict
* ``critical_path.critical_path(tree)`` -> the chain of tasks that set the query's latency
  (``tree.critical_path``, computed when the tree is built)
* ``format``: numbers, durations and sizes for people, shared by the renderers
"""

from __future__ import annotations

from otel_dist.explain.build import build_tree, load_trace_file
from otel_dist.explain.json_tree import tree_to_dict
from otel_dist.explain.model import (
    CriticalPath,
    CriticalStep,
    ExplainTree,
    MetricStats,
    OperatorNode,
    ReadNode,
    SkewInfo,
    StageNode,
    TaskNode,
)
from otel_dist.explain.text import render_text

__all__ = [
    "CriticalPath",
    "CriticalStep",
    "ExplainTree",
    "MetricStats",
    "OperatorNode",
    "ReadNode",
    "SkewInfo",
    "StageNode",
    "TaskNode",
    "build_tree",
    "load_trace_file",
    "render_text",
    "tree_to_dict",
]
