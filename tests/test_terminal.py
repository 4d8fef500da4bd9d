"""``otel-dist query`` on a real terminal (tmux): a running row count while a 1.5 M-row result
arrives, then at most ``--max-rows`` rows with the total, and the prompt back."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import remote_cluster, wait_until

BIG = "select * from lineitem, nation"


def _tmux(socket: str, *args: str) -> str:
    done = subprocess.run(
        ["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_row_cap_and_progress_on_a_terminal(tpch_dir: Path) -> None:
    socket = f"otel-dist-{uuid.uuid4().hex[:8]}"
    with remote_cluster(tpch_dir) as (coordinator, _):
        command = " ".join(
            [
                "env",
                f"PYTHONPATH={shlex.quote(os.environ.get('PYTHONPATH', os.getcwd()))}",
                shlex.quote(sys.executable),
                "-m otel_dist.cli query --coordinator",
                coordinator,
                "--max-rows 10 -e",
                shlex.quote(BIG),
                "; echo EXIT=$?; sleep 60",
            ]
        )
        _tmux(socket, "new-session", "-d", "-x", "250", "-y", "60", command)
        seen: list[str] = []

        def finished() -> str:
            seen.append(_tmux(socket, "capture-pane", "-p", "-J"))
            return seen[-1] if "EXIT=" in seen[-1] else ""

        try:
            screen = wait_until(finished, 120, "the query to end", every=0.05)
            seen_progress = any("rows received" in frame for frame in seen)
        finally:
            subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, timeout=10)
    assert "EXIT=0" in screen, screen
    rows = [line for line in screen.splitlines() if line.startswith("│")]
    assert len(rows) == 11, screen  # 5 first, "…", 5 last
    assert "1,504,375 rows (10 shown)" in screen
    assert "rows received" not in screen  # the progress line is cleared at the end
    assert seen_progress, "no running row count was shown while the rows arrived"
