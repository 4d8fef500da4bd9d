"""Which workers a coordinator uses, when that changes while it runs.

Three sources, any mix of them: the static ``--workers`` list; workers that announce
themselves with the ``register_worker`` action every ``heartbeat_s`` (``otel-dist worker
--coordinator URL``) and are dropped after ``missed_beats`` heartbeats that do not come (or at
once when they say goodbye with ``unregister_worker``); and DNS names (``dns:///NAME:PORT``,
a Kubernetes headless service) resolved to all their addresses every ``dns_interval_s``.
Every change goes to the health monitor (``health.py``), which probes the new worker and
places tasks on it from its first answer. This is the shape of datafusion-distributed's
``WorkerResolver`` and of Trino's discovery service: no restart to add or remove a worker.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from otel_dist.coordinator.health import WorkerHealth

log = logging.getLogger(__name__)

DNS_SCHEME = "dns:///"
DEFAULT_HEARTBEAT_S = 2.0
DEFAULT_MISSED_BEATS = 3
DEFAULT_DNS_INTERVAL_S = 5.0


@dataclass(frozen=True)
class DnsName:
    """A name whose every address (A and AAAA records) is a worker listening on ``port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{DNS_SCHEME}{self.host}:{self.port}"


def resolve(name: DnsName) -> list[str]:
    """The worker URLs a name resolves to now, sorted; raises ``OSError`` when it does not."""
    infos = socket.getaddrinfo(name.host, name.port, type=socket.SOCK_STREAM)
    urls = set()
    for family, _, _, _, address in infos:
        host = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
        urls.add(f"grpc://{host}:{name.port}")
    return sorted(urls)


class Membership:
    """Keeps the health monitor's worker set in step with heartbeats and DNS."""

    def __init__(
        self,
        health: WorkerHealth,
        dns_names: Sequence[DnsName] = (),
        secure: Callable[[str], str] = lambda url: url,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        missed_beats: int = DEFAULT_MISSED_BEATS,
        dns_interval_s: float = DEFAULT_DNS_INTERVAL_S,
        resolver: Callable[[DnsName], list[str]] = resolve,
    ) -> None:
        self.health = health
        self.dns_names = tuple(dns_names)
        self.heartbeat_s = heartbeat_s
        self.missed_beats = missed_beats
        self.dns_interval_s = dns_interval_s
        self._secure = secure
        self._resolve = resolver
        self._static = set(health.urls)
        self._registered: dict[str, float] = {}  # url -> monotonic time of its last heartbeat
        self._resolved: dict[DnsName, set[str]] = {name: set() for name in self.dns_names}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Membership:
        for name in self.dns_names:
            self._refresh(name)
        self._thread = threading.Thread(target=self._loop, name="membership", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def register(self, url: str) -> bool:
        """A heartbeat from ``url``; True when the worker is new."""
        url = self._secure(url)
        with self._lock:
            new = url not in self._registered
            self._registered[url] = time.monotonic()
        if new:
            self.health.add(url)
        return new

    def unregister(self, url: str) -> bool:
        """A worker said goodbye (it is shutting down)."""
        url = self._secure(url)
        with self._lock:
            known = self._registered.pop(url, None) is not None
        if known:
            self._drop(url, "it unregistered")
        return known

    def describe(self) -> str:
        """Where workers come from, for a message saying none is usable."""
        parts = []
        if self._static:
            parts.append(f"--workers {','.join(sorted(self._static))}")
        for name in self.dns_names:
            parts.append(f"{name} ({len(self._resolved.get(name, ()))} addresses)")
        with self._lock:
            parts.append(f"{len(self._registered)} registered")
        return "; ".join(parts)

    def _in_use_elsewhere(self, url: str) -> bool:
        with self._lock:
            return (
                url in self._static
                or url in self._registered
                or any(url in urls for urls in self._resolved.values())
            )

    def _drop(self, url: str, reason: str) -> None:
        if not self._in_use_elsewhere(url):
            self.health.remove(url, reason)

    def _expire(self) -> None:
        limit = self.heartbeat_s * self.missed_beats
        now = time.monotonic()
        with self._lock:
            gone = [url for url, seen in self._registered.items() if now - seen > limit]
            for url in gone:
                del self._registered[url]
        for url in gone:
            self._drop(url, f"no heartbeat for {limit:g}s")

    def _refresh(self, name: DnsName) -> None:
        try:
            urls = {self._secure(url) for url in self._resolve(name)}
        except OSError as error:
            # A name with no ready address yet (pods starting) does not resolve: keep what
            # was known, and try again at the next interval.
            log.info("%s does not resolve (yet): %s", name, error)
            return
        with self._lock:
            before = self._resolved.get(name, set())
            self._resolved[name] = urls
        for url in sorted(urls - before):
            self.health.add(url)
        for url in sorted(before - urls):
            self._drop(url, f"{name} no longer resolves to it")

    def _loop(self) -> None:
        next_dns = time.monotonic() + self.dns_interval_s
        while not self._stop.wait(min(self.heartbeat_s, self.dns_interval_s) / 2):
            try:
                self._expire()
                if self.dns_names and time.monotonic() >= next_dns:
                    next_dns = time.monotonic() + self.dns_interval_s
                    for name in self.dns_names:
                        self._refresh(name)
            except Exception:  # membership upkeep must never stop
                log.warning("worker membership upkeep failed", exc_info=True)
