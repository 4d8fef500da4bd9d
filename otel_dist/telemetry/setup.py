"""Telemetry set-up for one process, from the standard ``OTEL_*`` variables, in one place.

Read once when a coordinator or worker starts (nothing happens at import time):

* ``OTEL_SDK_DISABLED=true`` or ``OTEL_DIST_TELEMETRY=off``: no spans, no in-band telemetry.
* ``OTEL_TRACES_EXPORTER``: ``otlp``, ``console`` or ``none``. Unset, it is ``otlp`` when an
  OTLP endpoint is configured and ``none`` otherwise (so the demo does not retry a collector
  that is not there).
* ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``
  (``grpc`` or ``http/protobuf``), ``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`` and ``_TIMEOUT``.
* ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` (values %-decoded, as the SDK does);
  the resource is the SDK's (``Resource.create``: ``telemetry.sdk.*``) plus
  ``service.instance.id`` (unique per process), ``service.version`` (the package's),
  ``service.namespace`` (``otel_dist`` unless set), ``host.name`` and ``process.pid`` (an int).
* ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``, every sampler the specification
  names; an unknown name is reported in one warning and ``parentbased_always_on`` used. A span
  the sampler drops is still recorded, attributes and all (so EXPLAIN ANALYZE is complete),
  but never exported.
* ``OTEL_DIST_TELEMETRY_MAX_BYTES``: size limit of a task's in-band telemetry message.
* ``OTEL_DIST_REDACT_SQL=true`` (or ``--redact-sql``): literals in ``db.query.text`` and in
  stage SQL are replaced by ``?``, and operator spans show operator names only (DataFusion
  prints predicate literals in its operator descriptions). Error messages are not redacted.

Spans are exported by a ``BatchSpanProcessor``: a bounded queue and a background thread, so an
exporter that is slow or down never blocks a query; each export is bounded by the OTLP timeout
and shutting down waits at most ``SHUTDOWN_TIMEOUT_S`` for what is still queued, or
``UNREACHABLE_SHUTDOWN_S`` when the collector is down (an export failed, or it refuses a
connection at exit): a process exits at once rather than retry a collector that is not there.
A failing exporter says so in one log line per process (``quiet_export_errors``), not one per
retry; ``OTEL_DIST_EXPORT_ERRORS=off`` silences even that (``LocalCluster``'s workers, whose
coordinator already says it).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from otel_dist.settings import SETTINGS, read

DEFAULT_ENVELOPE_LIMIT: int = SETTINGS["OTEL_DIST_TELEMETRY_MAX_BYTES"].default
SCOPE_NAME = "otel_dist"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"  # the semconv release the names follow
DEFAULT_NAMESPACE = "otel_dist"
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
SHUTDOWN_TIMEOUT_S = 5.0
UNREACHABLE_SHUTDOWN_S = 0.3
EXPORT_ERRORS_ENV = "OTEL_DIST_EXPORT_ERRORS"
# The SDK's exporters log every retry and every failed export; these are their loggers.
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk.trace.export",
)
_TRUE = {"1", "true", "yes", "on"}

log = logging.getLogger(__name__)


class _ExportErrorsOnce(logging.Filter):
    """Lets the first export error of the process through as one short line, and no other."""

    def __init__(self, show: bool) -> None:
        super().__init__()
        self.show = show
        self.failed = threading.Event()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        with self._lock:
            first = not self.failed.is_set()
            self.failed.set()
        if not first or not self.show:
            return False
        reason = " ".join(record.getMessage().split())
        record.msg = "telemetry export is failing, spans and metrics are dropped (%s)"
        record.args = (reason[:300],)
        record.exc_info = record.exc_text = None
        return True


_export_errors: _ExportErrorsOnce | None = None
_export_errors_lock = threading.Lock()


def quiet_export_errors(env: Mapping[str, str] | None = None) -> _ExportErrorsOnce:
    """Install (once per process) the filter that reduces exporter errors to one line."""
    global _export_errors
    env = os.environ if env is None else env
    with _export_errors_lock:
        if _export_errors is None:
            show = bool(read(EXPORT_ERRORS_ENV, env))
            _export_errors = _ExportErrorsOnce(show)
            for name in _EXPORTER_LOGGERS:
                logging.getLogger(name).addFilter(_export_errors)
        return _export_errors


def shutdown_timeout_s(endpoint: str | None) -> float:
    """How long a shutdown may wait for queued telemetry: short when the collector is down."""
    if _export_errors is not None and _export_errors.failed.is_set():
        return UNREACHABLE_SHUTDOWN_S
    if endpoint and not _answers(endpoint):
        return UNREACHABLE_SHUTDOWN_S
    return SHUTDOWN_TIMEOUT_S


def _answers(endpoint: str, timeout_s: float = 0.2) -> bool:
    """Whether something accepts a TCP connection at an OTLP endpoint's host and port."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    port = parts.port or (443 if parts.scheme == "https" else 4317)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout_s):
            return True
    except OSError:
        return False


def bounded(action: Callable[[], object], timeout_s: float, what: str) -> bool:
    """Run ``action`` on a daemon thread and wait at most ``timeout_s`` for it (exporters
    talking to a collector that is down or slow must not hold a process's exit); False
    when it did not finish in time or raised."""
    outcome: list[bool] = []

    def run() -> None:
        try:
            action()
            outcome.append(True)
        except Exception:
            log.warning("%s failed", what, exc_info=True)

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive() and timeout_s > UNREACHABLE_SHUTDOWN_S:  # else: already said
        log.warning("%s did not finish within %.0fs; going on without it", what, timeout_s)
    return bool(outcome)


@dataclass(frozen=True)
class TelemetryConfig:
    """What one process does with its spans."""

    service_name: str
    enabled: bool = True
    traces_exporter: str = "none"
    protocol: str = "grpc"
    endpoint: str | None = None
    headers: str | None = None
    timeout_s: float = 10.0
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    resource_attributes: str = ""
    envelope_limit_bytes: int = DEFAULT_ENVELOPE_LIMIT
    redact_sql: bool = False
    relay: bool = False

    @staticmethod
    def from_env(
        default_service_name: str, env: Mapping[str, str] | None = None
    ) -> TelemetryConfig:
        env = os.environ if env is None else env

        def get(*names: str, default: str = "") -> str:
            return next((env[n] for n in names if env.get(n)), default)

        disabled = get("OTEL_SDK_DISABLED").lower() in _TRUE or not read("OTEL_DIST_TELEMETRY", env)
        endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT") or None
        protocol = get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL", default="grpc"
        )
        if (
            endpoint
            and protocol.startswith("http")
            and not get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        ):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        exporter = get("OTEL_TRACES_EXPORTER", default="otlp" if endpoint else "none")
        resource_attributes = get("OTEL_RESOURCE_ATTRIBUTES")
        service_name = get("OTEL_SERVICE_NAME") or parse_pairs(resource_attributes).get(
            "service.name", default_service_name
        )
        return TelemetryConfig(
            service_name=service_name,
            enabled=not disabled,
            traces_exporter=exporter.split(",")[0].strip().lower(),
            protocol=protocol.lower(),
            endpoint=endpoint,
            headers=get("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") or None,
            timeout_s=otel_number(
                get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), 10_000
            )
            / 1000,
            sampler=get("OTEL_TRACES_SAMPLER", default="parentbased_always_on").lower(),
            sampler_arg=otel_number(get("OTEL_TRACES_SAMPLER_ARG"), 1.0),
            resource_attributes=resource_attributes,
            envelope_limit_bytes=int(read("OTEL_DIST_TELEMETRY_MAX_BYTES", env)),
            redact_sql=bool(read("OTEL_DIST_REDACT_SQL", env)),
            relay=bool(read("OTEL_DIST_RELAY", env)),
        )


class Telemetry:
    """A process's tracer provider and tracer, or a no-op pair when telemetry is off."""

    def __init__(
        self, config: TelemetryConfig, extra_processors: Sequence[SpanProcessor] = ()
    ) -> None:
        self.config = config
        self.instance_id = uuid.uuid4().hex
        # of every span this process makes
        self.scope = InstrumentationScope(SCOPE_NAME, package_version(), SCHEMA_URL)
        self.provider: TracerProvider | None = None
        self._processors: list[SpanProcessor] = []
        if not config.enabled:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        self.provider = TracerProvider(
            resource=self._resource(), sampler=RecordDropped(_sampler(config))
        )
        exporter = _exporter(config)
        if exporter is not None:
            self._processors.append(BatchSpanProcessor(exporter))
        self._processors.extend(extra_processors)
        for processor in self._processors:
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer(
            self.scope.name, self.scope.version, self.scope.schema_url
        )

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def emit_finished(self, spans: Sequence[ReadableSpan]) -> None:
        """Hand spans built after the fact (``task_spans``), already ended, to the span
        processors, as ending them would."""
        for processor in self._processors:
            for span in spans:
                processor.on_end(span)

    def _resource(self) -> Resource:
        attributes: dict[str, str | int] = {
            key: urllib.parse.unquote(value)
            for key, value in parse_pairs(self.config.resource_attributes).items()
        }
        attributes["service.name"] = self.config.service_name
        attributes["service.instance.id"] = self.instance_id
        attributes.setdefault("service.version", package_version())
        attributes.setdefault("service.namespace", DEFAULT_NAMESPACE)
        attributes.setdefault("host.name", socket.gethostname())
        attributes["process.pid"] = os.getpid()
        # The SDK's resource (telemetry.sdk.*), then ours: this process's settings win over
        # what the SDK's detector reads from os.environ.
        return Resource.create(attributes, SCHEMA_URL)

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms) if self.provider is not None else True

    def shutdown(self, timeout_s: float | None = None) -> None:
        if self.provider is not None:
            if timeout_s is None:
                otlp = self.config.traces_exporter == "otlp"
                endpoint = (self.config.endpoint or "http://localhost:4317") if otlp else None
                timeout_s = shutdown_timeout_s(endpoint)
            bounded(self.provider.shutdown, timeout_s, "span export shutdown")


class RecordDropped(Sampler):
    """Wraps a sampler so spans it drops are still recorded (for EXPLAIN) but not exported."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        result = self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision == Decision.DROP:
            # A DROP result carries no attributes: the span's own must survive for EXPLAIN.
            return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"RecordDropped{{{self.inner.get_description()}}}"


def _sampler(config: TelemetryConfig) -> Sampler:
    name = config.sampler
    ratio = min(1.0, max(0.0, config.sampler_arg))
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    sampler = samplers.get(name)
    if sampler is None:
        log.warning(
            "OTEL_TRACES_SAMPLER=%s is not a known sampler (one of %s); using "
            "parentbased_always_on",
            name,
            ", ".join(SAMPLERS),
        )
        return ParentBased(ALWAYS_ON)
    return sampler


@cache
def package_version() -> str:
    """otel_dist's version as installed (``service.version``, the scope's version)."""
    try:
        return metadata.version("otel_dist")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _exporter(config: TelemetryConfig) -> SpanExporter | None:
    if config.traces_exporter == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    if config.traces_exporter != "otlp":
        return None
    quiet_export_errors()
    headers = _headers(config.headers)
    if config.protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter(endpoint=config.endpoint, headers=headers, timeout=config.timeout_s)
    # The SDK's OTLP/gRPC exporter with otel_dist's (equal but faster) span encoder.
    from otel_dist.telemetry.otlp_encode import GrpcSpanExporter

    endpoint = config.endpoint or "http://localhost:4317"
    insecure = not endpoint.startswith("https://")
    return GrpcSpanExporter(
        endpoint=endpoint, insecure=insecure, headers=headers, timeout=config.timeout_s
    )


def _headers(raw: str | None) -> dict[str, str] | None:
    return parse_pairs(raw) if raw else None


def parse_pairs(raw: str) -> dict[str, str]:
    """``key1=value1,key2=value2`` as the OTEL_* variables write it."""
    pairs = (item.partition("=") for item in raw.split(","))
    return {key.strip(): value.strip() for key, _, value in pairs if key.strip() and value}


def otel_number(raw: str, default: float) -> float:
    """A numeric ``OTEL_*`` value, or ``default`` when unset or not a number (as the SDK reads them)."""
    try:
        return float(raw) if raw else default
    except ValueError:
        return default
