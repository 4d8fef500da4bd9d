"""A Prometheus ``/metrics`` endpoint for the OpenTelemetry metrics SDK, with exemplars.

``PrometheusReader`` is a pull ``MetricReader``: every scrape collects the SDK's cumulative
metrics and renders them with ``prometheus_client`` (the text format, or OpenMetrics when the
scraper asks for it, as Prometheus does). Names follow the OpenTelemetry-to-Prometheus
compatibility rules, as the Collector's Prometheus exporter applies them:

* dots and other invalid characters become ``_``; the unit becomes a suffix (``s`` ->
  ``_seconds``, ``By`` -> ``_bytes``, ``1`` -> ``_ratio`` on gauges only; ``{row}``-style
  annotations add nothing); monotonic sums become counters with ``_total``; non-monotonic sums
  and gauges become gauges; explicit-bucket histograms become histograms;
* attributes become labels (``otel_dist.stage.kind`` -> ``otel_dist_stage_kind``); the resource
  becomes one ``target_info`` series.

Why not ``opentelemetry-exporter-prometheus``: it does not emit exemplars. This reader attaches
each histogram bucket's latest exemplar (``trace_id``, ``span_id``) to the bucket, which the
OpenMetrics format carries and Prometheus stores with ``--enable-feature=exemplar-storage``; a
bucket keeps showing its latest exemplar until a newer one replaces it, as ``prometheus_client``'s
own histograms do (the SDK reports an exemplar only in the collection after its measurement).
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    MetricReader,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.metrics.export import Metric as OtelMetric
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.samples import Exemplar as PromExemplar
from prometheus_client.utils import floatToGoString

from otel_dist.http_auth import UNAUTHORIZED_BODY, WWW_AUTHENTICATE, bearer_allowed

log = logging.getLogger(__name__)

_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "%": "percent",
}
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
_ANNOTATION = re.compile(r"\{[^}]*\}")
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]+")
_CUMULATIVE = {
    kind: AggregationTemporality.CUMULATIVE
    for kind in (
        Counter,
        UpDownCounter,
        Histogram,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
    )
}


def metric_name(name: str) -> str:
    """An OpenTelemetry instrument name as a Prometheus metric name (without unit or _total)."""
    sanitized = _INVALID_NAME.sub("_", name).strip("_")
    sanitized = re.sub(r"__+", "_", sanitized)
    return f"_{sanitized}" if sanitized[:1].isdigit() else sanitized


def label_name(key: str) -> str:
    """An attribute key as a Prometheus label name."""
    sanitized = re.sub(r"__+", "_", _INVALID_LABEL.sub("_", key))
    return f"key_{sanitized}" if sanitized[:1].isdigit() else sanitized


def unit_suffix(unit: str, gauge: bool = False) -> str:
    """The Prometheus suffix of an OpenTelemetry (UCUM) unit: ``s`` -> ``seconds``..."""
    unit = _ANNOTATION.sub("", unit or "").strip()
    if unit == "1":
        return "ratio" if gauge else ""
    if unit in _UNITS:
        return _UNITS[unit]
    top, slash, bottom = unit.partition("/")
    if slash and bottom:
        top = _UNITS.get(top, metric_name(top)) if top else ""
        per = _PER_UNITS.get(bottom, metric_name(bottom))
        return f"{top}_per_{per}" if top else f"per_{per}"
    return metric_name(unit) if unit else ""


def prometheus_name(name: str, unit: str, kind: str) -> str:
    """The full Prometheus name of a metric: ``otel_dist.query.duration``, ``s``, histogram ->
    ``otel_dist_query_duration_seconds`` (counters also get ``_total``)."""
    base = metric_name(name)
    suffix = unit_suffix(unit, gauge=kind == "gauge")
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    return f"{base}_total" if kind == "counter" and not base.endswith("_total") else base


def _label_value(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(list(value) if isinstance(value, Sequence) else value, default=str)


@dataclass(frozen=True)
class _Point:
    labels: dict[str, str]
    value: float | None = None
    histogram: HistogramDataPoint | None = None


class PrometheusReader(MetricReader):
    """A pull reader rendering the SDK's metrics for Prometheus; ``serve`` starts ``/metrics``."""

    def __init__(self) -> None:
        super().__init__(preferred_temporality=_CUMULATIVE)  # type: ignore[arg-type]
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._latest: MetricsData | None = None
        self._exemplars: dict[tuple[str, tuple[str, ...], int], PromExemplar] = {}
        self._server: WSGIServer | None = None
        self.registry.register(_Collector(self))

    def serve(self, host: str, port: int, token: str | None = None) -> int:
        """Serve ``/metrics`` on ``host:port`` (0 chooses a free port); return the port. With
        ``token``, every request needs ``Authorization: Bearer <token>`` (else 401)."""
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("_MetricsServer", (_MetricsServer,), {"address_family": family})
        app = _guarded(make_wsgi_app(self.registry), token)
        server: WSGIServer = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        threading.Thread(
            target=server.serve_forever, args=(0.1,), name="prometheus-metrics", daemon=True
        ).start()
        self._server = server
        return int(server.server_port)

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._latest = metrics_data

    def families(self) -> list[Metric]:
        """Collect now and return Prometheus metric families (never raises)."""
        with self._lock:
            try:
                self.collect()
                data, self._latest = self._latest, None
                return list(self._translate(data)) if data is not None else []
            except Exception:
                log.warning("metrics could not be collected for Prometheus", exc_info=True)
                return []

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        server, self._server = self._server, None
        if server is not None:
            try:
                server.shutdown()
                server.server_close()
            except Exception:
                log.warning("the /metrics server did not stop cleanly", exc_info=True)

    # ---- translation ---------------------------------------------------------------------

    def _translate(self, data: MetricsData) -> Iterator[Metric]:
        info: dict[str, str] = {}
        for resource_metrics in data.resource_metrics:
            for key, value in resource_metrics.resource.attributes.items():
                info[label_name(key)] = _label_value(value)
        if info:
            yield InfoMetricFamily("target", "Target metadata", value=info)
        families: dict[str, Metric] = {}
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    family = self._family(metric)
                    if family is not None and family.name not in families:
                        families[family.name] = family
        yield from families.values()

    def _family(self, metric: OtelMetric) -> Metric | None:
        data = metric.data
        points = [
            _Point(
                {label_name(k): _label_value(v) for k, v in (p.attributes or {}).items()},
                None if isinstance(p, HistogramDataPoint) else float(p.value),  # type: ignore[union-attr]
                p if isinstance(p, HistogramDataPoint) else None,
            )
            for p in data.data_points
        ]
        label_names = sorted({name for point in points for name in point.labels})
        rows = [[point.labels.get(name, "") for name in label_names] for point in points]
        description = metric.description or metric.name
        if isinstance(data, Sum) and data.is_monotonic:
            name = prometheus_name(metric.name, metric.unit or "", "counter")
            counter = CounterMetricFamily(
                name, description, labels=label_names, unit=_unit(metric.unit, "counter")
            )
            for row, point in zip(rows, points, strict=True):
                counter.add_metric(row, point.value or 0.0)
            return counter
        if isinstance(data, (Sum, Gauge)):
            name = prometheus_name(metric.name, metric.unit or "", "gauge")
            gauge = GaugeMetricFamily(
                name, description, labels=label_names, unit=_unit(metric.unit, "gauge")
            )
            for row, point in zip(rows, points, strict=True):
                gauge.add_metric(row, point.value or 0.0)
            return gauge
        if isinstance(data, HistogramData):
            name = prometheus_name(metric.name, metric.unit or "", "histogram")
            histogram = HistogramMetricFamily(
                name, description, labels=label_names, unit=_unit(metric.unit, "histogram")
            )
            for row, point in zip(rows, points, strict=True):
                assert point.histogram is not None
                histogram.add_metric(
                    row, self._buckets(name, tuple(row), point.histogram), point.histogram.sum
                )
            return histogram
        log.debug("metric %s of type %s is not exposed to Prometheus", metric.name, type(data))
        return None

    def _buckets(
        self, name: str, row: tuple[str, ...], point: HistogramDataPoint
    ) -> list[tuple[str, float] | tuple[str, float, PromExemplar]]:
        bounds = list(point.explicit_bounds)
        for exemplar in getattr(point, "exemplars", None) or ():
            if exemplar.trace_id is None or exemplar.span_id is None:
                continue
            index = bisect.bisect_left(bounds, exemplar.value)
            self._exemplars[(name, row, index)] = PromExemplar(
                {
                    "trace_id": format(exemplar.trace_id, "032x"),
                    "span_id": format(exemplar.span_id, "016x"),
                },
                float(exemplar.value),
                exemplar.time_unix_nano / 1e9,
            )
        buckets: list[tuple[str, float] | tuple[str, float, PromExemplar]] = []
        total = 0
        for index, count in enumerate(point.bucket_counts):
            total += count
            bound = floatToGoString(bounds[index]) if index < len(bounds) else "+Inf"
            kept = self._exemplars.get((name, row, index))
            buckets.append((bound, float(total), kept) if kept else (bound, float(total)))
        return buckets


def _unit(unit: str | None, kind: str) -> str:
    """The OpenMetrics ``# UNIT`` of a metric: its name's unit suffix (``seconds``...), or
    none for units that add no suffix (``{row}``)."""
    return unit_suffix(unit or "", gauge=kind == "gauge")


def _guarded(app: Any, token: str | None) -> Any:
    """The WSGI app behind the bearer-token check (the app itself without a token)."""
    if token is None:
        return app

    def guarded(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if bearer_allowed(environ.get("HTTP_AUTHORIZATION"), token):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(UNAUTHORIZED_BODY))),
                ("WWW-Authenticate", WWW_AUTHENTICATE),
            ],
        )
        return [UNAUTHORIZED_BODY]

    return guarded


class _MetricsServer(ThreadingMixIn, WSGIServer):
    """The ``/metrics`` HTTP server: a thread per scrape, never blocking process exit."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _Collector:
    """The ``prometheus_client`` collector of a ``PrometheusReader``."""

    def __init__(self, reader: PrometheusReader) -> None:
        self.reader = reader

    def collect(self) -> Iterable[Metric]:
        return self.reader.families()

    def describe(self) -> Iterable[Metric]:
        return []
