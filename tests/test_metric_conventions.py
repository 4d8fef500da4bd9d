"""Metric conventions a Prometheus or Grafana user relies on: OpenMetrics ``# UNIT`` lines for
every metric whose name carries a unit, a closed set of ``otel_dist_stage_kind`` label values,
and exemplars (the task span's trace) on the workers' histograms; scraped from real workers."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from otel_dist import tpch
from otel_dist.frontend.local import LocalCluster
from otel_dist.telemetry.metrics import STAGE_KIND_LABELS, stage_kind_label
from tests.support import wait_until

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _scrape(url: str) -> str:
    request = urllib.request.Request(url, headers={"Accept": OPENMETRICS})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def test_stage_kind_labels_are_a_closed_set() -> None:
    assert stage_kind_label("scan + join + partial aggregate") == "scan"
    assert stage_kind_label("final aggregate + join + top-k") == "final aggregate"
    assert stage_kind_label("") == "unknown"
    assert stage_kind_label("x" * 500) == "other"


def test_workers_expose_units_bounded_kinds_and_exemplars(tpch_dir: Path) -> None:
    with LocalCluster(workers=2, data=tpch_dir, min_task_bytes=0, metrics_ports=True) as local:
        results = [local.execute(tpch.query(n)) for n in (3, 5)]
        trace_ids = {r.telemetry.trace_id for r in results if r.telemetry is not None}
        url = local.worker_metrics_urls[0]

        def exemplars() -> list[str]:
            # The SDK reports an exemplar in the collection after its measurement: scrape on.
            found = re.findall(
                r'^otel_dist_task_duration_seconds_bucket\{.*\} \S+ # \{.*trace_id="([0-9a-f]{32})"',
                _scrape(url),
                re.MULTILINE,
            )
            return found

        found = wait_until(exemplars, timeout=15, what="exemplars on the task duration")
        text = _scrape(url)
    assert set(found) <= trace_ids and set(found) & trace_ids
    units = dict(re.findall(r"^# UNIT (\S+) (\S+)$", text, re.MULTILINE))
    assert units["otel_dist_task_duration_seconds"] == "seconds"
    assert units["otel_dist_worker_memory_usage_bytes"] == "bytes"
    for name, unit in units.items():
        assert name.endswith("_" + unit), name
    typed = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)
    for name, _ in typed:
        suffix = name.rsplit("_", 1)[-1]
        if suffix in ("seconds", "bytes"):
            assert units.get(name) == suffix, f"{name} has no # UNIT line"
    kinds = set(re.findall(r'otel_dist_stage_kind="([^"]*)"', text))
    assert kinds and kinds <= STAGE_KIND_LABELS, kinds
