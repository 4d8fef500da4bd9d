"""Small edges of the command line: ``tpchgen`` into a folder of another scale, the query list
of the coordinator's pages, and the README's Python snippet run as written."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from otel_dist import tpch
from otel_dist.explain.recent import RecentQueries
from otel_dist.explain.web import QueryPagesServer
from otel_dist.frontend.local import LocalCluster
from otel_dist.tpch.datagen import existing_scale
from tests.support import CLI

README = Path(__file__).resolve().parents[1] / "README.md"


def test_tpchgen_refuses_a_folder_holding_another_scale(tpch_dir: Path) -> None:
    scale = existing_scale(tpch_dir)
    assert scale is not None
    other = "0.5" if scale != 0.5 else "0.25"
    done = subprocess.run(
        [*CLI, "tpchgen", "--scale", other, "--out", str(tpch_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"already holds TPC-H SF {scale:g}" in lines[0], done.stderr
    same = subprocess.run(
        [*CLI, "tpchgen", "--scale", f"{scale:g}", "--out", str(tpch_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert same.returncode == 0 and "already in" in same.stdout, same.stderr


def test_query_list_shows_the_query_not_its_comment_header(cluster: LocalCluster) -> None:
    recent = RecentQueries()
    cluster.coordinator.add_listener(recent)
    try:
        cluster.coordinator.execute(tpch.query(6))
    finally:
        cluster.coordinator.remove_listener(recent)
    pages = QueryPagesServer(recent).start()
    try:
        page = urllib.request.urlopen(f"{pages.url}/queries", timeout=10).read().decode()
    finally:
        pages.stop()
    listed = re.findall(r"<code>(.*?)</code>", page)
    assert listed and listed[0].startswith("select sum(l_extendedprice"), listed


def test_readme_python_snippet_runs_as_written(tmp_path: Path, tpch_dir: Path) -> None:
    text = README.read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert snippet is not None
    done = subprocess.run(
        [sys.executable, "-c", snippet.group(1)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**__import__("os").environ, "OTEL_DIST_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr
