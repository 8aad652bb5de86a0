"""Log lines: every line is an event name plus structured fields, printed as JSON (or
text) on stdout, with secret values redacted at the last moment (``_Redactor``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from bridge.secrets import Secrets


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(out, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.getMessage()} {fields}".rstrip()
        if record.exc_info and record.exc_info[0] is not None:
            line += f" error={record.exc_info[0].__name__}: {record.exc_info[1]}"
        return line


class _Redactor(logging.Formatter):
    """Last line of defence: no secret value ever leaves in a log line.

    It wraps the real formatter and reads ``secrets`` at each line, so a token registered
    after logging was set up is covered. Fields are scrubbed value by value first (so a
    JSON line stays valid JSON), then the whole line, which also covers the message and
    exception text; ``Secrets`` matches the JSON-escaped form of a value as well.
    """

    def __init__(self, inner: logging.Formatter, secrets: Secrets) -> None:
        super().__init__()
        self.inner, self.secrets = inner, secrets

    def format(self, record: logging.LogRecord) -> str:
        if not len(self.secrets):
            return self.inner.format(record)
        fields = getattr(record, "fields", None)
        if fields:
            record.fields = self._scrubbed(fields)
        return self.secrets.scrub(self.inner.format(record))

    def _scrubbed(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.secrets.scrub(value)
        if isinstance(value, dict):
            return {k: self._scrubbed(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrubbed(v) for v in value]
        if value is None or isinstance(value, int | float):
            return value
        text = str(value)  # what the formatters would print for it
        return self.secrets.scrub(text) if self.secrets.found_in(text) else value


def configure_logging(fmt: str, level: str, secrets: Secrets | Iterable[str] = ()) -> None:
    """Send every log line to stdout as JSON (or text), with secret values redacted.

    Pass the process's one ``Secrets`` so values added to it later are redacted too.
    """
    if not isinstance(secrets, Secrets):
        secrets = Secrets(secrets)
    handler = logging.StreamHandler(sys.stdout)
    inner = _JsonFormatter() if fmt == "json" else _TextFormatter()
    handler.setFormatter(_Redactor(inner, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # librdkafka and httpx are chatty at INFO; their problems surface through our own lines.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class EventLog:
    """A logger whose lines are an event name plus structured fields."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def debug(self, event: str, **fields: Any) -> None:
        self._log.debug(event, extra={"fields": fields})

    def info(self, event: str, **fields: Any) -> None:
        self._log.info(event, extra={"fields": fields})

    def warning(self, event: str, **fields: Any) -> None:
        self._log.warning(event, extra={"fields": fields})

    def error(self, event: str, **fields: Any) -> None:
        self._log.error(event, extra={"fields": fields})


class SlotField(logging.Filter):
    """Adds ``slot`` to every line while this replica holds one (installed on the root
    logger's handlers, so it sees the lines of every module)."""

    def __init__(self) -> None:
        super().__init__()
        self.slot: int | None = None
        self._handlers: list[logging.Handler] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.slot is not None:
            record.fields = {**getattr(record, "fields", {}), "slot": self.slot}
        return True

    def install(self) -> None:
        self._handlers = list(logging.getLogger().handlers)
        for handler in self._handlers:
            handler.addFilter(self)

    def remove(self) -> None:
        for handler in self._handlers:
            handler.removeFilter(self)
        self._handlers = []
