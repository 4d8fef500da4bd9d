"""The coordinator's view of its workers' health, kept current by background probes.

Every worker is probed with the ``health`` action every ``interval_s`` (one daemon thread per
worker, each probe bounded by ``timeout_s``). A worker is *down* as soon as a probe or any
other call finds it unreachable (connection refused or reset: a definite answer), or after
``slow_probes`` probes in a row that time out (a hung process or host); it is *up* again at
its first answered probe. Queries are placed on workers that are up; a listener hears of
every worker that goes down so running queries with tasks there can fail at once.

The set of workers may change while the coordinator runs (``add``/``remove``: workers that
announce themselves, addresses of a DNS name, see ``membership.py``); a worker added is
*up* only from its first answered probe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


class WorkerUnhealthy(Exception):
    """A probe's answer: the worker is there but takes no new work (e.g. it cannot spill)."""


class ProbeFailed(Exception):
    """A probe got no answer; ``definite`` when the worker is certainly not there."""

    def __init__(self, reason: str, definite: bool) -> None:
        super().__init__(reason)
        self.definite = definite


Probe = Callable[[str, float], None]  # (worker URL, timeout) -> None, or raises ProbeFailed
DownListener = Callable[[str, str], None]  # (worker URL, reason)
UpListener = Callable[[str], None]  # (worker URL), when a worker that was down answers again


@dataclass
class WorkerState:
    """What the coordinator knows of one worker."""

    url: str
    up: bool = True
    since: float = 0.0  # time.monotonic() of the last change
    reason: str = ""  # why it is down
    slow_probes: int = 0
    last_probe: float | None = None
    seen: bool = False  # answered at least once (a worker never reached is not "lost")
    unhealthy: str = ""  # up, but gets no new work: why (its own health report)


class WorkerHealth:
    """Tracks which workers are up; ``healthy()`` lists them in their configured order."""

    def __init__(
        self,
        urls: Sequence[str],
        probe: Probe,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        slow_probes: int = 3,
    ) -> None:
        self._urls = list(dict.fromkeys(urls))
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.slow_probes = slow_probes
        self._probe = probe
        now = time.monotonic()
        self._states = {url: WorkerState(url, since=now) for url in self._urls}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._listeners: list[DownListener] = []
        self._up_listeners: list[UpListener] = []
        self._stop = threading.Event()
        self._threads: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._started = False

    @property
    def urls(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._urls)

    def start(self) -> WorkerHealth:
        self._started = True
        for url in self.urls:
            self._start_probing(url)
        return self

    def _start_probing(self, url: str) -> None:
        if self.interval_s <= 0 or not self._started or self._stop.is_set():
            return
        with self._lock:
            if url in self._threads:
                return
            gone = threading.Event()
            thread = threading.Thread(
                target=self._loop, args=(url, gone), name=f"health-{url}", daemon=True
            )
            self._threads[url] = (thread, gone)
        thread.start()

    def add(self, url: str) -> bool:
        """Watch a worker that joined; it takes tasks from its first answered probe."""
        with self._lock:
            if url in self._states:
                return False
            self._urls.append(url)
            self._states[url] = WorkerState(url, up=False, since=time.monotonic(), reason="joining")
        log.info("worker %s joined", url)
        self._start_probing(url)
        if self.interval_s <= 0:
            self.check(url)
        return True

    def remove(self, url: str, reason: str) -> bool:
        """Stop using a worker that left; running queries with tasks there fail as for a
        worker that went down."""
        self.mark_down(url, reason, quiet=True)
        with self._lock:
            if url not in self._states:
                return False
            self._urls.remove(url)
            del self._states[url]
            probing = self._threads.pop(url, None)
            self._changed.notify_all()
        if probing is not None:
            probing[1].set()
        log.warning("worker %s left: %s", url, reason)
        return True

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values())
            self._threads = {}
        for thread, gone in threads:
            gone.set()
            thread.join(self.timeout_s + 1)

    def add_listener(self, listener: DownListener) -> None:
        self._listeners.append(listener)

    def add_up_listener(self, listener: UpListener) -> None:
        self._up_listeners.append(listener)

    def healthy(self) -> list[str]:
        with self._lock:
            return [
                url
                for url in self._urls
                if self._states[url].up and not self._states[url].unhealthy
            ]

    def is_up(self, url: str) -> bool:
        with self._lock:
            state = self._states.get(url)
            return state is None or state.up

    def states(self) -> list[WorkerState]:
        with self._lock:
            return [WorkerState(**vars(self._states[url])) for url in self._urls]

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait (bounded) until ``predicate`` holds after some change of state."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
            return True

    def mark_down(self, url: str, reason: str, quiet: bool = False) -> None:
        """A call found ``url`` unreachable: down now (its probes bring it back)."""
        with self._lock:
            state = self._states.get(url)
            if state is None or not state.up:
                return
            state.up, state.since, state.reason = False, time.monotonic(), reason
            seen = state.seen
            self._changed.notify_all()
        if not quiet and not self._stop.is_set():  # closing: workers going away are expected
            log.log(logging.WARNING if seen else logging.INFO, "worker %s is down: %s", url, reason)
        for listener in list(self._listeners):
            try:
                listener(url, reason)
            except Exception:
                log.warning("worker-down listener failed", exc_info=True)

    def mark_up(self, url: str) -> None:
        with self._lock:
            state = self._states.get(url)
            if state is None:
                return
            state.slow_probes = 0
            seen, state.seen = state.seen, True
            if state.up:
                return
            state.up, state.since, state.reason = True, time.monotonic(), ""
            self._changed.notify_all()
        if seen:
            log.warning("worker %s is back", url)
        else:
            log.info("worker %s is up", url)
        for listener in list(self._up_listeners):
            try:
                listener(url)
            except Exception:
                log.warning("worker-up listener failed", exc_info=True)

    def check(self, url: str) -> bool:
        """Probe one worker now and update its state; True when it answered."""
        unhealthy = ""
        try:
            self._probe(url, self.timeout_s)
        except WorkerUnhealthy as report:
            unhealthy = str(report) or "unhealthy"
        except ProbeFailed as failure:
            with self._lock:
                state = self._states.get(url)
                if state is None:  # removed meanwhile
                    return False
                state.last_probe = time.monotonic()
                state.slow_probes = 0 if failure.definite else state.slow_probes + 1
                down = failure.definite or state.slow_probes >= self.slow_probes
            if down:
                self.mark_down(url, str(failure))
            return False
        with self._lock:
            state = self._states.get(url)
            if state is None:
                return False
            state.last_probe = time.monotonic()
            changed, state.unhealthy = state.unhealthy != unhealthy, unhealthy
            if changed:
                self._changed.notify_all()
        if changed and unhealthy:
            log.warning("worker %s takes no new work: %s", url, unhealthy)
        elif changed:
            log.warning("worker %s takes work again", url)
        self.mark_up(url)
        return True

    def _loop(self, url: str, gone: threading.Event) -> None:
        while not self._stop.is_set() and not gone.is_set():
            started = time.monotonic()
            try:
                self.check(url)
            except Exception:  # a probe bug must not end the monitoring
                log.warning("health probe of %s failed", url, exc_info=True)
            gone.wait(max(0.05, self.interval_s - (time.monotonic() - started)))
