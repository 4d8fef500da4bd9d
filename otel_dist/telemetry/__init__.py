"""OpenTelemetry for otel_dist: span conventions, set-up from OTEL_* variables, task spans,
the in-band telemetry envelope, per-query span collection and the worker telemetry cache."""
