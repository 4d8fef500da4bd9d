"""The wire protocol between coordinator and workers, defined in one place.

Tasks travel as JSON in a Flight action body; bucket tickets are JSON in a Flight ticket.
Every decoder validates its input and raises ``ProtocolError`` (and nothing else) with a
one-line message, which servers turn into an INVALID_ARGUMENT gRPC error (``invalid_argument``
below, next to the other statuses servers answer with).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.flight as flight

PROTOCOL_VERSION = 1

# Flight action names.
ACTION_SUBMIT_TASKS = "submit_tasks"
ACTION_RELEASE_QUERY = "release_query"
ACTION_CANCEL_QUERY = "cancel_query"
ACTION_HEALTH = "health"
ACTION_GET_TASK_TELEMETRY = "get_task_telemetry"
# Flight actions of the coordinator's server (``cancel_query`` too, with a {query_id} body).
ACTION_QUERY_TELEMETRY = "query_telemetry"
# Live progress (JSON answers): a worker's tasks of one query ({query_id}) and its own load;
# the coordinator's view of one running query ({query_id}) and of the whole cluster.
ACTION_TASK_PROGRESS = "task_progress"
ACTION_WORKER_STATUS = "worker_status"
ACTION_QUERY_PROGRESS = "query_progress"
ACTION_CLUSTER_STATUS = "cluster_status"
# A worker's heartbeat to a coordinator ({url}), and its goodbye when it shuts down.
ACTION_REGISTER_WORKER = "register_worker"
ACTION_UNREGISTER_WORKER = "unregister_worker"
# A worker's answer to a coordinator's ticket (someone pointed a query client at a worker).
NOT_A_COORDINATOR = "that address is a worker, not a coordinator"

ROW_ID_COLUMN = "__rowid"
MAX_TICKET_BYTES = 64 * 1024
MAX_TASK_BYTES = 16 * 1024 * 1024
MAX_SUBMISSION_TASKS = 1_000
MAX_BUCKETS = 10_000

PartitioningKind = Literal["hash", "range", "single", "broadcast"]
KeyBounds = tuple[tuple[int | None, int | None], ...]  # [low, high) intervals, None: unbounded


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


@dataclass(frozen=True)
class OutputPartitioning:
    """How a task splits its output: hash on key columns into buckets, by ranges of one
    integer key (bucket ``i`` takes the values in ``bounds[i]``), one bucket, or broadcast."""

    kind: PartitioningKind
    buckets: int = 1
    keys: tuple[str, ...] = ()
    bounds: tuple[KeyBounds, ...] = ()  # range: each bucket's intervals

    def describe(self) -> str:
        if self.kind in ("hash", "range"):
            return f"{self.kind}({', '.join(self.keys)}) into {self.buckets}"
        return self.kind


@dataclass(frozen=True)
class BucketSource:
    """One upstream bucket a task reads: which worker, which task, which bucket, and whether
    the stream ends with the upstream task's telemetry (each task's telemetry travels to one
    reader only: the others would receive, parse and forward copies)."""

    worker_url: str
    stage_id: int
    task_index: int
    bucket: int
    telemetry: bool = True


@dataclass(frozen=True)
class TaskInput:
    """A table the task's SQL reads: parquet files, or buckets streamed from upstream tasks."""

    table_name: str
    files: tuple[str, ...] = ()
    sources: tuple[BucketSource, ...] = ()
    # base64 Arrow IPC schema: of the upstream buckets, or of the table the files hold (then
    # the task registers them with it instead of inferring it; empty: infer)
    schema_ipc: str = ""
    row_ids: bool = False  # append ROW_ID_COLUMN, numbering the rows read
    # Files only: keep the rows whose ``key_column`` is in one of ``key_bounds``, each
    # ``[low, high)`` (None: unbounded); the task's share of a co-located join's table.
    key_column: str = ""
    key_bounds: KeyBounds = ()

    @property
    def is_stage_input(self) -> bool:
        return not self.files

    def schema(self) -> pa.Schema:
        return decode_schema(self.schema_ipc)


MAX_TASK_THREADS = 64


@dataclass(frozen=True)
class TaskSpec:
    """Everything a worker needs to run one task of one stage of one query."""

    query_id: str
    stage_id: int
    task_index: int
    task_count: int
    sql: str
    inputs: tuple[TaskInput, ...]
    output: OutputPartitioning
    output_schema_ipc: str
    worker_url: str = ""
    partitions: tuple[int, ...] = ()
    trace_context: dict[str, str] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION
    # The stage's work as a serialized Substrait plan (base64) over the task's inputs, by the
    # names they are registered under; when set it is what runs, and ``sql`` may be empty
    # (fallback stages ship SQL text instead).
    plan: str = ""
    # DataFusion partitions (threads) the task runs with; 0: the worker's --target-partitions.
    # A scan stage with fewer tasks than workers gets the idle workers' share.
    threads: int = 0

    def plan_bytes(self) -> bytes:
        return base64.b64decode(self.plan) if self.plan else b""

    @property
    def key(self) -> TaskKey:
        return TaskKey(self.query_id, self.stage_id, self.task_index)

    def output_schema(self) -> pa.Schema:
        return decode_schema(self.output_schema_ipc)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @staticmethod
    def from_json(data: bytes) -> TaskSpec:
        """Decode and validate a task spec; raises ``ProtocolError`` and nothing else."""
        if len(data) > MAX_TASK_BYTES:
            raise ProtocolError(f"task spec of {len(data)} bytes exceeds {MAX_TASK_BYTES}")
        return TaskSpec.from_object(_load_object(data, "task spec"))

    @staticmethod
    def from_object(raw: object) -> TaskSpec:
        """Validate a task spec decoded from JSON; raises ``ProtocolError`` and nothing else."""
        if not isinstance(raw, dict):
            raise ProtocolError("malformed task spec: not a JSON object")
        try:
            output = _dict(raw["output"])
            inputs = tuple(
                TaskInput(
                    table_name=_table_name(item["table_name"]),
                    files=tuple(_str(f) for f in _list(item.get("files", []))),
                    sources=tuple(
                        BucketSource(
                            worker_url=_str(s["worker_url"]),
                            stage_id=_index(s["stage_id"]),
                            task_index=_index(s["task_index"]),
                            bucket=_index(s["bucket"]),
                            telemetry=s.get("telemetry", True) is not False,
                        )
                        for s in map(_dict, _list(item.get("sources", [])))
                    ),
                    schema_ipc=_str(item.get("schema_ipc", "")),
                    row_ids=item.get("row_ids", False) is True,
                    key_column=_str(item.get("key_column", "")),
                    key_bounds=tuple(
                        _bound(_list(bound)) for bound in _list(item.get("key_bounds", []))
                    ),
                )
                for item in map(_dict, _list(raw["inputs"]))
            )
            spec = TaskSpec(
                query_id=_str(raw["query_id"]),
                stage_id=_index(raw["stage_id"]),
                task_index=_index(raw["task_index"]),
                task_count=_int(raw["task_count"]),
                sql=_str(raw["sql"]),
                inputs=inputs,
                output=OutputPartitioning(
                    kind=_str(output["kind"]),  # type: ignore[arg-type]
                    buckets=_int(output["buckets"]),
                    keys=tuple(_str(k) for k in _list(output["keys"])),
                    bounds=tuple(
                        tuple(_bound(_list(pair)) for pair in _list(bucket))
                        for bucket in _list(output.get("bounds", []))
                    ),
                ),
                output_schema_ipc=_str(raw["output_schema_ipc"]),
                worker_url=_str(raw.get("worker_url", "")),
                partitions=tuple(_int(p) for p in _list(raw.get("partitions", []))),
                trace_context={
                    _str(k): _str(v) for k, v in _dict(raw.get("trace_context", {})).items()
                },
                version=_int(raw.get("version", PROTOCOL_VERSION)),
                plan=_str(raw.get("plan", "")),
                threads=_int(raw.get("threads", 0)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ProtocolError(f"malformed task spec: missing or invalid field {error}") from None
        if spec.version != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported protocol version {spec.version}")
        if spec.output.kind not in ("hash", "range", "single", "broadcast"):
            raise ProtocolError(f"unknown output partitioning {spec.output.kind!r}")
        if spec.output.kind == "range" and (
            len(spec.output.keys) != 1 or len(spec.output.bounds) != spec.output.buckets
        ):
            raise ProtocolError("range partitioning needs one key and bounds for each bucket")
        if (
            not 1 <= spec.output.buckets <= MAX_BUCKETS
            or not 0 <= spec.task_index < spec.task_count
        ):
            raise ProtocolError("task spec has an invalid bucket count or task index")
        if not 0 <= spec.threads <= MAX_TASK_THREADS:
            raise ProtocolError(f"task spec asks for {spec.threads} threads (0-{MAX_TASK_THREADS})")
        if not spec.sql.strip() and not spec.plan:
            raise ProtocolError("task spec has neither SQL nor a plan")
        if spec.plan:
            try:
                base64.b64decode(spec.plan, validate=True)
            except ValueError:
                raise ProtocolError("task spec's plan is not base64") from None
        spec.output_schema()  # a schema that does not decode is refused now, not when run
        for task_input in spec.inputs:
            if task_input.is_stage_input:
                task_input.schema()
        return spec


def encode_submission(specs: Sequence[TaskSpec], data_roots: Sequence[str] = ()) -> bytes:
    """The body of a ``submit_tasks`` action: the tasks one worker is to run for one query,
    and the data folders the coordinator reads its tables from (``data_roots``: what a worker
    started without ``--data-root`` lets a trusted coordinator's tasks read)."""
    roots = json.dumps(list(data_roots)).encode()
    tasks = b",".join(spec.to_json() for spec in specs)
    return b'{"data_roots":' + roots + b',"tasks":[' + tasks + b"]}"


def submission_data_roots(data: bytes) -> tuple[str, ...]:
    """The data folders a ``submit_tasks`` body declares (absolute paths only); raises
    ``ProtocolError`` and nothing else."""
    roots = _load_object(data, "task submission").get("data_roots", [])
    if not isinstance(roots, list) or not all(
        isinstance(root, str) and os.path.isabs(root) for root in roots
    ):
        raise ProtocolError("malformed task submission: 'data_roots' is not a list of paths")
    return tuple(roots)


def decode_submission(data: bytes) -> list[TaskSpec]:
    """The task specs of a ``submit_tasks`` body, every one validated; raises
    ``ProtocolError`` and nothing else."""
    if len(data) > MAX_TASK_BYTES:
        raise ProtocolError(f"task submission of {len(data)} bytes exceeds {MAX_TASK_BYTES}")
    tasks = _load_object(data, "task submission").get("tasks")
    if not isinstance(tasks, list) or not 1 <= len(tasks) <= MAX_SUBMISSION_TASKS:
        raise ProtocolError(
            f"malformed task submission: 'tasks' is not a list of 1 to {MAX_SUBMISSION_TASKS}"
        )
    specs = [TaskSpec.from_object(raw) for raw in tasks]
    if len({spec.query_id for spec in specs}) != 1:
        raise ProtocolError("malformed task submission: tasks of more than one query")
    return specs


@dataclass(frozen=True)
class TaskKey:
    """Identifies one task of one query."""

    query_id: str
    stage_id: int
    task_index: int

    def __str__(self) -> str:
        return f"stage {self.stage_id} task {self.task_index}"


@dataclass(frozen=True)
class BucketTicket:
    """A Flight ticket naming one output bucket of one task."""

    query_id: str
    stage_id: int
    task_index: int
    bucket: int
    telemetry: bool = True  # end the stream with the task's telemetry

    @property
    def task_key(self) -> TaskKey:
        return TaskKey(self.query_id, self.stage_id, self.task_index)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @staticmethod
    def from_bytes(data: bytes) -> BucketTicket:
        if len(data) > MAX_TICKET_BYTES:
            raise ProtocolError(f"ticket of {len(data)} bytes exceeds {MAX_TICKET_BYTES}")
        raw = _load_object(data, "ticket")
        try:
            ticket = BucketTicket(
                query_id=_str(raw["query_id"]),
                stage_id=_int(raw["stage_id"]),
                task_index=_int(raw["task_index"]),
                bucket=_int(raw["bucket"]),
                telemetry=raw.get("telemetry", True) is not False,
            )
        except (KeyError, TypeError) as error:
            raise ProtocolError(f"malformed ticket: missing or invalid field {error}") from None
        if min(ticket.stage_id, ticket.task_index, ticket.bucket) < 0:
            raise ProtocolError("malformed ticket: negative index")
        return ticket


def decode_query_id(body: bytes) -> str:
    """The ``query_id`` of a ``cancel_query``/``release_query`` action body."""
    if len(body) > MAX_TICKET_BYTES:
        raise ProtocolError(f"action body of {len(body)} bytes exceeds {MAX_TICKET_BYTES}")
    query_id = _load_object(body, "action body").get("query_id")
    if not isinstance(query_id, str) or not query_id:
        raise ProtocolError("action body needs a string query_id")
    return query_id


def decode_worker_url(body: bytes) -> str:
    """The ``url`` of a ``register_worker``/``unregister_worker`` action body."""
    if len(body) > MAX_TICKET_BYTES:
        raise ProtocolError(f"action body of {len(body)} bytes exceeds {MAX_TICKET_BYTES}")
    url = _load_object(body, "action body").get("url")
    if not isinstance(url, str) or "://" not in url or len(url) > 1000:
        raise ProtocolError("action body needs a worker 'url' such as grpc://host:port")
    return url


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def decode_schema(data: str) -> pa.Schema:
    try:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data, validate=True)))
    except (ValueError, OSError, pa.ArrowException) as error:  # Arrow's IPC errors vary
        raise ProtocolError(f"malformed schema: {str(error)[:200]}") from None


def encode_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def decode_json_object(data: bytes, what: str) -> dict[str, Any]:
    return _load_object(data, what)


def _load_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):  # JSON, UTF-8 and too-long-integer errors
        raise ProtocolError(f"malformed {what}: not JSON") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"malformed {what}: not a JSON object")
    return raw


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _index(value: object) -> int:
    index = _int(value)
    if index < 0:
        raise ValueError(f"negative index {index}")
    return index


def _bound(pair: list[Any]) -> tuple[int | None, int | None]:
    if len(pair) != 2:
        raise ValueError("a key bound is not a [low, high] pair")
    low, high = (None if value is None else _int(value) for value in pair)
    return low, high


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _table_name(value: object) -> str:
    """A table name, which becomes a folder name on the worker: no path tricks."""
    name = _str(value)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"invalid table name {name[:100]!r}")
    return name


# ---- errors as gRPC statuses ---------------------------------------------------------------
# Raised by servers; Arrow Flight turns each into its gRPC status code.


def invalid_argument(message: str) -> Exception:
    """INVALID_ARGUMENT (clients see ``pyarrow.ArrowInvalid``)."""
    return pa.ArrowInvalid(f"invalid argument: {message}")


def permission_denied(message: str) -> Exception:
    """PERMISSION_DENIED (clients see ``pyarrow.flight.FlightUnauthorizedError``)."""
    return flight.FlightUnauthorizedError(f"permission denied: {message}")


def not_found(message: str) -> Exception:
    """A clean ``not found`` error (Flight has no NOT_FOUND status of its own)."""
    return flight.FlightServerError(f"not found: {message}")
