"""The query profile page rendered in a real headless Chromium: every task has its bar with its
time parts stacked inside, the critical path is highlighted, the tree shows every stage,
nothing is fetched from the network, and screenshots are kept in ``test-artifacts/``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from otel_dist import tpch
from otel_dist.explain.build import build_tree
from otel_dist.explain.html import render_html
from otel_dist.explain.model import ExplainTree, StageNode, TaskNode
from otel_dist.explain.text import render_text
from otel_dist.frontend.local import LocalCluster

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


# The page measures itself once laid out: every bar's stacked parts against the bar, and the
# highlighted critical path; --dump-dom then shows what it wrote.
_MEASURE = """
<script>
const bars=[...document.querySelectorAll('.bar')].map(bar=>{
 const parts=[...bar.querySelectorAll('.parts i')];
 return {task:bar.dataset.task, width:bar.getBoundingClientRect().width,
  parts:parts.reduce((sum,p)=>sum+p.getBoundingClientRect().width,0),
  names:parts.map(p=>p.dataset.part), critical:bar.dataset.critical??null};
});
const out=document.createElement('pre');out.id='measure';
out.textContent=JSON.stringify({bars,steps:document.querySelectorAll('#critical-path li[data-step]').length,
 ticks:[...document.querySelectorAll('.axis')].map(a=>a.textContent)});
document.body.appendChild(out);
</script>
"""


@pytest.mark.parametrize("number", [5, 9])
def test_stacked_parts_and_critical_path_in_chromium(
    cluster: LocalCluster, tmp_path: Path, number: int
) -> None:
    result = cluster.execute(tpch.query(number))
    assert result.telemetry is not None
    tree = build_tree(result.telemetry.spans, result.query_id)
    assert tree.critical_path is not None
    page = tmp_path / f"q{number}.html"
    page.write_text(render_html(tree).replace("</body>", _MEASURE + "</body>"))
    dom = _run_chromium(page, tmp_path / "profile-dom", "--dump-dom").stdout
    match = re.search(r'<pre id="measure">(.*?)</pre>', dom, re.S)
    assert match is not None, "the page did not measure itself"
    measured = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    tasks = {(s.stage_id, t.task_index): t for s in tree.all_stages() for t in s.tasks}
    for bar in measured["bars"]:
        stage_id, task_index = (int(x) for x in bar["task"].split("/"))
        task = tasks[stage_id, task_index]
        # the parts fill the bar: they add up to the task's duration
        assert bar["parts"] == pytest.approx(bar["width"], abs=2.0), bar
        assert set(bar["names"]) == {n for n, ns in task.time_breakdown_ns.items() if ns > 0}
    steps = tree.critical_path.steps
    critical = sorted(
        (int(bar["critical"]), bar["task"]) for bar in measured["bars"] if bar["critical"]
    )
    assert critical == [
        (position, f"{step.stage_id}/{step.task_index}") for position, step in enumerate(steps)
    ]
    assert measured["steps"] == len(steps)
    # an axis in one unit, with that unit on every tick
    units = {tick.split()[-1] for tick in measured["ticks"]}
    assert len(units) == 1 and units <= {"µs", "ms", "s"}, measured["ticks"]
    assert measured["ticks"][0] == f"0 {units.pop()}"
    # per-task plan variants, marked as in the text
    text_markers = re.findall(r"tasks=\[[\d,]+\]", render_text(tree, verbose=True))
    page_markers = re.findall(r"tasks=\[[\d,]+\]", page.read_text())
    assert sorted(set(text_markers)) == sorted(set(page_markers))

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"profile-parts-q{number:02d}.png"
    _run_chromium(page, tmp_path / "profile-shot", f"--screenshot={screenshot}")
    assert screenshot.stat().st_size > 10_000


def test_a_worker_that_died_keeps_its_lane() -> None:
    dead = "grpc://127.0.0.1:9"
    tree = ExplainTree(
        query_id="q",
        trace_id="t",
        sql="select 1",
        duration_ns=50_000_000,
        status="error",
        error=f"stage 1 task 1 on {dead} failed: worker {dead} is unreachable",
        started_ns=1_000_000_000,
        stages=[
            StageNode(
                stage_id=1,
                task_count=2,
                partitioning="single",
                kind="scan",
                fallback_reason=None,
                duration_ns=30_000_000,
                tasks=[
                    TaskNode(
                        0,
                        "grpc://127.0.0.1:8",
                        (0,),
                        30_000_000,
                        "finished",
                        None,
                        started_ns=1_010_000_000,
                        time_breakdown_ns={"operators": 30_000_000},
                    ),
                    TaskNode(1, None, None, None, "unknown", None),
                ],
            )
        ],
    )
    page = render_html(tree)
    assert f"data-worker='{dead}'" in page and "data-worker='grpc://127.0.0.1:8'" in page
    assert "no telemetry from this worker" in page
    assert ">0 ms<" in page and ">0ns<" not in page
