"""Process logging set-up: plain text, or JSON lines that log pipelines (Loki, Elasticsearch)
can join to traces through their ``trace_id`` and ``span_id`` fields."""

from __future__ import annotations

import json
import logging
import sys
import time

_EXTRA_FIELDS = ("query_id", "trace_id", "span_id", "duration_ms")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the trace fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _EXTRA_FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    log_format: str = "text", level: str = "WARNING", explain_level: int = logging.INFO
) -> None:
    """Root logging at ``level`` (a level name) on stderr; explain trees at ``explain_level``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("otel_dist.explain.log").setLevel(explain_level)
