"""Fuzzing the wire protocol: the task spec and ticket decoders (hypothesis, 10,000 cases each,
only ``ProtocolError`` may come out), then a real worker and a real coordinator server fed a
few hundred random tickets and actions, which must answer each with a clean error and still
run queries correctly afterwards. Last, SQL text (long and deep operator chains, nested
parentheses, CASE and calls, long IN lists, random Unicode with lone surrogates) sent to a
coordinator process and, as task SQL, to a worker process: 60 cases each plus the inputs that
used to crash them (15-25 s), every answer a result or a one-line error, both alive after."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from otel_dist import tpch
from otel_dist.coordinator.core import Coordinator, CoordinatorConfig
from otel_dist.frontend.local import LocalCluster
from otel_dist.frontend.server import CoordinatorServer
from otel_dist.protocol import (
    ACTION_CANCEL_QUERY,
    ACTION_GET_TASK_TELEMETRY,
    ACTION_RELEASE_QUERY,
    ACTION_SUBMIT_TASKS,
    BucketSource,
    BucketTicket,
    OutputPartitioning,
    ProtocolError,
    TaskInput,
    TaskSpec,
    decode_query_id,
    encode_schema,
    encode_submission,
)
from otel_dist.sql_limits import measure
from otel_dist.telemetry.setup import Telemetry, TelemetryConfig
from tests.oracle import assert_same_rows, single_node
from tests.support import CLI, start_worker, stop, wait_until, worker_health

FUZZ = settings(  # 10,000 tiny cases: a few seconds (hypothesis costs ~0.4 ms a case)
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
QUICK = settings(max_examples=1_000, deadline=None)
SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string())])


def _valid_spec() -> dict[str, Any]:
    spec = TaskSpec(
        query_id="q",
        stage_id=1,
        task_index=0,
        task_count=2,
        sql="select k, v from t join u using (k)",
        inputs=(
            TaskInput("t", files=("/data/t/1.parquet", "/data/t/2.parquet")),
            TaskInput(
                "u",
                sources=(BucketSource("grpc://127.0.0.1:1", 0, 1, 0),),
                schema_ipc=encode_schema(SCHEMA),
            ),
        ),
        output=OutputPartitioning("hash", 2, ("k",)),
        output_schema_ipc=encode_schema(SCHEMA),
        worker_url="grpc://127.0.0.1:2",
        partitions=(0, 1),
        trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    )
    return json.loads(spec.to_json())


VALID_SPEC = _valid_spec()
VALID_TICKET = json.loads(BucketTicket("q", 1, 0, 0).to_bytes())

# Values that confuse a decoder expecting strings, non-negative integers, lists and objects.
NASTY = [
    None,
    True,
    0,
    -1,
    2**63,
    -(2**70),
    1.5,
    float("nan"),
    "",
    "x",
    "..",
    "../../etc",
    "a/b",
    "\x00",
    "ü" * 3,
    [],
    [1],
    ["x"],
    {},
    {"a": 1},
    {"kind": "hash"},
]
json_values = st.sampled_from(NASTY) | st.text(max_size=4) | st.integers(-(2**70), 2**70)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


SPEC_PATHS = _paths(VALID_SPEC)
TICKET_PATHS = _paths(VALID_TICKET)


def _mutate(document: Any, path: tuple[Any, ...], replacement: Any, delete: bool) -> Any:
    """A deep copy of ``document`` with the value at ``path`` replaced (or removed)."""
    copy = json.loads(json.dumps(document))
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return copy


def _only_protocol_errors(decode: Any, data: bytes) -> Any:
    """Decode; a ``ProtocolError`` is fine, any other exception fails the test."""
    with contextlib.suppress(ProtocolError):
        return decode(data)
    return None


# ---- decoders ------------------------------------------------------------------------------


def _spliced(document: Any) -> st.SearchStrategy[bytes]:
    """A valid message with a few random bytes written over or into it."""
    valid = json.dumps(document).encode()
    return st.builds(
        lambda noise, at, overwrite: (
            valid[:at] + noise + valid[at + (len(noise) if overwrite else 0) :]
        ),
        st.binary(min_size=1, max_size=8),
        st.integers(0, len(valid)),
        st.booleans(),
    )


def _damaged(document: Any, paths: list[tuple[Any, ...]]) -> st.SearchStrategy[bytes]:
    """A valid message with one field replaced by a nasty value, or removed."""
    return st.builds(
        lambda path, value, delete: json.dumps(_mutate(document, path, value, delete)).encode(),
        st.sampled_from(paths),
        json_values,
        st.booleans(),
    )


RANDOM_SCHEMA_SPECS = st.builds(
    lambda data: json.dumps(
        dict(VALID_SPEC, output_schema_ipc=base64.b64encode(data).decode())
    ).encode(),
    st.binary(max_size=32),
)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=32),
        _damaged(VALID_SPEC, SPEC_PATHS),
        _spliced(VALID_SPEC),
        RANDOM_SCHEMA_SPECS,
    )
)
def test_task_spec_decoder_only_raises_protocol_errors(data: bytes) -> None:
    spec = _only_protocol_errors(TaskSpec.from_json, data)
    if spec is not None:  # accepted: then it is well formed all the way down
        assert spec.output.kind in ("hash", "single", "broadcast")
        assert 0 <= spec.task_index < spec.task_count and spec.output.buckets >= 1
        for task_input in spec.inputs:
            assert task_input.table_name not in ("", ".", "..")
            assert "/" not in task_input.table_name
        spec.output_schema()


@FUZZ
@given(
    st.one_of(st.binary(max_size=32), _damaged(VALID_TICKET, TICKET_PATHS), _spliced(VALID_TICKET))
)
def test_ticket_decoder_only_raises_protocol_errors(data: bytes) -> None:
    ticket = _only_protocol_errors(BucketTicket.from_bytes, data)
    if ticket is not None:
        assert min(ticket.stage_id, ticket.task_index, ticket.bucket) >= 0
        assert BucketTicket.from_bytes(ticket.to_bytes()) == ticket


@QUICK
@given(st.one_of(st.binary(max_size=16), _damaged({"query_id": "q"}, [("query_id",)])))
def test_action_body_decoder_only_raises_protocol_errors(data: bytes) -> None:
    _only_protocol_errors(decode_query_id, data)


def test_oversized_messages_are_refused_before_parsing() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        BucketTicket.from_bytes(b" " * (64 * 1024 + 1))
    with pytest.raises(ProtocolError, match="exceeds"):
        TaskSpec.from_json(b" " * (16 * 1024 * 1024 + 1))
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ProtocolError):
        TaskSpec.from_json(deep)
    with pytest.raises(ProtocolError):
        BucketTicket.from_bytes(b'{"stage_id": ' + b"9" * 5000 + b"}")


# ---- endpoints -----------------------------------------------------------------------------


def _random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 3, 17, 200, 5000]))


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randint(-(2**40), 2**40)
    if kind == 2:
        return rng.choice(["", "q", "../../etc", "select 1", "\x00", "ü" * 10])
    if kind == 3:
        return rng.random()
    if kind in (4, 5):
        keys = ["query_id", "stage_id", "task_index", "bucket", "sql", "inputs", "x", "telemetry"]
        return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


def _random_message(rng: random.Random) -> bytes:
    choice = rng.randrange(3)
    if choice == 0:
        return _random_bytes(rng)
    if choice == 1:
        return json.dumps(_random_json(rng)).encode()
    document = rng.choice([VALID_SPEC, VALID_TICKET, {"query_id": "q"}])
    path = rng.choice(_paths(document))
    return json.dumps(_mutate(document, path, _random_json(rng), rng.random() < 0.3)).encode()


def _expect_clean_error(call: Any) -> BaseException | None:
    """Run a call that should fail; it must fail with a Flight/Arrow error, never hang."""
    try:
        call()
    except (flight.FlightError, pa.ArrowException) as error:
        return error
    return None


@pytest.fixture(scope="module")
def small_cluster(tpch_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(workers=2, data=tpch_dir) as local:
        yield local


def test_a_worker_survives_random_tickets_and_actions(
    small_cluster: LocalCluster, tpch_dir: Path
) -> None:
    rng = random.Random(7)
    url = small_cluster.worker_urls[0]
    client = flight.FlightClient(url)
    options = flight.FlightCallOptions(timeout=5)
    invalid = 0
    actions = [
        ACTION_SUBMIT_TASKS,
        ACTION_CANCEL_QUERY,
        ACTION_RELEASE_QUERY,
        ACTION_GET_TASK_TELEMETRY,
        "no_such_action",
        "",
        "ü" * 300,
    ]
    try:
        for _ in range(150):
            data = _random_message(rng)
            if _only_protocol_errors(BucketTicket.from_bytes, data) is not None:
                continue  # a well-formed ticket waits (bounded) for its task to be submitted
            error = _expect_clean_error(
                lambda t=data: client.do_get(flight.Ticket(t), options=options).read_all()
            )
            assert isinstance(error, pa.ArrowInvalid), error  # INVALID_ARGUMENT
            assert "Traceback" not in str(error), error
            invalid += 1
        for _ in range(150):
            action = flight.Action(rng.choice(actions), _random_message(rng))

            def call(a: flight.Action = action) -> None:
                list(client.do_action(a, options=options))

            error = _expect_clean_error(call)
            if error is None:  # a well-formed body: a query to cancel or release, a task
                assert action.type != "no_such_action"
                continue
            assert not isinstance(error, flight.FlightTimedOutError), error
            assert "Traceback" not in str(error), error
            invalid += str(error).startswith("invalid argument")  # no INVALID_ARGUMENT here
        assert invalid > 200, "malformed input is answered with an invalid-argument error"
        assert small_cluster.processes[0].poll() is None
        for query_id in ("q", "x", ""):  # what a well-formed damaged spec may have submitted
            with contextlib.suppress(pa.ArrowException):
                body = json.dumps({"query_id": query_id}).encode()
                list(client.do_action(flight.Action(ACTION_RELEASE_QUERY, body), options=options))
        wait_until(lambda: worker_health(url, client)["running_tasks"] == 0, 10, "idle tasks")
    finally:
        client.close()
    sql = tpch.query(1)
    assert_same_rows(small_cluster.sql(sql), single_node(tpch_dir, sql), ordered=True)


def test_a_coordinator_server_survives_random_tickets_and_actions(
    small_cluster: LocalCluster, tpch_dir: Path
) -> None:
    rng = random.Random(11)
    coordinator = Coordinator(
        CoordinatorConfig(workers=tuple(small_cluster.worker_urls), data=str(tpch_dir)),
        Telemetry(TelemetryConfig.from_env("otel-dist-coordinator", {})),
    )
    server = CoordinatorServer(coordinator)
    client = flight.FlightClient(server.url)
    options = flight.FlightCallOptions(timeout=20)
    words = ["select", "from", "where", "nation", "region", "n_name", "1", "(", ")", ",", "*", "'"]
    try:
        for index in range(200):
            if index % 4 == 3:  # SQL-shaped garbage in an otherwise valid ticket
                sql = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 8)))
                data = json.dumps({"sql": sql, "query_id": f"fuzz-{index}"}).encode()
            else:
                data = _random_message(rng)
            with contextlib.suppress(flight.FlightError, pa.ArrowException):
                client.do_get(flight.Ticket(data), options=options).read_all()
        for _ in range(100):
            action = flight.Action(
                rng.choice(["query_telemetry", "cancel_query", "nope"]), _random_message(rng)
            )
            with contextlib.suppress(flight.FlightError, pa.ArrowException):
                list(client.do_action(action, options=options))
        bad = _expect_clean_error(
            lambda: client.do_get(flight.Ticket(b"\xff\x00"), options=options).read_all()
        )
        assert isinstance(bad, pa.ArrowInvalid), bad
        sql = tpch.query(6)
        ticket = flight.Ticket(json.dumps({"sql": sql}).encode())
        table = client.do_get(ticket, options=options).read_all()
        assert_same_rows(table, single_node(tpch_dir, sql), ordered=False)
    finally:
        client.close()
        server.shutdown()
        coordinator.close()
    for url in small_cluster.worker_urls:
        assert worker_health(url)["tasks"] == 0


# ---- SQL text: deep, long and odd expressions against running processes -------------------

ATOMS = ["1", "n_nationkey", "'a'", "null", "2.5", "n_name", "true"]
BINARY = ["+", "-", "*", "/", "%", "||", "=", "<", ">=", "<>", "and", "or", "::bigint"]
# Lengths around the limits matter most: far under, just under, just over, far over.
SIZES = st.sampled_from([1, 2, 3, 10, 60, 200, 450, 501, 5_000, 20_000])


def _chain(op: str, terms: int, atom: str) -> str:
    if op == "::bigint":
        return atom + op * terms
    return f" {op} ".join([atom] * terms)


def _nested(kind: str, depth: int, atom: str) -> str:
    if kind == "parens":
        return "(" * depth + atom + ")" * depth
    if kind == "case":
        return "case when true then " * depth + atom + " end" * depth
    if kind == "calls":
        return "abs(" * depth + atom + ")" * depth
    if kind == "not":
        return "not " * depth + atom
    return "- " * depth + atom


unicode_text = st.text(
    st.characters(exclude_categories=()),  # lone surrogates included
    max_size=40,
)
expressions = st.one_of(
    st.builds(_chain, st.sampled_from(BINARY), SIZES, st.sampled_from(ATOMS)),
    st.builds(
        _nested,
        st.sampled_from(["parens", "case", "calls", "not", "minus"]),
        SIZES,
        st.sampled_from(ATOMS),
    ),
    st.builds(
        lambda n, atom: f"{atom} in (" + ", ".join(str(i) for i in range(n)) + ")",
        SIZES,
        st.sampled_from(ATOMS),
    ),
    st.builds(lambda text: "'" + text.replace("'", "''") + "'", unicode_text),
    unicode_text,  # not even SQL
    st.builds(
        lambda a, b, text: f"({a}) = ({b}) or {text!r}",
        st.builds(_chain, st.sampled_from(BINARY), SIZES, st.just("1")),
        st.builds(_nested, st.just("parens"), SIZES, st.just("1")),
        unicode_text,
    ),
)
statements = st.builds(
    lambda template, expression: template.format(e=expression),
    st.sampled_from(
        [
            "select {e}",
            "select count(*) as n from nation where {e}",
            "select {e} as x from region",
            "select {e} union all select {e}",
        ]
    ),
    expressions,
)
SQL_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module")
def processes(tpch_dir: Path) -> Iterator[tuple[Any, str, Any, str]]:
    """A worker process and a coordinator process over it, with their URLs."""
    worker, worker_url = start_worker("--port", "0", "--data-root", str(tpch_dir))
    coordinator = subprocess.Popen(
        [*CLI, "coordinator", "--port", "0", "--workers", worker_url, "--data", str(tpch_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert coordinator.stdout is not None
        coordinator_url = coordinator.stdout.readline().split()[-1]
        yield worker, worker_url, coordinator, coordinator_url
    finally:
        stop(coordinator)
        stop(worker)


def _one_line_error(error: BaseException) -> None:
    text = str(error)
    assert "Traceback" not in text and 'File "' not in text, text
    assert "\n" not in text.split(". Detail:")[0].strip(), text


@SQL_FUZZ
@given(statements)
@example("select " + "+".join(["1"] * 10_000))  # each of these crashed the coordinator
@example("select 1 from nation where " + " and ".join(["n_nationkey >= 0"] * 10_000))
@example("select " + "+".join(["n_nationkey"] * 450) + " from nation")  # just under the limit
@example("select 'caf\udce9'")  # a lone surrogate, as a shell may send it
def test_sql_fuzz_against_a_running_coordinator(
    processes: tuple[Any, str, Any, str], sql: str
) -> None:
    _, _, coordinator, url = processes
    client = flight.FlightClient(url)
    try:
        ticket = flight.Ticket(json.dumps({"sql": sql}).encode())
        try:
            client.do_get(ticket, options=flight.FlightCallOptions(timeout=120)).read_all()
            FUZZ_COUNTS["coordinator ok"] = FUZZ_COUNTS.get("coordinator ok", 0) + 1
            depth = measure(sql).depth
            FUZZ_COUNTS["deepest answered"] = max(FUZZ_COUNTS.get("deepest answered", 0), depth)
        except (flight.FlightError, pa.ArrowException) as error:
            assert not isinstance(error, flight.FlightUnavailableError), "the coordinator died"
            _one_line_error(error)
            FUZZ_COUNTS["coordinator error"] = FUZZ_COUNTS.get("coordinator error", 0) + 1
        assert coordinator.poll() is None, "the coordinator process died"
    finally:
        client.close()


@SQL_FUZZ
@given(st.one_of(expressions, statements))
@example(" and ".join(["1 = 1"] * 20_000))  # crashed a worker
@example("+".join(["1"] * 450))  # just under the limit
def test_sql_fuzz_against_a_running_worker(processes: tuple[Any, str, Any, str], text: str) -> None:
    worker, url, _, _ = processes
    sql = text if text.lstrip().lower().startswith("select") else f"select {text} as x"
    spec = TaskSpec(
        query_id=f"fuzz-{uuid.uuid4().hex}",
        stage_id=1,
        task_index=0,
        task_count=1,
        sql=sql,
        inputs=(),
        output=OutputPartitioning("single"),
        output_schema_ipc=encode_schema(pa.schema([("x", pa.string())])),
    )
    client = flight.FlightClient(url)
    options = flight.FlightCallOptions(timeout=120)
    try:
        action = flight.Action(ACTION_SUBMIT_TASKS, encode_submission([spec]))
        try:
            list(client.do_action(action, options=options))
        except (flight.FlightError, pa.ArrowException) as error:
            assert not isinstance(error, flight.FlightUnavailableError), "the worker died"
            _one_line_error(error)
            FUZZ_COUNTS["worker refused"] = FUZZ_COUNTS.get("worker refused", 0) + 1
        else:
            ticket = flight.Ticket(BucketTicket(spec.query_id, 1, 0, 0, False).to_bytes())
            try:
                client.do_get(ticket, options=options).read_all()
                FUZZ_COUNTS["worker ok"] = FUZZ_COUNTS.get("worker ok", 0) + 1
            except (flight.FlightError, pa.ArrowException) as error:
                assert not isinstance(error, flight.FlightUnavailableError), "the worker died"
                _one_line_error(error)
                FUZZ_COUNTS["worker task failed"] = FUZZ_COUNTS.get("worker task failed", 0) + 1
            body = json.dumps({"query_id": spec.query_id}).encode()
            list(client.do_action(flight.Action(ACTION_RELEASE_QUERY, body), options=options))
        assert worker.poll() is None, "the worker process died"
    finally:
        client.close()


def test_after_the_sql_fuzz_both_processes_answer(
    processes: tuple[Any, str, Any, str], tpch_dir: Path
) -> None:
    worker, worker_url, coordinator, url = processes
    assert worker.poll() is None and coordinator.poll() is None
    client = flight.FlightClient(url)
    try:
        sql = "select count(*) as n from nation"
        table = client.do_get(flight.Ticket(json.dumps({"sql": sql}).encode())).read_all()
        assert table.column("n")[0].as_py() == 25
    finally:
        client.close()
    assert worker_health(worker_url)["running_tasks"] == 0
    print(f"SQL fuzz cases: {FUZZ_COUNTS}")
