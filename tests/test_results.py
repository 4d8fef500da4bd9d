"""Results of any size through ``otel-dist query``: the terminal shows a bounded number of
rows (the first and the last, with the total), files are written batch by batch in bounded
memory, every format reads back with pyarrow; plain ``EXPLAIN`` prints its plan as text."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from tests.support import CLI, remote_cluster

BIG = "select * from lineitem, nation"  # 25 times lineitem: about 1.5 M rows at SF 0.01
SMALL = "select * from lineitem, nation where n_nationkey < 3"  # about 180 K rows


@pytest.fixture(scope="module")
def coordinator(tpch_dir: Path) -> Iterator[str]:
    with remote_cluster(tpch_dir) as (url, _):
        yield url


def _run(*args: str) -> tuple[subprocess.CompletedProcess[str], int, float]:
    """Run the CLI; its result, its peak resident memory (sampled) and wall time."""
    started = time.monotonic()
    process = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
                rss = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS"))
                peak[0] = max(peak[0], rss * 1024)
            except (FileNotFoundError, StopIteration, ProcessLookupError):
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate(timeout=300)
    sampler.join(5)
    done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done, peak[0], time.monotonic() - started


def _read(path: Path) -> pa.Table:
    suffix = path.suffix
    if suffix == ".parquet":
        return pq.read_table(path)
    if suffix == ".csv":
        return pacsv.read_csv(path)
    return pajson.read_json(path)


def test_a_million_rows_print_first_and_last_with_the_count(coordinator: str) -> None:
    done, peak, seconds = _run("query", "--coordinator", coordinator, "-e", BIG, "--max-rows", "6")
    assert done.returncode == 0, done.stderr
    print(f"1.5 M rows printed in {seconds:.1f}s, client peak {peak / 1e6:.0f} MB")
    data_rows = [line for line in done.stdout.splitlines() if line.startswith("│")]
    assert len(data_rows) == 7  # 3 first, the "…" row, 3 last
    assert "…" in data_rows[3]
    assert "1,504,375 rows (6 shown)" in done.stdout
    assert len(data_rows[0].split("│")) == 20 + 2  # every column of lineitem and nation


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl", ".json"])
def test_results_stream_to_files_in_bounded_memory(
    coordinator: str, tmp_path: Path, suffix: str
) -> None:
    small, big = tmp_path / f"small{suffix}", tmp_path / f"big{suffix}"
    done, small_peak, _ = _run(
        "query", "--coordinator", coordinator, "-e", SMALL, "--output", str(small)
    )
    assert done.returncode == 0, done.stderr
    done, big_peak, seconds = _run(
        "query", "--coordinator", coordinator, "-e", BIG, "--output", str(big)
    )
    assert done.returncode == 0, done.stderr
    print(
        f"{suffix}: 1.5 M rows in {seconds:.1f}s, {big.stat().st_size / 1e6:.0f} MB file, "
        f"client peak {big_peak / 1e6:.0f} MB (180 K rows: {small_peak / 1e6:.0f} MB)"
    )
    assert done.stderr.strip() == f"1504375 rows written to {big}"
    assert _read(small).num_rows == 180_525
    whole = _read(big)
    assert whole.num_rows == 1_504_375
    # 8 times the rows, far from 8 times the memory: less than half the result's size more
    # (the whole result in memory would be all of it more).
    assert big_peak - small_peak < whole.nbytes / 2, (small_peak, big_peak, whole.nbytes)


def test_plain_explain_prints_the_plan_as_text(coordinator: str) -> None:
    done, _, _ = _run(
        "query", "--coordinator", coordinator, "-e", "explain select count(*) from nation"
    )
    assert done.returncode == 0, done.stderr
    assert "plan_t" not in done.stdout and "┃" not in done.stdout
    assert "Stage" in done.stdout or "stage" in done.stdout, done.stdout


def test_unknown_output_format_is_one_line(coordinator: str, tmp_path: Path) -> None:
    done, _, _ = _run(
        "query", "--coordinator", coordinator, "-e", "select 1", "--output", str(tmp_path / "x.xls")
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "must end in .parquet" in done.stderr


def test_local_streams_its_result_to_a_file_in_bounded_memory(
    tpch_dir: Path, tmp_path: Path
) -> None:
    """``local`` runs the coordinator in its own process: the result still goes to the file
    as the root stage produces it, not gathered first."""
    small, big = tmp_path / "small.parquet", tmp_path / "big.parquet"
    local = ["local", "--workers", "2", "--data", str(tpch_dir), "--output"]
    done, small_peak, _ = _run(*local, str(small), "-e", SMALL)
    assert done.returncode == 0, done.stderr
    done, big_peak, seconds = _run(*local, str(big), "-e", BIG)
    assert done.returncode == 0, done.stderr
    print(f"local: 1.5 M rows in {seconds:.1f}s, peak {big_peak / 1e6:.0f} MB")
    assert f"1504375 rows written to {big}" in done.stderr
    whole = _read(big)
    assert whole.num_rows == 1_504_375
    assert big_peak - small_peak < whole.nbytes / 2, (small_peak, big_peak, whole.nbytes)
