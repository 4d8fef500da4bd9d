"""The coordinator's query pages and every ``/metrics`` endpoint behind the bearer token, with
real ``otel-dist`` processes: 401 without it (a real Prometheus scrapes with its
``authorization`` setting), nothing a client names written unescaped into the pages, and text
UTF-8 cannot encode (lone surrogates) rendered instead of breaking the pages."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from otel_dist.exchange.clients import new_client
from otel_dist.exchange.security import SecurityConfig
from otel_dist.worker.process import METRICS_PREFIX, READY_PREFIX
from tests.support import CLI, free_port, stop, wait_until

TOKEN = "web-token-3b9d"
XSS = "<img src=x onerror=alert(1)>"


@dataclass
class Protected:
    """A worker and a coordinator process, both with ``--auth-token-file``."""

    coordinator_url: str
    pages_url: str
    coordinator_metrics_url: str
    worker_url: str
    worker_metrics_url: str
    token_file: Path
    coordinator: subprocess.Popen[str]


def _lines_until(process: subprocess.Popen[str], prefix: str, timeout: float = 30) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"process exited: {stop(process)[1][-2000:]}")
        lines.append(line.strip())
        if prefix in line:
            return lines
    raise AssertionError(f"no line with {prefix!r} in time: {lines}")


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory, tpch_dir: Path) -> Iterator[Protected]:
    folder = tmp_path_factory.mktemp("web-auth")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    auth = ["--auth-token-file", str(token_file)]
    worker = subprocess.Popen(
        [*CLI, "worker", "--port", "0", "--metrics-port", "0", "--data-root", str(tpch_dir), *auth],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    coordinator: subprocess.Popen[str] | None = None
    try:
        lines = _lines_until(worker, READY_PREFIX)
        worker_metrics = next(ln[len(METRICS_PREFIX) :] for ln in lines if METRICS_PREFIX in ln)
        worker_url = lines[-1][len(READY_PREFIX) :]
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
                "--http-port",
                str(free_port()),
                "--metrics-port",
                "0",
                *auth,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        lines = _lines_until(coordinator, "query pages on")
        yield Protected(
            coordinator_url=lines[0].split()[-1],
            coordinator_metrics_url=next(ln for ln in lines if "metrics on" in ln).split()[-1],
            pages_url=lines[-1].split()[-1].removesuffix("/queries"),
            worker_url=worker_url,
            worker_metrics_url=worker_metrics,
            token_file=token_file,
            coordinator=coordinator,
        )
    finally:
        if coordinator is not None:
            _, err = stop(coordinator)
            assert "Traceback" not in err and "Logging error" not in err, err[-3000:]
        stop(worker)


def _get(url: str, token: str | None = None, scheme: str = "Bearer") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"{scheme} {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _run(protected: Protected, sql: str, query_id: str | None = None) -> None:
    """A query sent as a raw Flight ticket with telemetry, as any client may send it."""
    client = new_client(protected.coordinator_url, SecurityConfig(token=TOKEN))
    ticket: dict[str, object] = {"sql": sql, "telemetry": True}
    if query_id is not None:
        ticket["query_id"] = query_id
    try:
        client.do_get(
            flight.Ticket(json.dumps(ticket).encode()),
            options=flight.FlightCallOptions(timeout=60),
        ).read_all()
    except (flight.FlightError, pa.ArrowException):
        pass  # a failed query is listed too
    finally:
        client.close()


def _index(protected: Protected) -> str:
    status, _, body = _get(f"{protected.pages_url}/queries", TOKEN)
    assert status == 200, body
    return body.decode("utf-8")


def test_every_http_route_needs_the_token(protected: Protected) -> None:
    _run(protected, "select count(*) as n from nation", "web-auth-q")
    wait_until(lambda: "web-auth-q" in _index(protected), 15, "the query on the index page")
    pages = protected.pages_url
    routes = [
        f"{pages}/queries",
        f"{pages}/",
        f"{pages}/queries/web-auth-q",
        f"{pages}/queries/web-auth-q.json",
        f"{pages}/queries/no-such-query",
        protected.coordinator_metrics_url,
        protected.worker_metrics_url,
    ]
    for method in ("HEAD", "POST", "PUT"):  # every method, not only GET, before any route
        request = urllib.request.Request(f"{pages}/queries", method=method, data=b"")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401, method
    for url in routes:
        for token, scheme in ((None, "Bearer"), ("wrong", "Bearer"), (TOKEN, "Basic")):
            status, headers, body = _get(url, token, scheme)
            assert status == 401, (url, token, scheme, status)
            assert headers.get("WWW-Authenticate", "").startswith("Bearer"), headers
            assert b"web-auth-q" not in body and b"nation" not in body
        status, _, body = _get(url, TOKEN)
        assert status == (404 if url.endswith("no-such-query") else 200), (url, status)
    assert b"nation" in _get(f"{pages}/queries/web-auth-q.json", TOKEN)[2]
    assert b"otel_dist_query" in _get(protected.coordinator_metrics_url, TOKEN)[2]
    # curl, as the README shows it
    curl = subprocess.run(
        ["curl", "-sf", "-H", f"Authorization: Bearer {TOKEN}", f"{pages}/queries"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert curl.returncode == 0 and "web-auth-q" in curl.stdout


def test_prometheus_scrapes_with_its_authorization_setting(
    protected: Protected, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the test needs the `prometheus` binary on PATH", pytrace=False)
    targets = json.dumps(
        [
            urllib.parse.urlparse(url).netloc
            for url in (protected.coordinator_metrics_url, protected.worker_metrics_url)
        ]
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: with-token\n"
        f"    authorization:\n      credentials_file: {protected.token_file}\n"
        f"    static_configs:\n      - targets: {targets}\n"
        "  - job_name: without-token\n"
        f"    static_configs:\n      - targets: {targets}\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )

    def up() -> dict[str, list[str]] | None:
        try:
            url = f"http://127.0.0.1:{port}/api/v1/query?query=up"
            with urllib.request.urlopen(url, timeout=5) as response:
                result = json.load(response)["data"]["result"]
        except (urllib.error.URLError, ConnectionError, KeyError):
            return None
        jobs: dict[str, list[str]] = {}
        for series in result:
            jobs.setdefault(series["metric"]["job"], []).append(series["value"][1])
        return (
            jobs
            if all(len(jobs.get(j, [])) == 2 for j in ("with-token", "without-token"))
            else None
        )

    try:
        jobs = wait_until(up, 60, "Prometheus to scrape both jobs")
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert jobs["with-token"] == ["1", "1"], jobs
    assert jobs["without-token"] == ["0", "0"], jobs


def test_nothing_a_client_names_is_written_unescaped(protected: Protected) -> None:
    _run(protected, "select 1 as one", XSS)
    _run(protected, f"select '{XSS}' as x", "web-xss-sql")
    wait_until(lambda: "web-xss-sql" in _index(protected), 15, "the queries on the index page")
    page = _index(protected)
    assert "<img" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    for href in re.findall(r"href='([^']*)'", page):
        assert all(ch not in href for ch in "<>\"' "), href
        status, _, body = _get(f"{protected.pages_url}{href.replace('&amp;', '&')}", TOKEN)
        assert status == 200, href
        assert b"<img" not in body, href
    if "&lt;img src=x" in page:  # the coordinator kept the client's name for the query
        status, _, _ = _get(
            f"{protected.pages_url}/queries/{urllib.parse.quote(XSS, safe='')}.json", TOKEN
        )
        assert status == 200


def test_text_utf8_cannot_encode_renders(protected: Protected) -> None:
    # What a shell passes for the invalid UTF-8 byte 0xE9: a lone surrogate, JSON-escaped.
    _run(protected, "select 'caf\udce9' as word", "web-surrogate")
    _run(protected, "select count(*) as n from region", "web-after-surrogate")
    wait_until(
        lambda: "web-after-surrogate" in _index(protected), 15, "the index page after the query"
    )
    _run(protected, "select 2 as two", "web-\udce9-id")  # an id no UTF-8 can hold, too
    page = _index(protected)
    assert "web-surrogate" in page and "caf\\udce9" in page
    for suffix in ("", ".json"):
        status, _, body = _get(f"{protected.pages_url}/queries/web-surrogate{suffix}", TOKEN)
        assert status == 200, (suffix, body[-500:])
    for href in re.findall(r"href='([^']*)'", page):  # every link leads to its page
        assert _get(f"{protected.pages_url}{href}", TOKEN)[0] == 200, href
    assert protected.coordinator.poll() is None


def test_deploy_uses_the_security_model() -> None:
    """Compose and Kubernetes give every otel_dist process both secrets and its workers a data
    root; Prometheus scrapes otel_dist with the client token and never mounts the internal
    secret."""
    import yaml

    deploy = Path(__file__).resolve().parent.parent / "deploy"
    compose = yaml.safe_load((deploy / "docker-compose.yaml").read_text())["services"]
    commands = {name: compose[name]["command"] for name in ("coordinator", "worker-1", "worker-2")}
    pods = [
        doc["spec"]["template"]["spec"]["containers"][0]
        for name in ("workers.yaml", "coordinator.yaml")
        for doc in yaml.safe_load_all((deploy / "kubernetes" / name).read_text())
        if doc["kind"] in ("StatefulSet", "Deployment")
    ]
    commands |= {f"k8s {pod['name']}": pod["args"] for pod in pods}
    for name, command in commands.items():
        assert "--auth-token-file" in command and "--internal-secret-file" in command, name
        if command[0] == "worker":
            assert command[command.index("--data-root") + 1] == "/data", name
            assert "--allow-any-path" not in command
    prometheus = yaml.safe_load((deploy / "prometheus" / "prometheus.yml").read_text())
    token = compose["coordinator"]["command"][
        compose["coordinator"]["command"].index("--auth-token-file") + 1
    ]
    for job in prometheus["scrape_configs"]:
        if job["job_name"].startswith("otel-dist-"):
            assert job["authorization"]["credentials_file"] == token, job
    mounts = " ".join(compose["prometheus"]["volumes"])
    assert "client-token:" in mounts and "internal-secret" not in mounts
