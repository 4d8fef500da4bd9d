"""The worker's spill folder: writing spill files fully or failing clearly, telling whether
the folder can take spills at all (the health probe), and removing the folders of workers
that no longer exist.

Each worker spills under its own folder ``otel-dist-worker-<pid>-<random>`` in ``--spill-dir``
(default: the system's temporary folder), holding ``owner.lock``, which the worker keeps
locked (``flock``) while it lives. At start-up a worker removes every sibling folder whose
lock it can take (its owner died, even by SIGKILL: the kernel drops the lock) and every
older folder without a lock whose pid is not a running process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

FOLDER_PREFIX = "otel-dist-worker-"
LOCK_FILE = "owner.lock"
# How long a spill check's answer is reused (health probes come every second).
CHECK_TTL_S = 1.0
_PROBE_BYTES = 64 * 1024
_PID_IN_NAME = re.compile(rf"^{re.escape(FOLDER_PREFIX)}(\d+)-")


class SpillError(RuntimeError):
    """A spill file could not be written; the message names the device or the cause."""


def write_fully(fd: int, payload: bytes | memoryview, offset: int, path: str) -> int:
    """Write all of ``payload`` at ``offset`` (``os.pwrite`` may write less than asked);
    return the bytes written, or raise ``SpillError`` naming the cause."""
    view = memoryview(payload).cast("B")
    written = 0
    while written < len(view):
        try:
            count = os.pwrite(fd, view[written:], offset + written)
        except OSError as error:
            raise spill_error(error, path) from None
        if count <= 0:  # no progress: the device takes no more
            raise spill_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
        written += count
    return written


def spill_error(error: OSError, path: str) -> SpillError:
    folder = os.path.dirname(path) or path
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpillError(f"no space left on the spill device {folder}")
    if error.errno == errno.EFBIG:
        return SpillError(f"the spill file {path} reached the file size limit (ulimit -f)")
    if error.errno == errno.EROFS:
        return SpillError(f"the spill folder {folder} is on a read-only file system")
    return SpillError(f"cannot spill to {folder}: {error.strerror or error}")


@dataclass
class SpillFolder:
    """This worker's spill folder, locked for as long as the worker lives."""

    path: str
    _lock_fd: int | None = None
    _checked_at: float = field(default=-1e9)
    _problem: str | None = None
    _check_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, parent: str | None) -> SpillFolder:
        """A new folder under ``parent`` (default: the temporary folder), after removing the
        folders there of workers that no longer exist."""
        parent = parent or tempfile.gettempdir()
        os.makedirs(parent, exist_ok=True)
        removed = remove_stale(parent)
        if removed:
            log.info("removed %d spill folders of workers that no longer exist", len(removed))
        path = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-", dir=parent)
        lock_fd = os.open(os.path.join(path, LOCK_FILE), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        return cls(path, lock_fd)

    def problem(self) -> str | None:
        """Why spills would fail now (None: they would not): a small file written and
        removed, at most once a second."""
        with self._check_lock:
            if time.monotonic() - self._checked_at < CHECK_TTL_S:
                return self._problem
            self._problem = self._probe()
            self._checked_at = time.monotonic()
            return self._problem

    def _probe(self) -> str | None:
        probe = os.path.join(self.path, f".health-{threading.get_ident()}")
        try:
            fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        except OSError as error:
            return str(spill_error(error, probe))
        try:
            # No fsync: file systems reserve space at write time (ENOSPC shows here), and a
            # sync behind a busy disk could make the probe miss its deadline.
            write_fully(fd, b"\0" * _PROBE_BYTES, 0, probe)
        except SpillError as error:
            return str(error)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
        return None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def remove_stale(parent: str) -> list[str]:
    """Remove the spill folders under ``parent`` whose worker no longer exists."""
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        folder = os.path.join(parent, name)
        if not name.startswith(FOLDER_PREFIX) or not os.path.isdir(folder):
            continue
        if os.path.islink(folder):
            continue
        if _owner_gone(folder, name):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _owner_gone(folder: str, name: str) -> bool:
    lock_path = os.path.join(folder, LOCK_FILE)
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        match = _PID_IN_NAME.match(name)  # no lock (yet, or an older worker): by its pid
        return match is not None and not _alive(int(match.group(1))) and _older_than(folder, 5)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its owner holds it
    finally:
        os.close(fd)
    return _older_than(folder, 5)  # not one whose owner is between creating and locking it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _older_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > seconds
    except OSError:
        return False
