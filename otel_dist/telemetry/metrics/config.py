"""Metrics settings, read once from the environment (``OTEL_METRICS_*`` and friends), and the exporters and exemplar filter they select."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
)

from otel_dist.telemetry.metrics.names import EXPORTERS
from otel_dist.telemetry.setup import (
    TelemetryConfig,
    otel_number,
    parse_pairs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricsConfig:
    """What one process does with its metrics."""

    enabled: bool = False
    exporters: tuple[str, ...] = ()
    protocol: str = "grpc"
    endpoint: str | None = None
    headers: str | None = None
    timeout_s: float = 10.0
    export_interval_ms: int = 60_000
    export_timeout_ms: int = 30_000
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = 9464
    exemplar_filter: str = "trace_based"
    prometheus_token: str | None = field(default=None, repr=False)  # /metrics needs it if set

    @staticmethod
    def from_env(
        env: Mapping[str, str] | None = None,
        *,
        prometheus_port: int | None = None,
        prometheus_host: str | None = None,
        prometheus_token: str | None = None,
    ) -> MetricsConfig:
        """Read the ``OTEL_*`` variables; an explicit ``prometheus_port`` adds ``prometheus``;
        ``prometheus_token`` is the bearer token ``/metrics`` requires (None: none)."""
        env = os.environ if env is None else env

        def get(*names: str, default: str = "") -> str:
            return next((env[n] for n in names if env.get(n)), default)

        if not TelemetryConfig.from_env("otel-dist", env).enabled:
            return MetricsConfig()
        endpoint = get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT") or None
        protocol = get(
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL", default="grpc"
        ).lower()
        if (
            endpoint
            and protocol.startswith("http")
            and not get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        ):
            endpoint = endpoint.rstrip("/") + "/v1/metrics"
        raw = get("OTEL_METRICS_EXPORTER", default="otlp" if endpoint else "none")
        exporters: list[str] = []
        for name in (part.strip().lower() for part in raw.split(",")):
            if name in EXPORTERS and name not in exporters:
                exporters.append(name)
            elif name and name != "none":
                log.warning("OTEL_METRICS_EXPORTER: unknown exporter %r ignored", name)
        if prometheus_port is not None and "prometheus" not in exporters:
            exporters.append("prometheus")
        port = prometheus_port
        if port is None:
            port = int(otel_number(get("OTEL_EXPORTER_PROMETHEUS_PORT"), 9464))
        return MetricsConfig(
            enabled=bool(exporters),
            exporters=tuple(exporters),
            protocol=protocol,
            endpoint=endpoint,
            headers=get("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") or None,
            timeout_s=otel_number(
                get("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), 10_000
            )
            / 1000,
            export_interval_ms=int(otel_number(get("OTEL_METRIC_EXPORT_INTERVAL"), 60_000)),
            export_timeout_ms=int(otel_number(get("OTEL_METRIC_EXPORT_TIMEOUT"), 30_000)),
            prometheus_host=get("OTEL_EXPORTER_PROMETHEUS_HOST") or prometheus_host or "127.0.0.1",
            prometheus_port=port,
            exemplar_filter=get("OTEL_METRICS_EXEMPLAR_FILTER", default="trace_based").lower(),
            prometheus_token=prometheus_token,
        )


def metric_exporter(name: str, config: MetricsConfig) -> MetricExporter:
    if name == "console":
        return ConsoleMetricExporter(out=sys.stderr)
    headers = parse_pairs(config.headers) if config.headers else None
    if config.protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        return HttpMetricExporter(
            endpoint=config.endpoint, headers=headers, timeout=config.timeout_s
        )
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    endpoint = config.endpoint or "http://localhost:4317"
    return OTLPMetricExporter(
        endpoint=endpoint,
        insecure=not endpoint.startswith("https://"),
        headers=headers,
        timeout=config.timeout_s,
    )


def exemplar_filter(
    name: str,
) -> TraceBasedExemplarFilter | AlwaysOnExemplarFilter | AlwaysOffExemplarFilter:
    if name == "always_on":
        return AlwaysOnExemplarFilter()
    if name == "always_off":
        return AlwaysOffExemplarFilter()
    return TraceBasedExemplarFilter()


def url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1" if host != "::" else "[::1]"
    return f"[{host}]" if ":" in host else host
