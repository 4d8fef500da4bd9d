"""Security with real servers and processes: the shared-secret token, TLS (with a generated
self-signed certificate) and client certificates, data roots on workers, statements that are
not queries, and SQL redaction in exported spans."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from otel_dist import tpch
from otel_dist.coordinator.core import QueryRejected
from otel_dist.exchange.clients import new_client
from otel_dist.exchange.security import (
    AUTH_TOKEN_ENV,
    INTERNAL_SECRET_ENV,
    SecurityConfig,
    SecurityError,
)
from otel_dist.frontend.local import LocalCluster
from otel_dist.protocol import (
    ACTION_HEALTH,
    ACTION_SUBMIT_TASKS,
    BucketTicket,
    OutputPartitioning,
    TaskInput,
    TaskSpec,
    encode_schema,
    encode_submission,
)
from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.redaction import redact_sql
from otel_dist.telemetry.setup import Telemetry, TelemetryConfig
from otel_dist.testing.otlp_receiver import OtlpReceiver
from otel_dist.worker.server import WorkerConfig, WorkerServer
from tests.oracle import assert_same_rows, single_node
from tests.support import CLI, remote_cluster, self_signed_certificate, start_worker, stop

TOKEN = "otel-dist-test-token-6f1e"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_certificate(folder, "server")
    other, _ = self_signed_certificate(folder, "other")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    return {"cert": cert, "key": key, "other": other, "token": token_file}


def _secure(certs: dict[str, Path], **extra: object) -> SecurityConfig:
    return SecurityConfig(
        tls_cert=str(certs["cert"]),
        tls_key=str(certs["key"]),
        tls_ca=str(certs["cert"]),
        token=TOKEN,
        **extra,  # type: ignore[arg-type]
    )


def _worker(config: WorkerConfig) -> WorkerServer:
    return WorkerServer(config, telemetry=Telemetry(TelemetryConfig.from_env("w", {})))


def _health(client: flight.FlightClient) -> dict[str, object]:
    results = client.do_action(
        flight.Action(ACTION_HEALTH, b""), options=flight.FlightCallOptions(timeout=5)
    )
    return json.loads(b"".join(r.body.to_pybytes() for r in results))


# ---- the token -----------------------------------------------------------------------------


def test_a_worker_refuses_every_call_without_the_token() -> None:
    server = _worker(WorkerConfig(security=SecurityConfig(token=TOKEN)))
    plain = flight.FlightClient(server.url)
    wrong = new_client(server.url, SecurityConfig(token="not-the-token"))
    right = new_client(server.url, SecurityConfig(token=TOKEN))
    ticket = flight.Ticket(BucketTicket("q", 0, 0, 0).to_bytes())
    options = flight.FlightCallOptions(timeout=5)
    try:
        for client in (plain, wrong):
            with pytest.raises(flight.FlightUnauthenticatedError):
                _health(client)
            with pytest.raises(flight.FlightUnauthenticatedError):
                client.do_get(ticket, options=options).read_all()  # refused, not waited for
            with pytest.raises(flight.FlightUnauthenticatedError):
                list(client.list_actions(options=options))
            with pytest.raises(flight.FlightUnauthenticatedError):
                list(client.do_action(flight.Action(ACTION_SUBMIT_TASKS, b"{}"), options=options))
        assert _health(right)["tasks"] == 0
    finally:
        for client in (plain, wrong, right):
            client.close()
        server.shutdown()
        server.close_all()


def test_the_token_never_shows() -> None:
    config = SecurityConfig(token=TOKEN)
    assert TOKEN not in repr(config) and TOKEN not in config.describe()
    with pytest.raises(SecurityError):
        SecurityConfig(token="  ")
    with pytest.raises(SecurityError, match="needs its key"):
        SecurityConfig(tls_cert="/nowhere.crt")


# ---- TLS -----------------------------------------------------------------------------------


def test_client_certificates_are_required_when_asked(certs: dict[str, Path]) -> None:
    server = _worker(WorkerConfig(security=_secure(certs, verify_client=True)))
    assert server.url.startswith("grpc+tls://")
    without_cert = new_client(server.url, SecurityConfig(tls_ca=str(certs["cert"]), token=TOKEN))
    with_cert = new_client(server.url, _secure(certs))
    try:
        with pytest.raises(flight.FlightUnavailableError):
            _health(without_cert)
        assert _health(with_cert)["tasks"] == 0
    finally:
        without_cert.close()
        with_cert.close()
        server.shutdown()
        server.close_all()


@pytest.fixture(scope="module")
def secure_cluster(certs: dict[str, Path], tpch_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(workers=2, data=tpch_dir, security=_secure(certs)) as local:
        yield local


def test_a_cluster_over_tls_with_a_token_answers_correctly(
    secure_cluster: LocalCluster, certs: dict[str, Path], tpch_dir: Path
) -> None:
    assert all(url.startswith("grpc+tls://") for url in secure_cluster.worker_urls)
    for number in (1, 6):  # Q1 shuffles between workers: worker-to-worker TLS and token too
        sql = tpch.query(number)
        assert_same_rows(secure_cluster.sql(sql), single_node(tpch_dir, sql), ordered=True)
    url = secure_cluster.worker_urls[0]
    attempts = {
        "plain gRPC": flight.FlightClient(url.replace("grpc+tls://", "grpc://")),
        "TLS, no token": new_client(url, SecurityConfig(tls_ca=str(certs["cert"]))),
        "another CA": new_client(url, SecurityConfig(tls_ca=str(certs["other"]), token=TOKEN)),
        # the client token is the coordinator's: workers take the cluster's internal secret only
        "TLS, client token": new_client(
            url, SecurityConfig(tls_ca=str(certs["cert"]), token=TOKEN)
        ),
    }
    try:
        for what, client in attempts.items():
            with pytest.raises((flight.FlightUnavailableError, flight.FlightUnauthenticatedError)):
                _health(client)
                pytest.fail(f"{what} was accepted")
    finally:
        for client in attempts.values():
            client.close()
    internal = new_client(url, secure_cluster.internal_security)
    try:
        assert _health(internal)["tasks"] == 0
    finally:
        internal.close()
    secret = secure_cluster.security.internal_secret
    assert secret and secret != TOKEN  # generated for the cluster
    for process in secure_cluster.processes:  # secrets reach workers by environment only
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert TOKEN.encode() not in cmdline and secret.encode() not in cmdline
        assert b"--data-root" in cmdline


def test_the_coordinator_refuses_unauthenticated_clients(
    secure_cluster: LocalCluster, certs: dict[str, Path], tpch_dir: Path
) -> None:
    tls = ["--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"])]
    ca = ["--tls-ca", str(certs["cert"])]
    env = {k: v for k, v in os.environ.items() if k != AUTH_TOKEN_ENV}
    coordinator = subprocess.Popen(
        [
            *CLI,
            "coordinator",
            "--port",
            "0",
            "--workers",
            ",".join(secure_cluster.worker_urls),
            "--data",
            str(tpch_dir),
            *tls,
            *ca,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **env,
            AUTH_TOKEN_ENV: TOKEN,
            INTERNAL_SECRET_ENV: secure_cluster.security.internal_secret or "",
        },
    )
    try:
        assert coordinator.stdout is not None
        url = coordinator.stdout.readline().split()[-1]
        assert url.startswith("grpc+tls://"), url
        sql = "select count(*) as n from nation"

        def query(*extra: str, token: bool = False) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*CLI, "query", "--coordinator", url, "-e", sql, *extra],
                capture_output=True,
                text=True,
                timeout=60,
                env={**env, AUTH_TOKEN_ENV: TOKEN} if token else env,
            )

        refused = query(*ca)
        assert refused.returncode == 1 and "unauthenticated" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert query("--auth-token-file", str(certs["token"])).returncode == 1  # no CA: no TLS
        for accepted in (
            query(*ca, token=True),
            query(*ca, "--auth-token-file", str(certs["token"])),
        ):
            assert accepted.returncode == 0, accepted.stderr
            assert "25" in accepted.stdout
    finally:
        out, err = stop(coordinator)
    assert TOKEN not in out + err


# ---- what tasks may touch ------------------------------------------------------------------


def _spec(
    files: tuple[str, ...], sql: str = "select count(*) as n from t", query_id: str = "roots"
) -> TaskSpec:
    return TaskSpec(
        query_id=query_id,
        stage_id=0,
        task_index=0,
        task_count=1,
        sql=sql,
        inputs=(TaskInput("t", files=files),) if files else (),
        output=OutputPartitioning("single"),
        output_schema_ipc=encode_schema(pa.schema([("n", pa.int64())])),
    )


def test_a_worker_refuses_files_outside_its_data_roots(tpch_dir: Path, tmp_path: Path) -> None:
    linked = tmp_path / "linked"  # a root given through a symbolic link
    linked.symlink_to(tpch_dir.resolve())
    inside = sorted((tpch_dir.resolve() / "nation").glob("*.parquet"))[0]
    server = _worker(WorkerConfig(data_roots=(str(linked),)))
    client = flight.FlightClient(server.url)
    options = flight.FlightCallOptions(timeout=10)

    def submit(*specs: TaskSpec) -> None:
        list(
            client.do_action(
                flight.Action(ACTION_SUBMIT_TASKS, encode_submission(specs)), options=options
            )
        )

    try:
        outside = [
            "/etc/hostname",
            f"{linked}/../../../etc/hostname",
            f"{tpch_dir.resolve()}/nation/../../../etc/hostname",
            f"{linked}-sibling/x.parquet",  # a name that only starts like the root
            "nation/nation.1.parquet",  # relative
        ]
        for path in outside:
            with pytest.raises(flight.FlightUnauthorizedError, match="permission denied"):
                submit(_spec((path,)))
        # A submission is taken whole or not at all: the task inside the roots did not start.
        beside = dataclasses.replace(_spec(("/etc/hostname",)), task_index=1, task_count=2)
        with pytest.raises(flight.FlightUnauthorizedError, match="permission denied"):
            submit(dataclasses.replace(_spec((str(inside),)), task_count=2), beside)
        # So is one that names a task twice.
        with pytest.raises(
            flight.FlightServerError, match=r"invalid argument: .*already submitted"
        ):
            submit(_spec((str(inside),)), _spec((str(inside),)))
        assert _health(client)["tasks"] == 0
        submit(_spec((str(inside),)))  # inside the resolved root: accepted
        ticket = flight.Ticket(BucketTicket("roots", 0, 0, 0).to_bytes())
        assert client.do_get(ticket, options=options).read_all().column("n")[0].as_py() == 25
        link_form = f"{linked}/nation/{inside.name}"
        submit(_spec((link_form,), query_id="linked"))  # and through the root's link
        # A task's SQL runs as a query only: no COPY ... TO, no CREATE EXTERNAL TABLE.
        target = tmp_path / "written.csv"
        submit(_spec((), f"copy (select 1 as n) to '{target}'", query_id="copy"))
        ticket = flight.Ticket(BucketTicket("copy", 0, 0, 0).to_bytes())
        with pytest.raises(flight.FlightServerError, match="DML not supported"):
            client.do_get(ticket, options=options).read_all()
        assert not target.exists()
    finally:
        client.close()
        server.shutdown()
        server.close_all()


def test_only_queries_reach_the_workers(cluster: LocalCluster, tmp_path: Path) -> None:
    target = tmp_path / "copied.csv"
    for statement in (
        f"copy (select 1 as x) to '{target}'",
        "create external table stolen stored as csv location '/etc/passwd'",
        "set datafusion.execution.batch_size = 1",
        "explain create view v as select 1",
    ):
        with pytest.raises(QueryRejected, match="only queries"):
            cluster.sql(statement)
    assert not target.exists()
    assert cluster.sql("select count(*) as n from region").column("n")[0].as_py() == 5


# ---- redaction -----------------------------------------------------------------------------


def test_redact_sql_option_redacts_exported_spans(tpch_dir: Path) -> None:
    sql = "select count(*) as n from nation where n_name = 'SECRET' and n_nationkey > 1234567"
    with OtlpReceiver() as receiver:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        result = subprocess.run(
            [*CLI, "local", "--workers", "2", "--data", str(tpch_dir), "--redact-sql", "-e", sql],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        spans = receiver.wait_for_spans(
            lambda spans: (
                any(c.is_query_span(s.name, s.attributes) for s in spans)
                and any(s.name == c.SPAN_TASK for s in spans)
            ),
            timeout=15,
        )
    query = next(s for s in spans if c.is_query_span(s.name, s.attributes))
    assert query.attributes[c.DB_QUERY_TEXT] == redact_sql(sql)
    assert "?" in str(query.attributes[c.DB_QUERY_TEXT])
    for span in spans:  # not in stage SQL, nor in the operators' descriptions on the workers
        text = json.dumps({k: str(v) for k, v in span.attributes.items()})
        assert "SECRET" not in text and "1234567" not in text, (span.name, text)


# ---- the client token and the cluster-internal secret --------------------------------------


def test_clients_reach_the_coordinator_only(tmp_path: Path, tpch_dir: Path) -> None:
    """The coordinator takes the client token, workers the internal secret: a client holding
    the coordinator's token cannot submit tasks to a worker or read its buckets."""
    client_token, secret = "client-token-0c7a", "internal-secret-9e2f"
    token_file, secret_file = tmp_path / "token", tmp_path / "secret"
    token_file.write_text(client_token)
    secret_file.write_text(secret + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_DIST_")}
    auth = ["--auth-token-file", str(token_file), "--internal-secret-file", str(secret_file)]
    worker, worker_url = start_worker("--port", "0", "--data-root", str(tpch_dir), *auth, env=env)
    coordinator = subprocess.Popen(
        [
            *CLI,
            "coordinator",
            "--port",
            "0",
            "--workers",
            worker_url,
            "--data",
            str(tpch_dir),
            *auth,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    as_client = new_client(worker_url, SecurityConfig(token=client_token))
    as_cluster = new_client(worker_url, SecurityConfig(token=secret))
    try:
        assert coordinator.stdout is not None
        url = coordinator.stdout.readline().split()[-1]
        sql = "select n_regionkey, count(*) as n from nation group by 1 order by 1"
        result = subprocess.run(
            [*CLI, "query", "--coordinator", url, "-e", sql, "--auth-token-file", str(token_file)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        options = flight.FlightCallOptions(timeout=5)
        ticket = flight.Ticket(BucketTicket("any-query", 0, 0, 0).to_bytes())
        with pytest.raises(flight.FlightUnauthenticatedError, match="internal secret"):
            _health(as_client)
        with pytest.raises(flight.FlightUnauthenticatedError):
            as_client.do_get(ticket, options=options).read_all()
        with pytest.raises(flight.FlightUnauthenticatedError):
            submission = encode_submission((_spec(()),))
            list(as_client.do_action(flight.Action(ACTION_SUBMIT_TASKS, submission), options))
        assert _health(as_cluster)["tasks"] == 0  # the worker is up: only the client is refused
        # and the internal secret is no client credential for the coordinator
        refused = subprocess.run(
            [*CLI, "query", "--coordinator", url, "-e", sql],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, AUTH_TOKEN_ENV: secret},
        )
        assert refused.returncode == 1 and "unauthenticated" in refused.stderr, refused.stderr
    finally:
        as_client.close()
        as_cluster.close()
        out, err = stop(coordinator)
        stop(worker)
    assert secret not in out + err and client_token not in out + err


def test_a_local_cluster_generates_its_internal_secret(tpch_dir: Path) -> None:
    with LocalCluster(workers=2, data=tpch_dir, internal_secret=True) as local:
        sql = tpch.query(3)  # shuffles: worker-to-worker reads carry the secret too
        assert_same_rows(local.sql(sql), single_node(tpch_dir, sql), ordered=True)
        plain = flight.FlightClient(local.worker_urls[0])
        try:
            with pytest.raises(flight.FlightUnauthenticatedError):
                _health(plain)
        finally:
            plain.close()


def test_a_bare_worker_reads_no_files_unless_allowed_any_path(tpch_dir: Path) -> None:
    nation = str(sorted((tpch_dir.resolve() / "nation").glob("*.parquet"))[0])
    options = flight.FlightCallOptions(timeout=10)

    def submit(client: flight.FlightClient, spec: TaskSpec) -> None:
        action = flight.Action(ACTION_SUBMIT_TASKS, encode_submission((spec,)))
        list(client.do_action(action, options=options))

    bare, url = start_worker("--port", "0")
    client = flight.FlightClient(url)
    try:
        for path in ("/etc/hostname", nation):
            with pytest.raises(flight.FlightUnauthorizedError, match="--data-root"):
                submit(client, _spec((path,)))
        submit(client, _spec((), "select 1 as n", query_id="no-files"))  # no file: runs
        # A caller on the worker's own host (the worker has no authentication) may declare
        # the data folder, as a hand-started coordinator does; nothing outside it is read.
        declared = (str(tpch_dir.resolve()),)
        action = flight.Action(
            ACTION_SUBMIT_TASKS, encode_submission((_spec(("/etc/hostname",)),), declared)
        )
        with pytest.raises(flight.FlightUnauthorizedError, match="outside the worker's data"):
            list(client.do_action(action, options=options))
        spec = _spec((nation,), query_id="declared")
        action = flight.Action(ACTION_SUBMIT_TASKS, encode_submission((spec,), declared))
        list(client.do_action(action, options=options))
        ticket = flight.Ticket(BucketTicket("declared", 0, 0, 0).to_bytes())
        assert client.do_get(ticket, options=options).read_all().column("n")[0].as_py() == 25
    finally:
        client.close()
        _, err = stop(bare)
    assert "no --data-root given" in err and "declares" in err
    opted_in, url = start_worker("--port", "0", "--allow-any-path")
    client = flight.FlightClient(url)
    try:
        submit(client, _spec((nation,), query_id="any-path"))
        ticket = flight.Ticket(BucketTicket("any-path", 0, 0, 0).to_bytes())
        assert client.do_get(ticket, options=options).read_all().column("n")[0].as_py() == 25
    finally:
        client.close()
        _, err = stop(opted_in)
    assert "--allow-any-path" in err


def test_a_hand_started_cluster_reads_the_coordinators_data_folder(tpch_dir: Path) -> None:
    """``otel-dist worker --port P`` with no ``--data-root`` under ``otel-dist coordinator
    --data DIR`` on the same host answers queries: the coordinator declares its folder."""
    with remote_cluster(tpch_dir, data_root=False) as (coordinator_url, _):
        client = flight.FlightClient(coordinator_url)
        try:
            ticket = flight.Ticket(json.dumps({"sql": "select count(*) as n from nation"}).encode())
            table = client.do_get(ticket, options=flight.FlightCallOptions(timeout=60)).read_all()
        finally:
            client.close()
    assert table.column("n")[0].as_py() == 25
