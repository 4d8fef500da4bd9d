"""``otel-dist bench``: the cost of distribution and of telemetry, side by side in one run.

Per query of the suite (TPC-H, the default, or TPC-DS), interleaved run by run, in an order that rotates, so drift hits every system
alike:

* ``datafusion``: single-node DataFusion on the same files, with the cluster's thread budget,
  in a process of its own;
* ``otel_dist``: a local cluster with telemetry off;
* ``otel_dist_traced``: a local cluster with full telemetry (spans, final Flight messages,
  router, OTLP export to a real OTLP receiver running locally, explain tree built);
* ``--peers``: engines installed in the same environment, each in a process of its own with
  the same thread budget (``duckdb``; ``spark`` when ``pyspark`` and Java are present).

Beside each time, each system's peak resident memory during the query (``VmHWM``, reset before
each query; a cluster's summed over its workers; ``bench_engines.py``). The coordinators of
both clusters run in the bench process: its own peak is reported apart.

Then the Flight router's throughput against a plain ``pyarrow.flight`` read of the same stream,
and the time to build an explain tree from 10,000 spans. Medians are reported; nothing asserts.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from rich.console import Console
from rich.table import Table

from otel_dist import tpcds, tpch
from otel_dist.bench_engines import (
    EngineProcess,
    peak_rss_bytes,
    peer_unavailable,
    process_tree,
    reset_peak_rss,
)
from otel_dist.errors import one_line
from otel_dist.exchange.router import route
from otel_dist.frontend.local import LocalCluster
from otel_dist.session import plain_schema
from otel_dist.telemetry import envelope
from otel_dist.telemetry.envelope import TaskRef
from otel_dist.testing.otlp_receiver import OtlpReceiver
from otel_dist.tpch.datagen import default_cache_dir, generate

SYSTEMS = ("datafusion", "otel_dist", "otel_dist_traced")


@dataclass(frozen=True)
class BenchOptions:
    """What to measure."""

    scale: float
    workers: int
    runs: int
    queries: tuple[int, ...] = tpch.QUERY_NUMBERS
    # DataFusion partitions per worker task. One: three workers then run three threads of
    # DataFusion on this 2-core machine (two each was six, and 12% more worker CPU for the same
    # queries), and single-node DataFusion gets the same budget of three (its fastest here).
    target_partitions: int = 1
    # Unmeasured passes over the queries. Workers keep the memory they free (see
    # worker/allocator.py), so their heaps grow to what the queries need over the first passes,
    # and until then the kernel zeroes new pages: a fresh cluster ran Q18 at SF 1 in 1.3 s on
    # its second pass and 0.6 s from about its eighth, with the same DataFusion CPU and seven
    # times the kernel's (perf: clear_page_erms). After 3 passes the two clusters were still on
    # that curve, at different points: Q18 ran 2-13% slower traced than untraced in four bench
    # runs; after 8, 0.710 s against 0.708 s.
    warmup: int = 8
    data: Path | None = None
    suite: str = "tpch"  # or "tpcds"
    peers: tuple[str, ...] = ()  # bench_engines.PEERS


@dataclass(frozen=True)
class Suite:
    """A benchmark's queries, its data generator and the fact table the router streams."""

    title: str
    query: Callable[[int], str]
    query_numbers: tuple[int, ...]
    generate: Callable[[float], Path]
    fact_table: str


def _tpch_data(scale: float) -> Path:
    return generate(scale, default_cache_dir(scale))


def _tpcds_data(scale: float) -> Path:
    from otel_dist.tpcds.datagen import generate as generate_tpcds

    folder = default_cache_dir(scale)
    return generate_tpcds(scale, folder.with_name(folder.name.replace("tpch", "tpcds", 1)))


SUITES = {
    "tpch": Suite("TPC-H", tpch.query, tpch.QUERY_NUMBERS, _tpch_data, "lineitem"),
    "tpcds": Suite("TPC-DS", tpcds.query, tpcds.QUERY_NUMBERS, _tpcds_data, "store_sales"),
}


def run_bench(options: BenchOptions, console: Console) -> dict[str, object]:
    suite = SUITES[options.suite]
    data = options.data or suite.generate(options.scale)
    peers = []
    for peer in options.peers:
        reason = peer_unavailable(peer)
        if reason is None:
            peers.append(peer)
        else:
            console.print(f"{peer} skipped: {reason}")
    systems = [*SYSTEMS, *peers]
    timings: dict[int, dict[str, list[float]]] = {
        q: {system: [] for system in systems} for q in options.queries
    }
    peaks: dict[int, dict[str, int]] = {
        q: {system: 0 for system in systems} for q in options.queries
    }
    budget = options.workers * options.target_partitions
    engines: dict[str, EngineProcess] = {}
    left_out: dict[str, str] = {}  # peer -> why it stopped
    try:
        for kind in ("datafusion", *peers):
            engines[kind] = EngineProcess(kind, data, budget)
        with (
            OtlpReceiver() as receiver,
            LocalCluster(
                workers=options.workers,
                data=data,
                target_partitions=options.target_partitions,
                env={**os.environ, "OTEL_DIST_TELEMETRY": "off"},
            ) as plain,
            LocalCluster(
                workers=options.workers,
                data=data,
                target_partitions=options.target_partitions,
                env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
            ) as traced,
        ):
            from otel_dist.explain.build import build_tree

            runners: dict[str, Callable[[str], object]] = {
                "otel_dist": plain.sql,
                "otel_dist_traced": lambda sql: _traced(traced, sql, build_tree),
                **{kind: engine.run for kind, engine in engines.items()},
            }
            pids: dict[str, Callable[[], list[int]]] = {
                "otel_dist": lambda: [p.pid for p in plain.processes],
                "otel_dist_traced": lambda: [p.pid for p in traced.processes],
                **{kind: _tree_of(engine) for kind, engine in engines.items()},
            }

            def ran(system: str, number: int, sql: str) -> bool:
                """Run the query on ``system``. A peer that fails is left out from then on,
                said in one line: the run goes on with the others."""
                try:
                    runners[system](sql)
                except Exception as error:
                    if system not in peers:
                        raise
                    left_out[system] = f"q{number:02d} failed: {one_line(error, 300)}"
                    console.print(f"{system} left out of the report: {left_out[system]}")
                    systems.remove(system)
                    engines.pop(system).close()
                    return False
                return True

            for _ in range(options.warmup):
                for number in options.queries:
                    sql = suite.query(number)
                    for system in list(systems):
                        ran(system, number, sql)
                console.print("warm-up pass done", style="dim")
            for run in range(options.runs):
                for index, number in enumerate(options.queries):
                    sql = suite.query(number)
                    # The order rotates so that no system always runs right after another one
                    # (whose processes may still be releasing the last query's memory).
                    shift = (run + index) % len(systems)
                    for system in systems[shift:] + systems[:shift]:
                        processes = pids[system]()
                        reset_peak_rss(processes)
                        started = time.perf_counter()
                        if not ran(system, number, sql):
                            continue
                        timings[number][system].append(time.perf_counter() - started)
                        peak = peak_rss_bytes(processes)
                        peaks[number][system] = max(peaks[number][system], peak)
                console.print(f"run {run + 1}/{options.runs} done", style="dim")
    finally:
        for engine in engines.values():
            engine.close()
    for system in left_out:
        for by_query in (timings, peaks):
            for by_system in by_query.values():
                by_system.pop(system, None)
    queries = {
        f"q{number:02d}": {
            system: statistics.median(values) for system, values in by_system.items()
        }
        for number, by_system in timings.items()
    }
    totals = {system: sum(q[system] for q in queries.values()) for system in systems}
    # Each run's totals: how far one run's ratios move shows what a difference in the medians'
    # ratios means (single queries vary by 10% and more from run to run on 2 cores).
    run_totals = {
        system: [
            sum(timings[q][system][run] for q in options.queries) for run in range(options.runs)
        ]
        for system in systems
    }
    peak_rss = {f"q{number:02d}": by_system for number, by_system in peaks.items()}
    router = router_throughput(data, table=suite.fact_table)
    explain_ms = explain_build_ms(10_000)
    report: dict[str, object] = {
        "machine": _machine(),
        "suite": options.suite,
        "scale": options.scale,
        "workers": options.workers,
        "target_partitions": options.target_partitions,
        "runs": options.runs,
        "warmup": options.warmup,
        "queries": queries,
        "totals": totals,
        "ratios": {
            "distributed_vs_datafusion": totals["otel_dist"] / totals["datafusion"],
            "traced_vs_untraced": totals["otel_dist_traced"] / totals["otel_dist"],
            "router_vs_raw_flight": router["router_mb_s"] / router["raw_mb_s"],
        },
        "run_totals": run_totals,
        "run_ratios": {
            "distributed_vs_datafusion": _ratios(run_totals["otel_dist"], run_totals["datafusion"]),
            "traced_vs_untraced": _ratios(run_totals["otel_dist_traced"], run_totals["otel_dist"]),
        },
        "router": router,
        "explain_build_ms_10k_spans": explain_ms,
        "systems": list(systems),
        "left_out": left_out,
        "peak_rss_bytes": peak_rss,
        "max_peak_rss_bytes": {
            system: max(by_system[system] for by_system in peak_rss.values()) for system in systems
        },
        "bench_process_peak_rss_bytes": peak_rss_bytes([os.getpid()]),
    }
    _print(report, console)
    return report


def _tree_of(engine: EngineProcess) -> Callable[[], list[int]]:
    return lambda: process_tree(engine.pid)


def _ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    return [n / d for n, d in zip(numerators, denominators, strict=True)]


def _traced(cluster: LocalCluster, sql: str, build_tree: Callable[..., object]) -> object:
    result = cluster.execute(sql)
    if result.telemetry is not None:
        build_tree(result.telemetry.spans, result.query_id)
    return result


class _StreamServer(flight.FlightServerBase):
    """Serves one table as a Flight stream ending in a telemetry message, like a worker."""

    def __init__(self, table: pa.Table, final_message: bytes) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.table = table
        self.final_message = final_message

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        return flight.GeneratorStream(self.table.schema, self._batches())

    def _batches(self) -> Iterator[object]:
        yield from self.table.to_batches(max_chunksize=65_536)
        yield (
            pa.RecordBatch.from_pylist([], schema=self.table.schema),
            pa.py_buffer(self.final_message),
        )


def router_throughput(data: Path, repeats: int = 15, table: str = "lineitem") -> dict[str, float]:
    """MB/s of a plain Flight read versus the same stream read through the router: after one
    read of each, ``repeats`` reads of each, alternated, and the medians (a read of SF 1's
    lineitem takes about 0.3 s). The stream comes from a server in a process of its own, as
    a worker's would: in the reader's process, its thread and the reader's took turns at the
    GIL, and the ratio moved by 10% from run to run."""
    spawn = multiprocessing.get_context("spawn")
    receiving, sending = spawn.Pipe(duplex=False)
    server = spawn.Process(target=_serve_table, args=(Path(data), table, sending), daemon=True)
    server.start()
    try:
        ready = multiprocessing.connection.wait(
            [receiving, server.sentinel], timeout=_SERVER_START_TIMEOUT_S
        )
        if receiving not in ready:
            raise RuntimeError(
                "the router benchmark's Flight server "
                + ("exited" if server.sentinel in ready else "did not start")
            )
        port, megabytes = receiving.recv()
        client = flight.FlightClient(f"grpc://127.0.0.1:{port}")

        def raw() -> None:
            reader = client.do_get(flight.Ticket(b"t"))
            while True:
                try:
                    reader.read_chunk()
                except StopIteration:
                    return

        def routed() -> None:
            for _ in route(client.do_get(flight.Ticket(b"t")), lambda _: None):
                pass

        try:
            raw()  # warm-up
            routed()
            raw_times: list[float] = []
            routed_times: list[float] = []
            pairs = ((raw, raw_times), (routed, routed_times))
            for repeat in range(repeats):
                for target, times in pairs if repeat % 2 == 0 else pairs[::-1]:
                    started = time.perf_counter()
                    target()
                    times.append(time.perf_counter() - started)
        finally:
            client.close()
    finally:
        server.terminate()
        server.join(_SERVER_START_TIMEOUT_S)
    return {
        "megabytes": megabytes,
        "raw_mb_s": megabytes / statistics.median(raw_times),
        "router_mb_s": megabytes / statistics.median(routed_times),
    }


_SERVER_START_TIMEOUT_S = 60.0


def _serve_table(data: Path, name: str, port_to: Connection) -> None:
    """Serve the table ``name`` (``lineitem``, ``store_sales``) as workers exchange it, ending in a telemetry message; send the port
    and the stream's megabytes, then serve until terminated."""
    table = pq.read_table(data / name)
    table = table.cast(plain_schema(table.schema))  # as workers exchange it
    message = envelope.encode(
        "bench", [(TaskRef(1, 0), _synthetic_request(50).SerializeToString())]
    )
    server = _StreamServer(table, message)
    port_to.send((server.port, table.nbytes / 1e6))
    server.serve()


def _synthetic_request(spans: int) -> ExportTraceServiceRequest:
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    items = [
        Span(trace_id=b"t" * 16, span_id=i.to_bytes(8, "big"), name="op") for i in range(spans)
    ]
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=items)])]
    )


def explain_build_ms(span_count: int) -> float:
    """Median milliseconds to build an explain tree from ``span_count`` spans."""
    from otel_dist.explain.build import build_tree
    from otel_dist.testing.synthetic_spans import synthetic_query_spans

    spans = synthetic_query_spans(span_count)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        build_tree(spans)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def _print(report: dict[str, object], console: Console) -> None:
    systems: list[str] = report["systems"]  # type: ignore[assignment]
    table = Table(
        title=(
            f"{SUITES[str(report.get('suite', 'tpch'))].title} SF {report['scale']} · "
            f"{report['workers']} workers x "
            f"{report['target_partitions']} partitions · median of {report['runs']} after "
            f"{report['warmup']} warm-up passes · seconds, peak RSS in GB"
        )
    )
    table.add_column("query")
    for system in systems:
        table.add_column(f"{system}", justify="right")
    table.add_column("dist/df", justify="right")
    table.add_column("traced/untraced", justify="right")
    queries: dict[str, dict[str, float]] = report["queries"]  # type: ignore[assignment]
    totals: dict[str, float] = report["totals"]  # type: ignore[assignment]
    peaks: dict[str, dict[str, int]] = report["peak_rss_bytes"]  # type: ignore[assignment]
    top: dict[str, int] = report["max_peak_rss_bytes"]  # type: ignore[assignment]
    for name, row in [*queries.items(), ("total", totals)]:
        peak = peaks.get(name, top)
        table.add_row(
            name,
            *(f"{row[s]:.3f} {peak[s] / 1e9:.2f}" for s in systems),
            f"{row['otel_dist'] / row['datafusion']:.2f}",
            f"{row['otel_dist_traced'] / row['otel_dist']:.3f}",
        )
    console.print(table)
    ratios: dict[str, float] = report["ratios"]  # type: ignore[assignment]
    router: dict[str, float] = report["router"]  # type: ignore[assignment]
    console.print(
        f"distributed_vs_datafusion={ratios['distributed_vs_datafusion']:.2f}  "
        f"traced_vs_untraced={ratios['traced_vs_untraced']:.3f}  "
        f"router_vs_raw_flight={ratios['router_vs_raw_flight']:.3f} "
        f"({router['router_mb_s']:.0f} vs {router['raw_mb_s']:.0f} MB/s)  "
        f"explain build (10,000 spans)={report['explain_build_ms_10k_spans']:.1f} ms"
    )
    bench_peak = report["bench_process_peak_rss_bytes"]
    assert isinstance(bench_peak, int)
    console.print(
        "peak RSS over the queries (GB; clusters: workers summed): "
        + "  ".join(f"{s} {top[s] / 1e9:.2f}" for s in systems)
        + f"  · bench process (both coordinators) {bench_peak / 1e9:.2f}"
    )
    run_ratios: dict[str, list[float]] = report["run_ratios"]  # type: ignore[assignment]
    console.print(
        "run by run: "
        + "  ".join(
            f"{name} {min(values):.3f}-{max(values):.3f}" for name, values in run_ratios.items()
        ),
        style="dim",
    )
    left_out: dict[str, str] = report["left_out"]  # type: ignore[assignment]
    for system, reason in left_out.items():
        console.print(f"{system} left out of the report: {reason}")


def write_report(report: dict[str, object], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")
