"""Helpers shared by the reliability, security and load tests: bounded waits, free ports,
worker processes started by hand, process resource readings and Prometheus scrapes."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow.flight as flight

from otel_dist.worker.process import READY_PREFIX

CLI = [sys.executable, "-m", "otel_dist.cli"]
T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> tuple[subprocess.Popen[str], str]:
    """An ``otel-dist worker`` process and its URL (from its ready line)."""
    process = subprocess.Popen(
        [*CLI, "worker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            stop(process)
            raise AssertionError(
                f"worker exited: {process.stderr.read() if process.stderr else ''}"
            )
        if line.startswith(READY_PREFIX):
            return process, line[len(READY_PREFIX) :].strip()
    stop(process)
    raise AssertionError("worker did not start in time")


@contextlib.contextmanager
def remote_cluster(
    data: Path,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    data_root: bool = True,
    args: tuple[str, ...] = (),
) -> Iterator[tuple[str, str]]:
    """An ``otel-dist worker`` and an ``otel-dist coordinator`` process over it, as on two
    hosts; yields the coordinator's URL and the worker's, and stops both. ``data_root``: the
    worker is given the data folder as its ``--data-root`` (else it takes the coordinator's);
    ``args`` go to both."""
    roots = ("--data-root", str(data)) if data_root else ()
    worker, worker_url = start_worker("--port", "0", *roots, *args, env=env, timeout=timeout)
    coordinator = subprocess.Popen(
        [*CLI, "coordinator", "--port", "0", "--workers", worker_url, "--data", str(data), *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert coordinator.stdout is not None
        yield coordinator.stdout.readline().split()[-1], worker_url
    finally:
        stop(coordinator)
        stop(worker)


def stop(process: subprocess.Popen[str], timeout: float = 10) -> tuple[str, str]:
    """Terminate (then kill) a process; its remaining stdout and stderr."""
    if process.poll() is None:
        process.terminate()
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate(timeout=timeout)
    return out or "", err or ""


def worker_health(url: str, client: flight.FlightClient | None = None) -> dict[str, object]:
    import json

    own = client is None
    client = client or flight.FlightClient(url)
    try:
        results = client.do_action(
            flight.Action("health", b""), options=flight.FlightCallOptions(timeout=5)
        )
        return json.loads(b"".join(r.body.to_pybytes() for r in results))
    finally:
        if own:
            client.close()


SAMPLE_S = 0.1
BUSY_CPU_S = 0.02  # more than a fifth of a core over a sample: computing
QUIET_S = 1.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def computing(pid: int) -> bool:
    """Whether the process uses more than a sixth of a core over the next 0.3 s."""
    before = cpu_seconds(pid)
    time.sleep(0.3)
    return cpu_seconds(pid) - before > 0.05


def seconds_until_idle(pids: list[int], since: float, limit_s: float = 30) -> float:
    """Seconds from ``since`` to the end of the last ``SAMPLE_S`` in which any of ``pids``
    was computing, once all have been quiet for ``QUIET_S``."""
    last_busy = since
    before = [cpu_seconds(pid) for pid in pids]
    while time.monotonic() - since < limit_s:
        time.sleep(SAMPLE_S)
        now = time.monotonic()
        after = [cpu_seconds(pid) for pid in pids]
        if max(b - a for a, b in zip(before, after, strict=True)) > BUSY_CPU_S:
            last_busy = now
        before = after
        if now - last_busy >= QUIET_S:
            return last_busy - since
    raise AssertionError(f"workers still busy {limit_s:.0f}s after the interrupt")


@dataclass(frozen=True)
class ProcessUsage:
    """Resident memory, threads and open files of one process, from /proc."""

    rss_bytes: int
    threads: int
    open_files: int


def process_usage(pid: int) -> ProcessUsage:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return ProcessUsage(
        rss_bytes=rss_kb * 1024,
        threads=len(os.listdir(f"/proc/{pid}/task")),
        open_files=len(os.listdir(f"/proc/{pid}/fd")),
    )


_SAMPLE = re.compile(r"^([^{\s#]+(?:\{[^}]*\})?)\s+(\S+)")


def scrape(url: str) -> dict[str, float]:
    """A Prometheus /metrics page as ``{'name{labels}': value}``."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            samples[match.group(1)] = float(match.group(2))
        except ValueError:
            continue
    return samples


def metric_sum(samples: dict[str, float], name: str, label: str = "") -> float:
    """The sum of every series of ``name`` (with ``label`` in its labels, if given)."""
    return sum(
        value
        for key, value in samples.items()
        if (key == name or key.startswith(name + "{")) and label in key
    )


def self_signed_certificate(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"otel-dist test {name}")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
