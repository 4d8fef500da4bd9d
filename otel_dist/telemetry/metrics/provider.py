"""A process's meter provider and the instruments every process has (memory, span export health); hands out the coordinator's and the workers' recorders."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from opentelemetry.metrics import Meter, NoOpMeter, Observation
from opentelemetry.sdk.metrics import (
    MeterProvider,
)
from opentelemetry.sdk.metrics.export import (
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from otel_dist.telemetry.metrics.config import (
    MetricsConfig,
    exemplar_filter,
    metric_exporter,
    url_host,
)
from otel_dist.telemetry.metrics.coordinator import CoordinatorMetrics
from otel_dist.telemetry.metrics.instruments import guarded, resident_bytes
from otel_dist.telemetry.metrics.names import (
    EXPORT_RESULT,
    PROCESS_MEMORY_USAGE,
    SPANS_DROPPED,
    SPANS_EXPORTED,
    SPANS_SUBMITTED,
)
from otel_dist.telemetry.metrics.worker import WorkerMetrics, WorkerObservers
from otel_dist.telemetry.setup import (
    bounded,
    quiet_export_errors,
    shutdown_timeout_s,
)
from otel_dist.telemetry.span_export import SpanExportStats

log = logging.getLogger(__name__)


class Metrics:
    """A process's meter provider with its readers, or a no-op meter when metrics are off."""

    def __init__(
        self,
        config: MetricsConfig,
        resource: Resource | None = None,
        span_stats: SpanExportStats | None = None,
    ) -> None:
        self.config = config
        self.span_stats = span_stats  # the process's span export counters, if spans export
        self.provider: MeterProvider | None = None
        self.prometheus_url: str | None = None
        self.meter: Meter = NoOpMeter("otel_dist")
        if not config.enabled:
            return
        readers: list[MetricReader] = []
        for name in config.exporters:
            if name == "prometheus":
                continue
            quiet_export_errors()
            try:
                readers.append(
                    PeriodicExportingMetricReader(
                        metric_exporter(name, config),
                        export_interval_millis=config.export_interval_ms,
                        export_timeout_millis=config.export_timeout_ms,
                    )
                )
            except Exception:
                log.warning("metrics exporter %s could not be created", name, exc_info=True)
        prometheus = None
        if "prometheus" in config.exporters:
            from otel_dist.telemetry.prometheus import PrometheusReader

            prometheus = PrometheusReader()
            readers.append(prometheus)
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=resource or Resource.create({"service.name": "otel-dist"}),
            exemplar_filter=exemplar_filter(config.exemplar_filter),
            shutdown_on_exit=False,
        )
        self.meter = self.provider.get_meter("otel_dist")
        if prometheus is not None:
            try:
                port = prometheus.serve(
                    config.prometheus_host, config.prometheus_port, config.prometheus_token
                )
                self.prometheus_url = f"http://{url_host(config.prometheus_host)}:{port}/metrics"
            except OSError as error:
                log.warning(
                    "Prometheus /metrics not served on %s:%s: %s",
                    config.prometheus_host,
                    config.prometheus_port,
                    error,
                )
        self._process_instruments(span_stats)

    @staticmethod
    def off() -> Metrics:
        return Metrics(MetricsConfig())

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def coordinator(self, active_queries: Callable[[], int]) -> CoordinatorMetrics:
        return CoordinatorMetrics(self.meter, self.enabled, active_queries)

    def worker(self, observers: WorkerObservers) -> WorkerMetrics:
        return WorkerMetrics(self.meter, self.enabled, observers)

    def flush(self, timeout_ms: int = 5000) -> bool:
        if self.provider is None:
            return True
        try:
            return self.provider.force_flush(timeout_ms)
        except Exception:
            log.warning("metrics flush failed", exc_info=True)
            return False

    def shutdown(self, timeout_s: float | None = None) -> None:
        provider, self.provider = self.provider, None
        if provider is not None:
            if timeout_s is None:  # short when the collector is down (telemetry/setup.py)
                otlp = "otlp" in self.config.exporters
                endpoint = (self.config.endpoint or "http://localhost:4317") if otlp else None
                timeout_s = shutdown_timeout_s(endpoint)
            bounded(provider.shutdown, timeout_s, "metrics shutdown")

    def _process_instruments(self, span_stats: SpanExportStats | None) -> None:
        self.meter.create_observable_up_down_counter(
            PROCESS_MEMORY_USAGE,
            [guarded(lambda: [Observation(resident_bytes())])],
            "By",
            "Resident set size of the process",
        )
        if span_stats is None:
            return

        def stat(name: str, attributes: Mapping[str, str] | None = None) -> Callable[[], list]:
            return lambda: [Observation(span_stats.snapshot()[name], attributes)]

        self.meter.create_observable_counter(
            SPANS_SUBMITTED,
            [guarded(stat("submitted"))],
            "{span}",
            "Sampled spans handed to the batch span processor for export",
        )
        self.meter.create_observable_counter(
            SPANS_EXPORTED,
            [
                guarded(stat("exported", {EXPORT_RESULT: "success"})),
                guarded(stat("failed", {EXPORT_RESULT: "failure"})),
            ],
            "{span}",
            "Spans the exporter sent (success) or failed to send (failure)",
        )
        self.meter.create_observable_counter(
            SPANS_DROPPED,
            [guarded(stat("dropped"))],
            "{span}",
            "Spans dropped because the batch span processor's queue was full",
        )
