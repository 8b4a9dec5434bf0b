"""JSON logs: the formatter every log line goes through, uvicorn's included."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per line; dict messages are merged in, anything else becomes "message"."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, dict):
            payload.update(record.msg)
        else:
            payload["message"] = record.getMessage()
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


def configure_json_logging(level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Route every logger (uvicorn's included, when it is started with log_config=None) through JSON."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would be a second, unstructured line per request.
    logging.getLogger("uvicorn.access").disabled = True
