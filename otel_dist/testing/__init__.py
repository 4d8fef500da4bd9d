"""Test and benchmark helpers for otel_dist (an in-process OTLP/gRPC receiver)."""
