"""Every ``OTEL_DIST_*`` environment variable in one place: its name, what it means, its default
and how its value is read, with one error style for a bad value (one line naming the variable
and what it accepts).

Modules read a setting with ``read(NAME, env)`` (``env`` defaults to ``os.environ``); the
command line's options override what is read here. The standard ``OTEL_*`` variables of the
OpenTelemetry specification are read by ``telemetry/setup.py`` and ``telemetry/metrics/config.py``.
The README's settings table is this registry (``tests/test_settings.py`` holds them equal).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingError(ValueError):
    """A setting's value that cannot be read; the message is one line naming the variable."""


@dataclass(frozen=True)
class Setting:
    """One variable: ``kind`` is how its text is read (bytes, count, number, flag, text,
    choice); ``default`` is what an unset or empty variable means."""

    name: str
    kind: str
    default: Any
    meaning: str
    choices: tuple[str, ...] = ()

    def accepts(self) -> str:
        return {
            "bytes": "a whole number of bytes (0 or more)",
            "count": "a positive whole number",
            "number": "a number",
            "flag": "true or false (or on/off, yes/no, 1/0)",
            "text": "any text",
            "choice": "one of " + ", ".join(self.choices),
        }[self.kind]


MIB = 1 << 20
_ALL = (
    Setting("OTEL_DIST_TELEMETRY", "flag", True, "off: no spans, no in-band telemetry"),
    Setting(
        "OTEL_DIST_TELEMETRY_MAX_BYTES",
        "bytes",
        MIB,
        "size limit of a task's in-band telemetry message (whole tasks past it are left out)",
    ),
    Setting(
        "OTEL_DIST_REDACT_SQL",
        "flag",
        False,
        "literals in exported SQL replaced by ? (as --redact-sql)",
    ),
    Setting("OTEL_DIST_RELAY", "flag", False, "workers' spans exported by the coordinator"),
    Setting("OTEL_DIST_EXPORT_ERRORS", "flag", True, "off: a collector that is down is not logged"),
    Setting(
        "OTEL_DIST_TRACE_URL",
        "text",
        None,
        "a trace viewer's URL with {trace_id}, linked from trees and pages",
    ),
    Setting(
        "OTEL_DIST_EXPLAIN_LOG",
        "choice",
        "slow",
        "the coordinator logs each query's tree: off, slow or all (as --explain-log)",
        ("off", "slow", "all"),
    ),
    Setting("OTEL_DIST_EXPLAIN_LOG_SLOW_MS", "number", 1000.0, "what slow means, in milliseconds"),
    Setting(
        "OTEL_DIST_BROADCAST_THRESHOLD",
        "bytes",
        64_000_000,
        "join sides estimated at most this size are broadcast (as --broadcast-threshold)",
    ),
    Setting(
        "OTEL_DIST_MIN_TASK_BYTES",
        "bytes",
        64_000_000,
        "the least a scan task reads; 0 splits every table (as --min-task-bytes)",
    ),
    Setting(
        "OTEL_DIST_STREAM_BYTES",
        "bytes",
        64 * MIB,
        "a task's stage input larger than this is streamed into its plan, not held whole (0: never)",
    ),
    Setting("OTEL_DIST_MAX_SQL_BYTES", "count", MIB, "longer SQL is refused (as --max-sql-bytes)"),
    Setting(
        "OTEL_DIST_MAX_RESULT_BYTES",
        "count",
        2 << 30,
        "queries with larger results fail (as --max-result-bytes)",
    ),
    Setting(
        "OTEL_DIST_MAX_TOTAL_RESULT_BYTES",
        "count",
        4 << 30,
        "result bytes all running queries together may hold in the coordinator "
        "(as --max-total-result-bytes)",
    ),
    Setting(
        "OTEL_DIST_MAX_SQL_DEPTH",
        "count",
        500,
        "SQL nesting or chaining operators deeper is refused (as --max-sql-depth)",
    ),
    Setting(
        "OTEL_DIST_MAX_SQL_OPERATORS",
        "count",
        5000,
        "SQL with more operators is refused (as --max-sql-operators)",
    ),
    Setting("OTEL_DIST_AUTH_TOKEN", "text", None, "the client token (as --auth-token-file)"),
    Setting(
        "OTEL_DIST_INTERNAL_SECRET",
        "text",
        None,
        "the cluster-internal secret workers require",
    ),
    Setting(
        "OTEL_DIST_INTERNAL_SECRET_FILE",
        "text",
        None,
        "a file holding it (as --internal-secret-file)",
    ),
    Setting("OTEL_DIST_TLS_CERT", "text", None, "TLS certificate, PEM file (as --tls-cert)"),
    Setting("OTEL_DIST_TLS_KEY", "text", None, "TLS private key, PEM file (as --tls-key)"),
    Setting("OTEL_DIST_TLS_CA", "text", None, "CA certificates to verify peers by (as --tls-ca)"),
    Setting(
        "OTEL_DIST_STALL_S",
        "number",
        120.0,
        "a task whose plan reads no streamed input and makes no progress this long is stopped "
        "(0: never)",
    ),
    Setting(
        "OTEL_DIST_IDLE_TRIM_S",
        "number",
        2.0,
        "a worker or coordinator idle this long hands memory back to the OS (0: never)",
    ),
    Setting(
        "OTEL_DIST_CACHE_DIR",
        "text",
        None,
        "where the demo and the tests keep generated data (default ~/.cache/otel_dist)",
    ),
)
SETTINGS: dict[str, Setting] = {setting.name: setting for setting in _ALL}


_REGISTERED = object()


def read(name: str, env: Mapping[str, str] | None = None, default: Any = _REGISTERED) -> Any:
    """The value of setting ``name`` in ``env`` (default: the process environment), or its
    default (the registered one unless ``default`` is given) when unset or empty;
    ``SettingError`` (one line) for a value it cannot read."""
    setting = SETTINGS[name]
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return setting.default if default is _REGISTERED else default
    try:
        return _parse(setting, raw)
    except ValueError:
        raise SettingError(f"{name} must be {setting.accepts()}, got {raw[:80]!r}") from None


def _parse(setting: Setting, raw: str) -> Any:
    if setting.kind in ("bytes", "count"):
        value = int(raw)
        if value < 0 or (setting.kind == "count" and value == 0):
            raise ValueError(raw)
        return value
    if setting.kind == "number":
        return float(raw)
    if setting.kind == "flag":
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(raw)
    if setting.kind == "choice":
        if raw.lower() not in setting.choices:
            raise ValueError(raw)
        return raw.lower()
    return raw


def markdown_table() -> str:
    """The README's table of every setting."""
    rows = ["| variable | accepts | default | meaning |", "|---|---|---|---|"]
    for setting in _ALL:
        default = "unset" if setting.default is None else str(setting.default)
        if isinstance(setting.default, bool):
            default = str(setting.default).lower()
        rows.append(f"| `{setting.name}` | {setting.accepts()} | {default} | {setting.meaning} |")
    return "\n".join(rows)
