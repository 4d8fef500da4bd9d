"""A stage's kind as W3C baggage next to its trace context, so workers can label task metrics by it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache

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
    return _stage_kind(carrier.get(_HEADER))


_HEADER = "baggage"


@lru_cache(maxsize=256)
def _stage_kind(header: str | None) -> str:
    # Every task of a stage, and of every query's stage of the same kind, carries the same
    # header: parsing it once each is a good part of a small task's metrics time.
    if header is None:
        return UNKNOWN_KIND
    try:
        value = baggage.get_baggage(c.STAGE_KIND, W3CBaggagePropagator().extract({_HEADER: header}))
    except Exception:
        return UNKNOWN_KIND
    return bounded_label(str(value)) if value else UNKNOWN_KIND
