"""Structured logs for the signaling server: one JSON object per line on stderr.

Log calls name an event and pass their fields through ``extra={"fields": {...}}``::

    log.info("room_created", extra={"fields": {"room": "482913", "peer": "3fa2c0d19e7b"}})

which prints ``{"ts":...,"level":"info","logger":"peerdesk.signaling","event":"room_created",
"room":"482913","peer":"3fa2c0d19e7b"}``. Relayed ``data`` is never logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_RESERVED = ("ts", "level", "logger", "event")


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON: ts, level, logger, event, then its fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                name = str(key)
                body[f"field_{name}" if name in _RESERVED else name] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, ensure_ascii=False, separators=(",", ":"))


def configure_logging(
    level: int | str = logging.INFO, *, stream: TextIO | None = None, force: bool = False
) -> None:
    """Send every log record to ``stream`` (stderr) as JSON lines.

    Does nothing when the root logger already has handlers, unless ``force`` is set,
    so that a program embedding the server keeps its own logging setup.
    """
    root = logging.getLogger()
    if root.handlers and not force:
        return
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    if force:
        for old in list(root.handlers):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
