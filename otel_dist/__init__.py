"""otel_dist: distributed SQL over Arrow Flight with DataFusion, observable end to end."""

from otel_dist.coordinator.local import LocalCluster

__all__ = ["LocalCluster"]
