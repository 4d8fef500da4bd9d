"""The engines ``otel-dist bench`` compares otel_dist with, each in a process of its own, and
the peak resident memory of processes.

Every engine (single-node DataFusion, and the peers installed in the same environment: DuckDB,
Spark when ``pyspark`` and Java are present) runs in a child process that reads SQL from a
pipe and answers with the row count, so its memory is its own: ``VmHWM`` of
``/proc/<pid>/status`` is the process's peak resident set, and writing ``5`` to
``/proc/<pid>/clear_refs`` resets it, which gives a peak per query.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

PEERS = ("duckdb", "spark")
_START_TIMEOUT_S = 300.0  # Spark's JVM takes a while
_QUERY_TIMEOUT_S = 3600.0


def peak_rss_bytes(pids: Iterable[int]) -> int:
    """The summed peak resident set (``VmHWM``) of ``pids``; a process gone counts 0."""
    return _summed_status_field(pids, "VmHWM:")


def rss_bytes(pids: Iterable[int]) -> int:
    """The summed resident set (``VmRSS``) of ``pids`` now; a process gone counts 0."""
    return _summed_status_field(pids, "VmRSS:")


def _summed_status_field(pids: Iterable[int], field: str) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith(field):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def reset_peak_rss(pids: Iterable[int]) -> None:
    """Start the processes' peaks afresh (their current resident set); never raises."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as clear:
                clear.write("5")
        except OSError:
            continue


def peer_unavailable(name: str) -> str | None:
    """Why the peer cannot run here, or None."""
    if name == "duckdb":
        return None if importlib.util.find_spec("duckdb") else "the duckdb package is missing"
    if name == "spark":
        if importlib.util.find_spec("pyspark") is None:
            return "the pyspark package is missing"
        if shutil.which("java") is None:
            return "java is missing"
        return None
    return f"unknown peer {name!r} (known: {', '.join(PEERS)})"


@dataclass
class EngineProcess:
    """One engine in a child process: ``run(sql)`` returns the result's row count."""

    kind: str  # datafusion, duckdb, spark
    data: Path
    threads: int

    def __post_init__(self) -> None:
        spawn = multiprocessing.get_context("spawn")
        self._conn, child = spawn.Pipe()
        self._process = spawn.Process(
            target=_serve, args=(self.kind, str(self.data), self.threads, child), daemon=True
        )
        self._process.start()
        child.close()
        self._receive(_START_TIMEOUT_S)  # "ready", or the reason it failed

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def run(self, sql: str) -> int:
        try:
            self._conn.send(sql)
        except OSError:
            raise RuntimeError(self._exited()) from None
        rows = self._receive(_QUERY_TIMEOUT_S)
        assert isinstance(rows, int)
        return rows

    def _receive(self, timeout_s: float) -> object:
        ready = multiprocessing.connection.wait(
            [self._conn, self._process.sentinel], timeout=timeout_s
        )
        if self._conn not in ready:
            raise RuntimeError(
                self._exited()
                if self._process.sentinel in ready
                else f"{self.kind} gave no answer in {timeout_s:.0f} s"
            )
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(self._exited()) from None
        if status != "ok":
            raise RuntimeError(f"{self.kind}: {value}")
        return value

    def _exited(self) -> str:
        """``duckdb exited (killed by SIGKILL)``: the engine's process has ended."""
        self._process.join(1)
        code = self._process.exitcode
        if code is None:
            return f"{self.kind} exited"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"{self.kind} exited (killed by {signal.Signals(-code).name})"
        return f"{self.kind} exited (status {code})"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
        self._conn.close()


def _serve(kind: str, data: str, threads: int, conn: Connection) -> None:
    try:
        run = _engine(kind, Path(data), threads)
    except Exception as error:  # reported to the parent as one line
        where = f" (its output: {spark_log_path(os.getpid())})" if kind == "spark" else ""
        conn.send(("error", _error_line(error) + where))
        return
    conn.send(("ok", "ready"))
    while (sql := conn.recv()) is not None:
        try:
            conn.send(("ok", run(sql)))
        except Exception as error:
            conn.send(("error", _error_line(error)))
    if kind == "spark":  # kept only when the engine failed to start
        with contextlib.suppress(OSError):
            spark_log_path(os.getpid()).unlink()


def _error_line(error: Exception) -> str:
    """The error in one line; for Spark, the JVM's exception, not py4j's words for the call
    ("An error occurred while calling o233.collectToPython.")."""
    java_exception = getattr(error, "java_exception", None)
    if java_exception is not None:
        with contextlib.suppress(Exception):  # the JVM may be gone
            return " ".join(str(java_exception.toString()).split())[:500]
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _tables(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.is_dir())


def _engine(kind: str, data: Path, threads: int) -> Callable[[str], int]:
    """A function of SQL to row count, on the tables of ``data`` (a folder per table)."""
    if kind == "datafusion":
        from otel_dist.planner.catalog import Catalog

        catalog = Catalog.from_folder(data)

        def run_datafusion(sql: str) -> int:
            return catalog.session(threads).sql(sql).to_arrow_table().num_rows

        return run_datafusion
    if kind == "duckdb":
        import duckdb

        con = duckdb.connect()
        con.execute(f"SET threads = {threads}")
        for table in _tables(data):
            con.execute(
                f"CREATE VIEW {table.name} AS SELECT * FROM read_parquet('{table}/*.parquet')"
            )

        def run_duckdb(sql: str) -> int:
            return len(con.execute(sql).fetchall())

        return run_duckdb
    if kind == "spark":
        from pyspark.sql import SparkSession

        _output_to(spark_log_path(os.getpid()))
        # Without it Spark warns that the host name resolves to a loopback address.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        spark = (
            SparkSession.builder.master(f"local[{threads}]")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            # Local mode runs the tasks in the driver, whose heap is 1 GB by default: too
            # little for TPC-H SF 1's Q21, which then fails with an OutOfMemoryError.
            .config("spark.driver.memory", _spark_heap())
            .config("spark.sql.shuffle.partitions", str(max(1, threads)))
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        for table in _tables(data):
            spark.read.parquet(str(table)).createOrReplaceTempView(table.name)

        def run_spark(sql: str) -> int:
            return len(spark.sql(sql).collect())

        return run_spark
    raise ValueError(f"unknown engine {kind!r}")


def _spark_heap() -> str:
    """A quarter of this machine's memory, at least 1 GB: Spark's heap grows to it only as
    needed, and its peak resident memory is reported like any other."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(1, total // 4 >> 30)}g"


def spark_log_path(pid: int) -> Path:
    """Where the Spark engine of process ``pid`` and its JVM write their output."""
    return Path(tempfile.gettempdir()) / f"otel-dist-bench-spark-{pid}.log"


def _output_to(log: Path) -> None:
    """Send this process's stdout and stderr, and so its children's (Spark's JVM logs and
    draws progress bars on the terminal it inherits), to ``log``: the engine talks to the
    bench through its pipe only."""
    with open(log, "ab") as file:
        for stream in (1, 2):
            os.dup2(file.fileno(), stream)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Spark's JVM is a child of its Python process)."""
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending.extend(int(c) for c in children.read().split())
        except OSError:
            continue
    return pids
