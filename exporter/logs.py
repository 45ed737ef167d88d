"""Log setup: ``logfmt`` or ``json`` lines on stderr, with secrets scrubbed from every record.

ts=2026-11-28T08:00:00.123Z level=warning logger=exporter.poller msg="poll failed ..."
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Final, TextIO

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("logfmt", "json")
REDACTED: Final = "<redacted>"


def _timestamp(record: logging.LogRecord) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{whole}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, str]:
    fields = {
        "ts": _timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    return fields


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record, self).items():
            if value and all(c.isalnum() or c in "-_.:/=+" for c in value) and "=" not in value:
                parts.append(f"{key}={value}")
            else:
                escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                parts.append(f'{key}="{escaped}"')
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self), ensure_ascii=False)


class RedactingFilter(logging.Filter):
    """Replaces every occurrence of a secret in a record's final message with ``<redacted>``.

    Attached to the handler, so it covers every library's records (httpx, httpcore, apscheduler).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = {s for s in secrets if s}

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        text = message
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, REDACTED)
        if text != message:
            record.msg, record.args = text, None
        return True


def setup_logging(
    level: str, fmt: str, *, stream: TextIO | None = None, redact: RedactingFilter | None = None
) -> logging.Handler:
    """Configure the root logger once; returns the handler (its filter can learn new secrets)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(redact or RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries are chatty (a line per request or job run, a warning per skipped job run that the
    # poller already counts): show them only when debugging.
    quiet = logging.DEBUG if level == "debug" else logging.ERROR
    for name in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(name).setLevel(quiet)
    return handler
