"""The query profile page rendered in a real headless Chromium: every task has its bar, the
tree shows every stage, nothing is fetched from the network, and a screenshot is kept."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from otel_dist import tpch
from otel_dist.coordinator.local import LocalCluster
from otel_dist.explain.build import build_tree
from otel_dist.explain.html import render_html

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1200",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run `apt-get install -y chromium` (see .ci/run)")
    return path


def _run_chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)


def _page_requests(net_log: Path) -> set[str]:
    """Network URLs the page asked for (Chromium's own background requests have no origin)."""
    return {
        event["params"]["url"]
        for event in json.loads(net_log.read_text()).get("events", [])
        if isinstance(event.get("params"), dict)
        and "url" in event["params"]
        and event["params"].get("initiator", "not an origin") != "not an origin"
        and event["params"]["url"].startswith(("http:", "https:", "ws:", "wss:"))
    }


def test_the_network_check_sees_a_page_fetch(tmp_path: Path) -> None:
    page = tmp_path / "fetching.html"
    page.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>')
    net_log = tmp_path / "net-log.json"
    _run_chromium(page, tmp_path / "profile", "--dump-dom", f"--log-net-log={net_log}")
    assert _page_requests(net_log) == {"http://example.invalid/x.png"}


@pytest.mark.parametrize("number", [1, 3])
def test_profile_page_in_chromium(cluster: LocalCluster, tmp_path: Path, number: int) -> None:
    result = cluster.execute(tpch.query(number))
    assert result.telemetry is not None
    tree = build_tree(result.telemetry.spans, result.query_id)
    page = tmp_path / f"q{number}.html"
    page.write_text(render_html(tree, "http://jaeger.invalid:16686/trace/{trace_id}"))

    net_log = tmp_path / "net-log.json"
    dom = _run_chromium(
        page, tmp_path / "profile-dom", "--dump-dom", f"--log-net-log={net_log}"
    ).stdout
    for stage in result.plan.stages:
        assert f'id="stage-{stage.stage_id}"' in dom
        for task in range(stage.task_count):
            assert f'data-task="{stage.stage_id}/{task}"' in dom
    bars = re.findall(r'data-task="(\d+/\d+)"', dom)
    assert len(bars) == sum(stage.task_count for stage in result.plan.stages)
    assert result.telemetry.trace_id in dom

    assert _page_requests(net_log) == set()

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"profile-q{number:02d}.png"
    _run_chromium(page, tmp_path / "profile-shot", f"--screenshot={screenshot}")
    assert screenshot.stat().st_size > 10_000


def test_profile_page_is_self_contained(cluster: LocalCluster) -> None:
    result = cluster.execute(tpch.query(6))
    assert result.telemetry is not None
    page = render_html(build_tree(result.telemetry.spans, result.query_id))
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)
    assert "@import" not in page and "url(" not in page
