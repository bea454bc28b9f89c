"""Logging set-up for every subcommand: human-readable by default, or JSON lines.

Every line carries its full timestamp, ISO 8601 with milliseconds and the UTC offset of the
host's local zone (`2026-12-01T22:40:01.123+08:00`), in both formats: a log read months later,
or on another machine, still says when each line happened.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime


def iso_time(created: float) -> str:
    """`created` (epoch seconds) as ISO 8601 in the local zone, with milliseconds and the offset."""
    return datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """`<ISO 8601 time> <LEVEL> <logger>: <message>`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return iso_time(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pymodbus logs every failed request at error level; our own code logs state
    # changes once, so its repeats are hidden unless debugging.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL if level != "debug" else logging.DEBUG)
