"""A process's telemetry from one environment mapping: its spans and its metrics, started together."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from otel_dist.telemetry.metrics.config import MetricsConfig
from otel_dist.telemetry.metrics.provider import Metrics
from otel_dist.telemetry.setup import (
    Telemetry,
    TelemetryConfig,
)
from otel_dist.telemetry.span_export import instrumented_telemetry

log = logging.getLogger(__name__)


def start_process_telemetry(
    service_name: str,
    env: Mapping[str, str] | None = None,
    *,
    prometheus_port: int | None = None,
    prometheus_host: str | None = None,
    prometheus_token: str | None = None,
) -> tuple[Telemetry, Metrics]:
    """A process's spans and metrics from one environment mapping (default: ``os.environ``).
    ``prometheus_token``: the bearer token a ``/metrics`` endpoint, if served, requires.

    Spans are set up as ``Telemetry(TelemetryConfig.from_env(service_name, env))`` does, with
    the span exporter counted for the telemetry-health metrics; the metrics share the spans'
    resource (``service.name``, ``service.instance.id``...).
    """
    telemetry, stats = instrumented_telemetry(TelemetryConfig.from_env(service_name, env))
    config = MetricsConfig.from_env(
        env,
        prometheus_port=prometheus_port,
        prometheus_host=prometheus_host,
        prometheus_token=prometheus_token,
    )
    resource = telemetry.provider.resource if telemetry.provider is not None else None
    return telemetry, Metrics(config, resource, stats)
