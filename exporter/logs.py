"""Log setup: ``logfmt`` or ``json`` lines on stderr, with secrets scrubbed from every record;
and :class:`FailureLog`, which turns the outcomes of polls into a few lines worth reading.

ts=2026-11-28T08:00:00.123Z level=warning logger=exporter.poller msg="poll failed ..."
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Final, TextIO

from exporter.errors import ApiError

if TYPE_CHECKING:
    from exporter.model import MeetingKey

#: ``--log.level`` values: ``warn`` is how node_exporter (promslog) spells ``warning``.
LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS: Final = ("logfmt", "json")
REDACTED: Final = "<redacted>"
#: How often a line sums up the repeated failures that were not logged one by one.
SUPPRESSED_LOG_SECONDS: Final = 60.0


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
    if record.exc_info:  # the text the redacting filter cleaned, when it did
        fields["exc"] = record.exc_text or formatter.formatException(record.exc_info)
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


#: Personal ids inside request URLs that libraries log at debug level: a peer report's path.
_PERSONAL: Final = re.compile(r"(/peer-report/)[^/?\s\"'&]+")


class RedactingFilter(logging.Filter):
    """Replaces every occurrence of a secret in a record's final message with ``<redacted>``,
    and the peer id of a peer report's URL with ``<peer>``.

    Attached to the handler, so it covers every library's records (httpx, httpcore, apscheduler).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = {s for s in secrets if s}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        text = _PERSONAL.sub(r"\1<peer>", message) if "/peer-report/" in message else message
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
    root.setLevel(LEVELS[level])
    # Libraries are chatty (a line per request or job run, a warning per skipped job run that the
    # poller already counts): show them only when debugging.
    quiet = logging.DEBUG if level == "debug" else logging.ERROR
    for name in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(name).setLevel(quiet)
    threading.excepthook = _log_thread_exception  # no bare traceback on stderr, ever
    return handler


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception nobody caught in a thread: one record, through the format and redaction."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("exporter").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def where(key: MeetingKey) -> str:
    """A meeting's ids as they appear in log lines."""
    return f"account_id={key.account_id} app_id={key.app_id} meeting_id={key.meeting_id}"


class FailureLog:
    """One line when a meeting (or an app's discovery) starts failing or changes failure
    reason, one when it recovers. Repeated identical failures go to debug so that a dead API
    cannot flood the log; at most once a minute one line says how many were held back.

    A failure of the token's own (an :class:`ApiError` naming its ``token``: rejected, or its
    budget paused) is one line per token and reason, however many meetings use the token, and
    its end one line when the first of them gets an answer again; the meetings' own lines of it
    go to debug and into the summary."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = logger or logging.getLogger("exporter.poller")
        self._clock = clock
        self._down: dict[Hashable, str] = {}  # what failed last time: its reason
        self._suppressed: Counter[Hashable] = Counter()  # repeated failures not logged, by key
        self._suppressed_since = clock()
        self._token_down: set[tuple[str, str]] = set()  # (token, reason) failing now
        self._by_token: dict[Hashable, tuple[str, str]] = {}  # key -> its token failure

    def outcome(self, key: Hashable, where: str, outcome: object) -> None:
        """Log what one poll's ``outcome`` (an answer, an ApiError, or None: not the API's
        fault, already logged) changes for ``key``."""
        if isinstance(outcome, ApiError):
            status = "" if outcome.status is None else f" status={outcome.status}"
            line = f"poll failed {where} reason={outcome.reason}{status}: {outcome}"
            token = None if outcome.token is None else (outcome.token, outcome.reason)
            if token is not None and token not in self._token_down:
                self._token_down.add(token)
                self._log.warning(
                    "poll failed with token %s reason=%s%s: %s (first: %s); every poll with "
                    "this token fails alike until it recovers: one line here, the rest at debug",
                    outcome.token, outcome.reason, status, outcome, where,
                )  # fmt: skip
                self._down[key] = outcome.reason
            elif self._down.get(key) != outcome.reason and token is None:
                self._down[key] = outcome.reason
                self._log.warning(line)
            else:
                self._down[key] = outcome.reason
                self._log.debug(line)
                self._suppressed[key] += 1
            self._mark_token(key, token)
        elif outcome is not None and key in self._down:
            del self._down[key]
            repeats = self._suppressed.pop(key, 0)
            token = self._by_token.pop(key, None)
            if token is None:
                self._log.info("poll recovered %s after %d more failed poll(s)", where, repeats)
            else:
                self._token_recovered(token, where, repeats)
        self._summarize()

    def _mark_token(self, key: Hashable, token: tuple[str, str] | None) -> None:
        if token is not None:
            self._by_token[key] = token
        else:
            self._by_token.pop(key, None)

    def _token_recovered(self, token: tuple[str, str], where: str, repeats: int) -> None:
        line = "poll recovered %s after %d more failed poll(s)"
        if token in self._token_down:  # the first meeting of the token to get an answer again
            self._token_down.discard(token)
            self._log.info("polls with token %s work again (were failing with reason=%s)", *token)
        self._log.debug(line, where, repeats)

    def recovered(self, keys: Iterable[MeetingKey]) -> None:
        """Many meetings got a valid answer at once (a discovery listing): only those that were
        failing cost more than a lookup."""
        down = self._down
        for key in keys:
            if key in down:
                self.outcome(key, where(key), True)

    def keep_only(self, keep: Callable[[Hashable], bool]) -> None:
        """Forget what is not polled any more (a reload removed it)."""
        self._down = {k: v for k, v in self._down.items() if keep(k)}
        self._by_token = {k: v for k, v in self._by_token.items() if keep(k)}
        self._token_down &= set(self._by_token.values())

    def _summarize(self) -> None:
        now = self._clock()
        if self._suppressed and now - self._suppressed_since >= SUPPRESSED_LOG_SECONDS:
            self._log.warning(
                "%d repeated poll failure(s) of %d meeting(s)/app(s) not logged in the last %.0fs "
                "(each first failure was; --log.level debug shows all)",
                sum(self._suppressed.values()), len(self._suppressed), now - self._suppressed_since,
            )  # fmt: skip
            self._suppressed.clear()
            self._suppressed_since = now
        elif not self._suppressed:
            self._suppressed_since = now


class RepeatLog:
    """Events that can come in floods (failed TLS handshakes, bad requests): the first of each
    kind is logged at ``level``; its repeats within ``every`` seconds of the first event go to
    debug and are counted, and one line sums them up when that window is over. Then the next
    event of each kind is logged again, and a new window starts::

        events = RepeatLog(logging.getLogger("exporter.server"), what="connection problem(s)")
        events.note("TLS handshake failed (WRONG_VERSION_NUMBER)", "TLS handshake with %s "
                    "failed: %s", peer, err)
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        what: str,
        level: int = logging.INFO,
        every: float = SUPPRESSED_LOG_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._level = level
        self._every = every
        self._clock = clock
        self._repeats: Counter[str] = Counter()  # kinds seen in this window: repeats not logged
        self._since = clock()  # when the window began: at its first event

    def note(self, kind: str, msg: str, *args: object) -> None:
        """One event of ``kind``; ``msg % args`` is its line."""
        self.flush()
        if not self._repeats:
            self._since = self._clock()
        if kind in self._repeats:
            self._repeats[kind] += 1
            self._log.debug(msg, *args)
        else:
            self._repeats[kind] = 0
            self._log.log(self._level, msg, *args)

    def flush(self) -> None:
        """Sum up the repeats once the window is over (call it now and then, or it waits for the
        next event)."""
        now = self._clock()
        if not self._repeats or now - self._since < self._every:
            return
        repeated = sorted((kind, n) for kind, n in self._repeats.items() if n)
        if repeated:
            self._log.log(
                self._level,
                "%d more %s in the last %.0fs, not logged one by one (--log.level debug shows "
                "all): %s",
                sum(n for _, n in repeated), self._what, now - self._since,
                ", ".join(f"{kind} x{n}" for kind, n in repeated),
            )  # fmt: skip
        self._repeats.clear()
        self._since = now
