"""Numbers for people, shared by the explain renderers.

* counts with thousands separators: ``1,250``
* durations from nanoseconds: ``850ns``, ``1.5µs``, ``22µs``, ``1.2ms``, ``22ms``, ``1.50s``
* sizes in powers of 1000, as the planner's notes write them: ``512 B``, ``1.5 kB``, ``3.2 MB``
* a metric in the unit its name implies: bytes when the name contains ``bytes``, a duration
  when it is ``*_time``, ``elapsed_*`` or ``time_*``, else a count
"""

from __future__ import annotations

from otel_dist.telemetry import conventions as c

_BYTE_UNITS = ("kB", "MB", "GB", "TB")
_DURATION_UNITS = (("µs", 1_000), ("ms", 1_000_000))


def format_number(value: int) -> str:
    return f"{value:,}"


def format_duration(ns: int | None) -> str:
    """A duration in the largest unit under 1,000 of it; ``?`` when unknown."""
    if ns is None:
        return "?"
    if abs(ns) < 1_000:
        return f"{ns}ns"
    for unit, scale in _DURATION_UNITS:
        value = ns / scale
        if abs(round(value, 1)) < 1_000:
            return f"{value:.1f}{unit}" if abs(value) < 9.95 else f"{value:.0f}{unit}"
    return f"{ns / 1_000_000_000:.2f}s"


def format_bytes(value: int) -> str:
    if abs(value) < 1000:
        return f"{value} B"
    scaled = float(value)
    for unit in _BYTE_UNITS:
        scaled /= 1000
        if abs(round(scaled, 1)) < 1000 or unit == _BYTE_UNITS[-1]:
            break
    return f"{scaled:.1f} {unit}"


def is_memory_metric(name: str) -> bool:
    """A DataFusion memory gauge (``build_mem_used``): bytes an operator held."""
    return name.endswith(c.MEMORY_GAUGE_SUFFIX)


def is_bytes_metric(name: str) -> bool:
    return "bytes" in name or is_memory_metric(name)


def is_time_metric(name: str) -> bool:
    return name.endswith("_time") or name.startswith(("elapsed_", "time_"))


def format_part(name: str) -> str:
    """A task time part for people: ``wait_stage_3`` -> ``wait stage 3``."""
    return name.replace("_", " ")


def format_share(part: int, whole: int | None) -> str:
    """``part`` as a whole percentage of ``whole``."""
    if not whole:
        return "?%"
    return f"{100 * part / whole:.0f}%"


def format_metric(name: str, value: int) -> str:
    """A metric value in the unit its name implies."""
    if is_bytes_metric(name):
        return format_bytes(value)
    if is_time_metric(name):
        return format_duration(value)
    return format_number(value)
