"""Logging for every `ledger` command: one JSON object per line, or plain text.

JSON lines carry `time` (UTC, ISO 8601), `level`, `logger`, `message`, whatever the
call passed as `extra` (the API's request lines: request_id, user, route, method,
status, latency_ms...), the fields of the `log_context` the record was logged in (the
request id of the request being served; `ContextFilter` copies them onto the record
when it is logged, so a handler that formats later, elsewhere, still has them), and
`exception` with the full traceback when there is one. Nothing but the standard
library and msgspec.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD: Final = frozenset(
    [*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime", "taskName"]
)
_CONTEXT: ContextVar[Mapping[str, Any] | None] = ContextVar("ledger_log_context", default=None)
_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` to every record logged (in this task) until the block ends."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current `log_context` onto each record (never over its own `extra`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_CONTEXT.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (name, value) for name, value in record.__dict__.items() if name not in _STANDARD
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(entry).decode()


def configure_logging(level: str, log_format: str) -> None:
    """Every logger of the process to stderr, as JSON lines or as text."""
    assert log_format in ("json", "text"), log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
