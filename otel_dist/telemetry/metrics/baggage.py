"""A stage's kind as W3C baggage next to its trace context, so workers can label task metrics by it."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from otel_dist.telemetry import conventions as c
from otel_dist.telemetry.metrics.names import UNKNOWN_KIND, bounded_label

log = logging.getLogger(__name__)


def add_stage_baggage(carrier: dict[str, str], stage_kind: str) -> None:
    """Add the stage kind to a stage's propagated context as W3C baggage."""
    context = baggage.set_baggage(c.STAGE_KIND, stage_kind)
    W3CBaggagePropagator().inject(carrier, context)


def stage_kind_of(carrier: Mapping[str, str]) -> str:
    """The stage kind a coordinator put in a task's context, or ``unknown``."""
    try:
        value = baggage.get_baggage(c.STAGE_KIND, W3CBaggagePropagator().extract(carrier))
    except Exception:
        return UNKNOWN_KIND
    return bounded_label(str(value)) if value else UNKNOWN_KIND
