"""otel_dist: distributed SQL over Arrow Flight with DataFusion, observable end to end.

``otel_dist.LocalCluster`` is loaded on first use, so ``import otel_dist`` (and every
``otel_dist.<module>`` import, which runs this file first) loads nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otel_dist.frontend.local import LocalCluster

__all__ = ["LocalCluster"]


def __getattr__(name: str) -> Any:
    if name == "LocalCluster":
        from otel_dist.frontend.local import LocalCluster

        return LocalCluster
    raise AttributeError(f"module 'otel_dist' has no attribute {name!r}")
