"""An in-process imitation of the Cloudflare RealtimeKit (formerly Dyte) REST API.

The simulator is a real HTTP server (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive) that
serves, under ``/client/v4``, the two read endpoints the exporter relies on:

* ``GET /accounts/{account}/realtime/kit/{app}/meetings/{meeting}/active-session`` - the meeting's
  current session in RealtimeKit's ``{"success": true, "data": {...}}`` envelope, or the RealtimeKit
  404 ``{"success": false, "error": {...}}`` when nobody is in the meeting;
* ``GET /accounts/{account}/realtime/kit/{app}/sessions`` - the current sessions of the app's
  meetings, sorted by creation time, filtered by ``status``, ``associated_id`` and ``search`` and
  paged with ``page_no`` and ``per_page`` (default 20, at least 1). ``paging`` carries
  ``total_count`` and the 1-based ``start_offset``/``end_offset`` of the page within the result;
  an empty page (nothing matches, or a page past the end) has ``start_offset = end_offset = 0``.
  Only each meeting's *current* session is known (LIVE, or ENDED until it is cleared): no history.
  The sorted listing is kept per app and updated as sessions come and go, so a page costs the page
  (100,000 LIVE sessions: ``add_app(account, app, 100_000, live=True)`` with ``auto=False``, or
  ``Simulator(meetings=100_000, live=True, auto=False)``; about 1 s to make, 2-3 ms a page).

API conventions the published spec leaves open are options (``Simulator(...)`` keyword and flag of
``python -m exporter.simulator``), so the simulator can disagree with the exporter:

=====================  ==================  =====================================================
option                 default             meaning
=====================  ==================  =====================================================
``page_base``          1                   number of the first page: with 1, page_no 0 is read as
                                           1; with 0, page_no 1 is the *second* page
``per_page_cap``       100                 at most this many items per page, whatever is asked
``paging``             ``"full"``          ``"full"``; ``"partial"``: ``paging`` without the
                                           fields in ``paging_drop`` (default ``total_count``);
                                           ``"absent"``: no ``paging`` object at all
``unknown_meeting``    ``"no_session"``    a meeting id the app does not have answers like an idle
                                           meeting (404 "No active session found for
                                           meeting_id …"); ``"not_found"``: 404 "Meeting not
                                           found" in the same RealtimeKit envelope
``churn_per_page``     0                   after each ``/sessions`` page is built, this many of
                                           the app's LIVE sessions end (and are cleared) and as
                                           many new meetings go LIVE (seeded by ``seed``)
``on_page``            None                called with a ``PageServed`` after each page is built,
                                           before it is sent (no lock held: it may call controls)
=====================  ==================  =====================================================

Errors produced by "Cloudflare's edge" (bad token, rate limit, unknown route or account/app) use
Cloudflare's ``{"success": false, "errors": [...], "messages": [], "result": null}`` shape. With
``rate_limit=(N, W)`` every token gets fixed windows of W seconds starting at its first request;
past N requests the rest of the window answers 429 with ``Retry-After``. ``Ratelimit`` and
``Ratelimit-Policy`` headers are sent on every authenticated answer.

With ``auto=True`` each meeting cycles, in simulated seconds (elapsed clock seconds x ``speed``):
idle (404) for 20-120 s, a LIVE session for 2-10 min whose participant count random-walks between
1 and 12 every 5-15 s, then ENDED (live 0) for about 60 s, then idle again. State is advanced
lazily, from the clock, when a meeting is touched or its next change falls due (a heap of due
times); there is no ticking thread, so a fake ``clock`` makes everything deterministic (and a
``seed`` makes it reproducible). About half of the meetings start LIVE. ``minutes_consumed``
integrates ``live_participants`` over simulated time.

Faults (``FaultConfig`` probabilities, or a forced fault per meeting with ``set_fault`` or per
app's listing with ``set_listing_fault``) imitate what a client meets in the wild - ``FAULT_KINDS``:

* ``500``, ``503`` (502/503 HTML page), ``401``, ``429`` (``Retry-After: 5``), ``timeout`` (the
  answer waits ``slow_seconds``), ``reset`` (RST, no answer), ``non_json``, ``wrong_types``;
* hostile answers: ``trickle`` (a valid body, one byte per ``trickle_seconds``), ``endless`` (a
  chunked body that never ends: a few bytes every ``trickle_seconds`` until ``stop()``),
  ``huge_header`` (an 80 KiB ``Ratelimit`` value), ``gzip_bomb`` (``Content-Encoding: gzip``, 1 GiB
  of zeros in ~1 MB, streamed), ``deep_json`` (``meta`` nested 10,000 deep), ``huge_int``
  (``live_participants`` = 10**400), ``long_name`` (a 900 KiB ``meeting_display_name``),
  ``lone_surrogate`` (``meeting_display_name`` ``"Weekly \\ud83d sync"``, half an emoji),
  ``unknown_status`` (``status`` "PAUSED"), ``retry_after_huge`` (429, ``Retry-After:
  1000000000``) and ``not_found`` (404 "Meeting not found"; meetings only). On a listing the
  field faults change the page's first session. ``stop()`` ends streaming answers at once.

Webhooks (``webhook_url``, ``--webhook-url``): the simulator signs RealtimeKit's camelCase events
with its RSA key (``webhook_key``, ``--webhook-key-file``; by default a new 2048-bit key) and POSTs
them to the URL, where ``{account_id}`` and ``{app_id}`` are replaced by the meeting's app. Its
public key is at ``GET /.well-known/webhooks.json`` (no token), whenever it has a key. Events:

* a session starts (auto mode, ``set_participants`` on an idle or ENDED meeting, a live
  ``add_app``, churn): ``meeting.started``, then one ``meeting.participantJoined`` per participant;
* the live count goes up or down by k: k ``participantJoined`` or k ``participantLeft`` (made-up
  peer ids; the latest to join leaves first). ``set_participants(id, 0)`` keeps the session LIVE;
* a session ends: a ``participantLeft`` for everyone still there, then ``meeting.ended`` with
  ``reason`` ``HOST_ENDED_MEETING`` (``end_session``, ``clear_session`` of a LIVE session) or
  ``ALL_PARTICIPANTS_LEFT`` (auto mode, churn).

The constructor's own meetings send nothing for the sessions they start with. Headers:
``rtk-signature``, ``rtk-uuid`` (one per delivery, kept on its retries), ``rtk-webhook-id`` (one per
simulator: ``webhook_id``). One thread delivers, in order, from a queue of ``webhook_queue_size``
(10,000) events; a full queue drops the event. A 5xx or a network error is retried
``webhook_retries`` (3) times after ``webhook_retry_delays`` (0.2, 0.5, 1 s); other statuses are
final; each POST has ``webhook_timeout`` (2 s). Counts: ``webhook_stats()`` and ``"webhooks"`` in
``GET /_sim/stats``. In auto mode that thread also advances every meeting every 0.2 s, so events
go out while nobody polls. Without ``webhook_url`` there is no thread and nothing changes.

Control endpoints (``POST /_sim/meetings/{id}``, ``POST /_sim/apps/{account}/{app}``,
``GET /_sim/stats``) and ``GET /-/healthy`` need no token. Run standalone with
``python -m exporter.simulator --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import heapq
import hmac
import itertools
import json
import math
import os
import random
import signal
import socket
import socketserver
import struct
import sys
import textwrap
import threading
import time
import uuid
import zlib
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from exporter.webhooks import sign, well_known_body

__all__ = ["FAULT_KINDS", "WEBHOOK_RETRY_DELAYS", "FaultConfig", "PageServed", "Simulator", "main"]

DEFAULT_ACCOUNT_ID = "023e105f4ecef8ad9ca31a8372d0c353"
DEFAULT_APP_ID = "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"
DEMO_TOKEN = "demo-token"
FAULT_KINDS = frozenset(
    {"500", "503", "timeout", "reset", "non_json", "wrong_types", "401", "429"}
    | {"trickle", "endless", "huge_header", "gzip_bomb", "deep_json", "huge_int", "long_name"}
    | {"unknown_status", "retry_after_huge", "not_found", "lone_surrogate"}
)
_MEETING_ONLY_FAULTS = frozenset({"not_found"})
PAGING_MODES = ("full", "partial", "absent")
PAGING_FIELDS = ("total_count", "start_offset", "end_offset")
UNKNOWN_MEETING_MODES = ("no_session", "not_found")
_TOPICS = (
    "Weekly sync",
    "Design review",
    'Café "Zürich" stand-up',
    "Sprint planning",
    "Ops \\ on-call handover",
    "Customer demo",
    "All hands",
    "Retro",
    "Interviews",
    "1:1 catch-up",
)
_JSON = "application/json; charset=utf-8"
_HTML = "text/html; charset=utf-8"
_IDLE, _LIVE, _ENDED = 0, 1, 2
_LOG_SIZE = 100_000
_HUGE_HEADER_BYTES = 80 * 1024
_LONG_NAME_BYTES = 900 * 1024
_DEEP_JSON_DEPTH = 10_000
_DEEP_MARK = "\x00deep-json\x00"  # stands in for the nesting until the body is serialised
_BOMB_UNIT, _BOMB_UNITS = 1 << 20, 1024  # 1 GiB of zeros
_Key = tuple[float, str, str]  # (session created, session id, meeting id): listing order
WELL_KNOWN_PATH = "/.well-known/webhooks.json"
WEBHOOK_RETRY_DELAYS = (0.2, 0.5, 1.0)  # seconds before the 1st, 2nd, 3rd (and later) retry
_HOST_ENDED, _ALL_LEFT = "HOST_ENDED_MEETING", "ALL_PARTICIPANTS_LEFT"
_TICK_SECONDS = 0.2  # auto mode with webhooks: meetings are advanced this often
_Peer = tuple[str, float]  # (peer id, clock time joined)


@dataclass
class FaultConfig:
    """Per-request fault probabilities (0..1) for the active-session and /sessions endpoints."""

    error_500: float = 0.0
    error_503: float = 0.0  # answers 502 or 503 (picked at random) with an HTML body
    timeout: float = 0.0  # sleeps `slow_seconds`, then answers normally
    reset: float = 0.0  # closes the connection abruptly (RST), no answer
    non_json: float = 0.0  # 200 text/html "<html>oops</html>"
    wrong_types: float = 0.0  # 200 with live_participants a string and id a number
    latency_seconds: float = 0.0  # added to every API answer
    slow_seconds: float = 30.0
    trickle_seconds: float = 1.0  # pace of `trickle` (per byte) and `endless` (per chunk) answers

    def __post_init__(self) -> None:
        for name in ("error_500", "error_503", "timeout", "reset", "non_json", "wrong_types"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultConfig.{name} must be within 0..1, got {value!r}")
        if self.latency_seconds < 0 or self.slow_seconds < 0:
            raise ValueError("FaultConfig latency_seconds and slow_seconds must be >= 0")
        if not self.trickle_seconds > 0:
            raise ValueError(
                f"FaultConfig.trickle_seconds must be > 0, got {self.trickle_seconds!r}"
            )


@dataclass(frozen=True, slots=True)
class PageServed:
    """What ``on_page`` hears about a ``/sessions`` page just built (and not yet sent)."""

    account_id: str
    app_id: str
    page_no: int  # as asked (the page base when not given)
    per_page: int  # items per page in force (after the cap)
    served: int  # sessions on this page
    total_count: int  # sessions matching when the page was built


@dataclass(slots=True)
class _Session:
    id: str
    created: float  # clock (epoch) times
    updated: float
    live: int
    peak: int
    minutes: float = 0.0
    ended: float | None = None


@dataclass(slots=True, eq=False)
class _Meeting:
    id: str
    name: str
    app: tuple[str, str]
    rng: random.Random | None = None  # made on first use (Simulator._rng): ~3 KB each
    session: _Session | None = None
    phase: int = _IDLE
    phase_until: float = math.inf  # simulated seconds
    next_change: float = math.inf
    last: float = 0.0  # simulated time up to which minutes are integrated
    due: float = math.inf  # the time queued for it in Simulator._events
    fault: str | None = None

    def key(self) -> _Key:
        s = cast(_Session, self.session)
        return (s.created, s.id, self.id)


class _SortedKeys:
    """Listing keys kept sorted; additions wait in a batch that is merged on the next read."""

    __slots__ = ("_items", "_pending")

    def __init__(self) -> None:
        self._items: list[_Key] = []
        self._pending: list[_Key] = []

    def add(self, key: _Key) -> None:
        self._pending.append(key)

    def remove(self, key: _Key) -> None:
        items = self.items()
        i = bisect_left(items, key)
        if i < len(items) and items[i] == key:
            del items[i]

    def items(self) -> list[_Key]:
        """The sorted keys (the live list: callers must not change it)."""
        if self._pending:
            if len(self._pending) < 64:
                for key in self._pending:
                    insort(self._items, key)
            else:
                self._items.extend(self._pending)
                self._items.sort()
            self._pending.clear()
        return self._items


@dataclass(slots=True)
class _AppIndex:
    """An app's current sessions in listing order: all of them, the LIVE and the ENDED ones."""

    all: _SortedKeys = field(default_factory=_SortedKeys)
    live: _SortedKeys = field(default_factory=_SortedKeys)
    ended: _SortedKeys = field(default_factory=_SortedKeys)

    def by_status(self, status: str) -> _SortedKeys | None:
        return {"": self.all, "LIVE": self.live, "ENDED": self.ended}.get(status)


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes = b""
    content_type: str = _JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    reset: bool = False
    stream: Iterable[bytes] | None = None  # sent instead of body, written chunk by chunk
    length: int | None = None  # Content-Length of a stream; None: chunked transfer encoding


def _dumps(obj: object) -> bytes:
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (`lone_surrogate`): JSON escapes it, validly
        return json.dumps(obj, separators=(",", ":")).encode()


def _cf_error(status: int, code: int, message: str) -> _Answer:
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": []}
    return _Answer(status, _dumps({**body, "result": None}))


def _rtk_error(status: int, message: str) -> _Answer:
    error = {"code": status, "message": message}
    return _Answer(status, _dumps({"success": False, "error": error}))


def _envelope(payload: dict[str, Any]) -> bytes:
    """Serialise an answer; a `deep_json` marker becomes JSON nested 10,000 deep."""
    body = _dumps(payload)
    mark = _dumps(_DEEP_MARK)
    if mark in body:
        deep = b"[" * _DEEP_JSON_DEPTH + b"]" * _DEEP_JSON_DEPTH
        body = body.replace(mark, deep, 1)
    return body


def _break_types(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "id": 12345, "live_participants": str(d["live_participants"])}


# A session field fault: how it changes one session object as served.
_FIELD_FAULTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "wrong_types": _break_types,
    "huge_int": lambda d: {**d, "live_participants": 10**400},
    "long_name": lambda d: {**d, "meeting_display_name": "n" * _LONG_NAME_BYTES},
    "lone_surrogate": lambda d: {**d, "meeting_display_name": "Weekly \ud83d sync"},
    "unknown_status": lambda d: {**d, "status": "PAUSED"},
    "deep_json": lambda d: {**d, "meta": _DEEP_MARK},
}


@functools.cache
def _huge_ratelimit() -> str:
    """80 KiB of `r=` items and no `t=`: a backtracking parser takes quadratic time on it."""
    return ('"default";' + "r=1;" * (_HUGE_HEADER_BYTES // 4))[:_HUGE_HEADER_BYTES]


@functools.cache
def _gzip_bomb() -> tuple[bytes, bytes, bytes, int]:
    """(head, unit, tail, length) of a gzip stream of 1 GiB of zeros: head unit*(N-1) tail.

    After a full flush deflate starts afresh, so every 1 MiB unit compresses to the same ~1 KB and
    the stream is made without ever holding more than one unit of zeros.
    """
    zeros = bytes(_BOMB_UNIT)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    unit = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(_BOMB_UNITS):
        crc = zlib.crc32(zeros, crc)
    head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + unit
    tail = deflate.flush(zlib.Z_FINISH) + struct.pack(
        "<II", crc, (_BOMB_UNIT * _BOMB_UNITS) % 2**32
    )
    return head, unit, tail, len(head) + len(unit) * (_BOMB_UNITS - 1) + len(tail)


def _gzip_bomb_chunks() -> Iterator[bytes]:
    head, unit, tail, _ = _gzip_bomb()
    yield head
    left = _BOMB_UNITS - 1
    while left:
        n = min(64, left)
        yield unit * n
        left -= n
    yield tail


@functools.lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _iso(t: float) -> str:
    ms = round(t * 1000)
    return f"{_iso_seconds(ms // 1000)}.{ms % 1000:03d}Z"


def _bearer(header: str | None) -> str:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return ""


def _route(path: str) -> tuple[str, str, str, str] | None:
    """(kind, account, app, meeting) for an API path under /client/v4, None if unknown."""
    p = path.split("/")
    if len(p) < 9 or p[1:4] != ["client", "v4", "accounts"] or p[5:7] != ["realtime", "kit"]:
        return None
    account, app, rest = unquote(p[4]), unquote(p[7]), p[8:]
    if rest == ["sessions"]:
        return "sessions", account, app, ""
    if len(rest) == 3 and rest[0] == "meetings" and rest[2] == "active-session" and rest[1]:
        return "active", account, app, unquote(rest[1])
    return None


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(frozen=True, slots=True)
class _WebhookOptions:
    url: str  # a template: {account_id} and {app_id} are replaced by the event's app
    key: rsa.RSAPrivateKey
    webhook_id: str
    retries: int
    delays: tuple[float, ...]
    timeout: float
    queue_size: int

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"webhook_url must be an http(s) URL, got {self.url!r}")
        if self.retries < 0:
            raise ValueError(f"webhook_retries must be >= 0, got {self.retries!r}")
        if not self.delays or any(not d >= 0 for d in self.delays):
            raise ValueError(f"webhook_retry_delays must be seconds >= 0, got {self.delays!r}")
        if not self.timeout > 0:
            raise ValueError(f"webhook_timeout must be > 0, got {self.timeout!r}")
        if self.queue_size < 1:
            raise ValueError(f"webhook_queue_size must be >= 1, got {self.queue_size!r}")

    def target(self, app: tuple[str, str]) -> str:
        account, app_id = (quote(part, safe="") for part in app)
        return self.url.replace("{account_id}", account).replace("{app_id}", app_id)


class _WebhookSender:
    """Signs and POSTs events, in order, from one thread; a bounded queue feeds it.

    ``submit`` never blocks (a full queue drops the event and counts it), so the simulator may
    call it with its lock held. A delivery is retried after each delay of ``delays`` (the last
    one repeats) on a 5xx or a network error, at most ``retries`` times, with the same
    ``rtk-uuid``; any other status ends it. ``tick`` (auto mode) runs every 0.2 s between
    deliveries so meetings change, and their events go out, even when nobody polls.
    """

    def __init__(self, options: _WebhookOptions, tick: Callable[[], None] | None) -> None:
        self.options = options
        self._tick = tick
        self._cond = threading.Condition()
        self._pending: deque[tuple[tuple[str, str], dict[str, Any]]] = deque()
        self._counts = dict.fromkeys(("delivered", "failed", "retried", "dropped"), 0)
        self._last_error = ""
        self._stopping = False
        self._thread: threading.Thread | None = None

    def submit(self, app: tuple[str, str], payload: dict[str, Any]) -> None:
        with self._cond:
            if len(self._pending) >= self.options.queue_size:
                self._counts["dropped"] += 1
                return
            self._pending.append((app, payload))
            self._cond.notify()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {**self._counts, "queued": len(self._pending), "last_error": self._last_error}

    def start(self) -> None:
        with self._cond:
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sim-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread after the delivery in flight (events still queued stay queued)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.options.timeout + 3)
            self._thread = None

    def _run(self) -> None:
        with httpx.Client(timeout=self.options.timeout, trust_env=False) as client:
            next_tick = time.monotonic()
            while True:
                if self._tick is not None and time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + _TICK_SECONDS
                wait = None if self._tick is None else max(0.0, next_tick - time.monotonic())
                with self._cond:
                    self._cond.wait_for(lambda: self._pending or self._stopping, wait)
                    if self._stopping:
                        return
                    item = self._pending.popleft() if self._pending else None
                if item is not None:
                    self._deliver(client, *item)

    def _deliver(self, client: httpx.Client, app: tuple[str, str], payload: dict[str, Any]) -> None:
        body = _dumps(payload)
        headers = {
            "rtk-signature": sign(self.options.key, body),
            "rtk-uuid": str(uuid.uuid4()),
            "rtk-webhook-id": self.options.webhook_id,
            "Content-Type": "application/json",
        }
        url, delays = self.options.target(app), self.options.delays
        for attempt in range(self.options.retries + 1):
            if attempt:
                self._count("retried")
                if self._pause(delays[min(attempt, len(delays)) - 1]):
                    return  # stopping: the event stays undelivered
            outcome = self._post(client, url, body, headers)
            if outcome != "retry":
                self._count(outcome)
                return
        self._count("failed")

    def _post(self, client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> str:
        """ "delivered", "failed" (a status not worth retrying) or "retry"."""
        try:
            status = client.post(url, content=body, headers=headers).status_code
        except httpx.HTTPError as err:
            self._note(f"{type(err).__name__}: {err}")
            return "retry"
        if 200 <= status < 300:
            return "delivered"
        self._note(f"HTTP {status}")
        return "retry" if status >= 500 else "failed"

    def _pause(self, seconds: float) -> bool:
        """Wait before a retry; True when stop() came first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stopping, seconds)

    def _count(self, name: str) -> None:
        with self._cond:
            self._counts[name] += 1

    def _note(self, error: str) -> None:
        with self._cond:
            self._last_error = error[:200]


def _room_name(meeting_id: str) -> str:
    letters = "".join(c for c in meeting_id.lower() if c.isalnum())[:12].ljust(12, "x")
    return f"{letters[:6]}-{letters[6:]}"


def _generate_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _check_conventions(
    page_base: int, per_page_cap: int, paging: str, drop: tuple[str, ...], unknown: str, churn: int
) -> None:
    if page_base not in (0, 1):
        raise ValueError(f"page_base must be 0 or 1, got {page_base!r}")
    if per_page_cap < 1:
        raise ValueError(f"per_page_cap must be >= 1, got {per_page_cap!r}")
    if paging not in PAGING_MODES:
        raise ValueError(f"paging must be one of {list(PAGING_MODES)}, got {paging!r}")
    if bad := [f for f in drop if f not in PAGING_FIELDS]:
        raise ValueError(f"paging_drop: unknown paging fields {bad}; known: {list(PAGING_FIELDS)}")
    if paging == "partial" and not drop:
        raise ValueError("paging='partial' needs at least one field in paging_drop")
    if unknown not in UNKNOWN_MEETING_MODES:
        raise ValueError(
            f"unknown_meeting must be one of {list(UNKNOWN_MEETING_MODES)}, got {unknown!r}"
        )
    if churn < 0:
        raise ValueError(f"churn_per_page must be >= 0, got {churn!r}")


class Simulator:
    """A RealtimeKit API look-alike; see the module docstring. Control methods are thread-safe."""

    def __init__(
        self,
        *,
        token: str,
        account_id: str = DEFAULT_ACCOUNT_ID,
        app_id: str = DEFAULT_APP_ID,
        meetings: int | list[str] = 5,
        auto: bool = True,
        speed: float = 1.0,
        seed: int | None = None,
        faults: FaultConfig | None = None,
        rate_limit: tuple[int, float] | None = None,
        clock: Callable[[], float] = time.time,
        live: bool = False,
        page_base: int = 1,
        per_page_cap: int = 100,
        paging: str = "full",
        paging_drop: Iterable[str] = ("total_count",),
        unknown_meeting: str = "no_session",
        churn_per_page: int = 0,
        on_page: Callable[[PageServed], None] | None = None,
        webhook_url: str | None = None,
        webhook_key: rsa.RSAPrivateKey | None = None,
        webhook_retries: int = 3,
        webhook_retry_delays: Iterable[float] = WEBHOOK_RETRY_DELAYS,
        webhook_timeout: float = 2.0,
        webhook_queue_size: int = 10_000,
    ) -> None:
        if not token:
            raise ValueError("token must not be empty")
        if not speed > 0:
            raise ValueError("speed must be > 0")
        if rate_limit is not None and (rate_limit[0] < 0 or not rate_limit[1] > 0):
            raise ValueError("rate_limit must be (requests >= 0, window_seconds > 0)")
        drop = tuple(paging_drop)
        _check_conventions(page_base, per_page_cap, paging, drop, unknown_meeting, churn_per_page)
        self._token = token
        self._auto = auto
        self._speed = float(speed)
        self._seed = seed
        self._faults = faults or FaultConfig()
        self._rate_limit = rate_limit
        self._clock = clock
        self._page_base, self._per_page_cap = page_base, per_page_cap
        self._paging_drop = drop if paging == "partial" else ()
        self._paging_absent = paging == "absent"
        self._unknown_meeting = unknown_meeting
        self._churn_per_page, self._on_page = churn_per_page, on_page
        self._t0 = clock()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a connection closes
        self._ids_rng = random.Random(seed)
        self._fault_rng = random.Random(None if seed is None else f"faults:{seed}")
        self._churn_rng = random.Random(None if seed is None else f"churn:{seed}")
        self._apps: dict[tuple[str, str], list[_Meeting]] = {}
        self._index: dict[tuple[str, str], _AppIndex] = {}
        self._listing_faults: dict[tuple[str, str], str] = {}
        self._meetings: dict[str, _Meeting] = {}
        self._events: list[tuple[float, int, _Meeting]] = []  # heap of (due, seq, meeting)
        self._seq = itertools.count()
        self._windows: dict[str, tuple[float, int]] = {}
        self._total = 0
        self._per_token: dict[str, int] = {}
        self._statuses: dict[int, int] = {}
        self._log: deque[tuple[float, str, int]] = deque(maxlen=_LOG_SIZE)
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.account_id = account_id
        self.app_id = app_id
        self._main_app = (account_id, app_id)
        self._peer_rng = random.Random(None if seed is None else f"peers:{seed}")
        self._peers: dict[str, list[_Peer]] = {}  # meeting id → participants of its session
        self._hooks: _WebhookSender | None = None
        self.add_app(account_id, app_id, meetings, live=live)
        # set up after the constructor's meetings: their sessions were there before, no events
        self.webhook_key = self._webhook_key(webhook_url, webhook_key)
        self.webhook_id = _uuid4(random.Random(None if seed is None else f"webhook:{seed}"))
        if webhook_url is not None:
            options = _WebhookOptions(
                webhook_url,
                cast(rsa.RSAPrivateKey, self.webhook_key),
                self.webhook_id,
                webhook_retries,
                tuple(webhook_retry_delays),
                webhook_timeout,
                webhook_queue_size,
            )
            self._hooks = _WebhookSender(options, self._tick if auto else None)

    def _webhook_key(
        self, url: str | None, key: rsa.RSAPrivateKey | None
    ) -> rsa.RSAPrivateKey | None:
        """The key to sign with (made when a URL needs one) and its well-known document."""
        if key is not None and not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"webhook_key must be an RSA private key, got {type(key).__name__}")
        if url is not None and key is None:
            key = _generate_key()
        self._well_known = None if key is None else well_known_body(key.public_key())
        return key

    # -- setup ------------------------------------------------------------------------------

    @property
    def meeting_ids(self) -> list[str]:
        """Meeting ids of the constructor's app, in creation order (a copy)."""
        with self._lock:
            return [m.id for m in self._apps[self._main_app]]

    def add_app(
        self,
        account_id: str,
        app_id: str,
        meetings: int | list[str],
        *,
        live: bool = False,
        participants: int = 1,
    ) -> list[str]:
        """Add meetings to an account/app (created if needed); returns the new meeting ids.

        With ``live=True`` every new meeting starts a LIVE session of ``participants`` at once
        (cheap enough for 100,000 meetings with ``auto=False``).
        """
        if live and participants < 1:
            raise ValueError(f"participants must be >= 1, got {participants!r}")
        with self._lock:
            if isinstance(meetings, int):
                if meetings < 0:
                    raise ValueError("meetings must be >= 0")
                ids = [self._new_uuid() for _ in range(meetings)]
            else:
                ids = list(meetings)
            if any(not isinstance(i, str) or not i for i in ids) or len(set(ids)) != len(ids):
                raise ValueError("meeting ids must be unique non-empty strings")
            if clash := [i for i in ids if i in self._meetings]:
                raise ValueError(f"meeting ids already exist: {clash}")
            self._add_meetings((account_id, app_id), ids, participants if live else 0)
            return ids

    def add_meeting(self, meeting_id: str) -> None:
        """Add one meeting to the constructor's app."""
        self.add_app(*self._main_app, [meeting_id])

    def _add_meetings(self, key: tuple[str, str], ids: list[str], live: int) -> None:
        """Create meetings (caller holds the lock); `live` > 0 starts each with that many."""
        app = self._apps.setdefault(key, [])
        self._index.setdefault(key, _AppIndex())
        now = self._sim_now()
        for mid in ids:
            n = len(app) + 1
            m = _Meeting(mid, f"Meeting {n} – {_TOPICS[(n - 1) % len(_TOPICS)]}", key, last=now)
            if live:
                self._start_session(m, now, live, self._new_uuid())
            else:
                self._init_auto(m, now)
            app.append(m)
            self._meetings[mid] = m

    def _new_uuid(self) -> str:
        return _uuid4(self._ids_rng)

    def _rng(self, m: _Meeting) -> random.Random:
        if m.rng is None:
            m.rng = random.Random(None if self._seed is None else f"{self._seed}:{m.id}")
        return m.rng

    def _init_auto(self, m: _Meeting, now: float) -> None:
        if not self._auto:
            return
        rng = self._rng(m)
        if rng.random() < 0.5:  # already LIVE for a while
            age, n = rng.uniform(10.0, 300.0), rng.randint(1, 8)
            s = self._start_session(m, now - age, n)
            s.minutes, s.peak = n * age / 60.0, n + rng.randint(0, 3)
            s.updated = self._real(now - rng.uniform(0.0, min(age, 15.0)))
            m.phase_until, m.next_change = now + rng.uniform(30.0, 480.0), now + rng.uniform(1, 15)
        else:
            m.phase_until = now + rng.uniform(0.0, 120.0)
        self._schedule(m)

    # -- simulated time ---------------------------------------------------------------------

    def _sim_now(self) -> float:
        return (self._clock() - self._t0) * self._speed

    def _real(self, sim_t: float) -> float:
        return self._t0 + sim_t / self._speed

    @staticmethod
    def _next_event(m: _Meeting) -> float:
        return min(m.phase_until, m.next_change) if m.phase == _LIVE else m.phase_until

    def _advance(self, m: _Meeting, now: float) -> None:
        """Bring a meeting up to simulated time `now` (caller holds the lock)."""
        if self._auto:
            while (t := self._next_event(m)) <= now:
                self._integrate(m, t)
                self._step(m, t)
            self._schedule(m)
        self._integrate(m, now)

    def _schedule(self, m: _Meeting) -> None:
        """Queue the meeting's next change in the heap of due times (auto mode only)."""
        t = self._next_event(m) if self._auto else math.inf
        if t != m.due:
            m.due = t
            if t < math.inf:
                heapq.heappush(self._events, (t, next(self._seq), m))

    def _advance_due(self, now: float) -> None:
        """Apply every change due by `now`, in any meeting: then listings are current."""
        events = self._events
        while events and events[0][0] <= now:
            due, _, m = heapq.heappop(events)
            if m.due == due:  # not superseded since it was queued
                self._advance(m, now)

    @staticmethod
    def _integrate(m: _Meeting, t: float) -> None:
        if t <= m.last:
            return
        s = m.session
        if s is not None and s.ended is None:
            s.minutes += s.live * (t - m.last) / 60.0
        m.last = t

    def _step(self, m: _Meeting, t: float) -> None:
        rng, s = self._rng(m), m.session
        if m.phase == _IDLE or s is None:
            self._start_session(m, t, rng.randint(1, 4))
        elif m.phase == _LIVE and m.next_change < m.phase_until:
            step = rng.choice((-2, -1, -1, 1, 1, 2))
            self._set_live(m, t, max(1, min(12, s.live + step)))
            m.next_change = t + rng.uniform(5.0, 15.0)
        elif m.phase == _LIVE:
            self._end(m, t)
        else:
            self._clear(m, t)

    def _start_session(
        self, m: _Meeting, t: float, n: int, session_id: str | None = None
    ) -> _Session:
        if session_id is None:
            session_id = _uuid4(self._rng(m))
        self._unindex(m)
        real = self._real(t)
        m.session = _Session(session_id, real, real, n, n)
        index = self._index[m.app]
        index.all.add(m.key())
        index.live.add(m.key())
        m.phase = _LIVE
        if self._auto or m.rng is not None:
            # phase times matter in auto mode only; they are drawn whenever the meeting has its
            # random stream so that its later session ids stay what they always were
            rng = self._rng(m)
            m.phase_until, m.next_change = t + rng.uniform(120.0, 600.0), t + rng.uniform(5, 15)
        self._schedule(m)
        if self._hooks is not None:
            self._peers[m.id] = []
            self._emit(m, "meeting.started")
            self._emit_peers(m, n, t)
        return m.session

    def _set_live(self, m: _Meeting, t: float, n: int) -> None:
        s = cast(_Session, m.session)
        if n != s.live:
            self._emit_peers(m, n - s.live, t)
            s.live, s.peak, s.updated = n, max(s.peak, n), self._real(t)

    def _end(self, m: _Meeting, t: float, reason: str = _ALL_LEFT) -> None:
        if m.session is not None and m.session.ended is None:
            self._emit_end(m, t, reason)
            index = self._index[m.app]
            index.live.remove(m.key())
            index.ended.add(m.key())
            real = self._real(t)
            m.session.live, m.session.ended, m.session.updated = 0, real, real
        m.phase, m.next_change = _ENDED, math.inf
        m.phase_until = t + self._rng(m).uniform(50.0, 70.0)
        self._schedule(m)

    def _clear(self, m: _Meeting, t: float) -> None:
        self._unindex(m)
        m.session, m.phase, m.next_change = None, _IDLE, math.inf
        m.phase_until = t + self._rng(m).uniform(20.0, 120.0)
        self._schedule(m)

    def _unindex(self, m: _Meeting) -> None:
        if m.session is not None:
            index = self._index[m.app]
            index.all.remove(m.key())
            (index.live if m.session.ended is None else index.ended).remove(m.key())

    def _touch(self, meeting_id: str) -> tuple[_Meeting, float]:
        m = self._meetings.get(meeting_id)
        if m is None:
            raise KeyError(f"unknown meeting {meeting_id!r}")
        now = self._sim_now()
        self._advance(m, now)
        return m, now

    # -- deterministic control --------------------------------------------------------------

    def set_participants(self, meeting_id: str, n: int) -> None:
        """Set live participants; n > 0 starts a new LIVE session if there is none (or it ended)."""
        if n < 0:
            raise ValueError("participants must be >= 0")
        with self._lock:
            m, now = self._touch(meeting_id)
            if m.session is None or m.session.ended is not None:
                if n > 0:
                    self._start_session(m, now, n)
            else:
                self._set_live(m, now, n)

    def end_session(self, meeting_id: str) -> None:
        """Everyone leaves: the session turns ENDED (still served until clear_session)."""
        with self._lock:
            m, now = self._touch(meeting_id)
            if m.session is not None:
                self._end(m, now, _HOST_ENDED)

    def clear_session(self, meeting_id: str) -> None:
        """Drop the meeting's session: active-session answers 404 from now on."""
        with self._lock:
            m, now = self._touch(meeting_id)
            if m.session is not None and m.session.ended is None:
                self._emit_end(m, now, _HOST_ENDED)
            self._clear(m, now)

    # -- webhook events (caller holds the lock; nothing happens without a webhook_url) ------

    def _emit(self, m: _Meeting, event: str, **extra: Any) -> None:
        """Queue one event about the meeting's current session, as it is now."""
        if self._hooks is None:
            return
        s = cast(_Session, m.session)
        ended = extra.pop("ended", None)
        meeting: dict[str, Any] = {
            "id": m.id,
            "sessionId": s.id,
            "title": m.name,
            "roomName": _room_name(m.id),
            "status": "LIVE" if ended is None else "ENDED",
            "createdAt": _iso(s.created),
            "startedAt": _iso(s.created),
            "organizedBy": {"id": m.app[1], "name": f"Organization {m.app[1][:8]}"},
        }
        if ended is not None:
            meeting["endedAt"] = _iso(ended)
        self._hooks.submit(m.app, {"event": event, "meeting": meeting, **extra})

    def _emit_peers(self, m: _Meeting, change: int, t: float) -> None:
        """One participantJoined per new participant (change > 0) or participantLeft per
        participant gone (change < 0; the latest to join leaves first)."""
        if self._hooks is None:
            return
        peers, created = self._peers.setdefault(m.id, []), cast(_Session, m.session).created
        for _ in range(abs(change)):
            if change > 0:
                peer: _Peer = (_uuid4(self._peer_rng), self._real(t))
                peers.append(peer)
                self._emit(m, "meeting.participantJoined", participant=self._peer_json(peer))
            else:  # sessions from before the webhooks have participants never seen joining
                peer = peers.pop() if peers else (_uuid4(self._peer_rng), created)
                left = self._peer_json(peer, self._real(t))
                self._emit(m, "meeting.participantLeft", participant=left)

    def _emit_end(self, m: _Meeting, t: float, reason: str) -> None:
        """Everyone still there leaves, then the LIVE session ends."""
        if self._hooks is None:
            return
        self._emit_peers(m, -cast(_Session, m.session).live, t)
        self._peers.pop(m.id, None)
        self._emit(m, "meeting.ended", ended=self._real(t), reason=reason)

    @staticmethod
    def _peer_json(peer: _Peer, left: float | None = None) -> dict[str, Any]:
        peer_id, joined = peer
        d: dict[str, Any] = {
            "peerId": peer_id,
            "userDisplayName": f"Participant {peer_id[:4]}",
            "customParticipantId": f"user-{peer_id[:8]}",
            "joinedAt": _iso(joined),
        }
        if left is not None:
            d["leftAt"] = _iso(left)
        return d

    def _tick(self) -> None:
        """Apply every change due by now (auto mode with webhooks: their events go out)."""
        with self._lock:
            self._advance_due(self._sim_now())

    @staticmethod
    def _check_fault(kind: str | None, listing: bool = False) -> None:
        kinds = FAULT_KINDS - _MEETING_ONLY_FAULTS if listing else FAULT_KINDS
        if kind is not None and kind not in kinds:
            raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(kinds)}")

    def set_fault(self, meeting_id: str, kind: str | None) -> None:
        """Force a fault (one of ``FAULT_KINDS``) on every active-session request of this meeting
        (None clears it)."""
        self._check_fault(kind)
        with self._lock:
            self._touch(meeting_id)[0].fault = kind

    def set_listing_fault(
        self, kind: str | None, account_id: str | None = None, app_id: str | None = None
    ) -> None:
        """Force a fault on every ``/sessions`` request of an app (default: the constructor's);
        any of ``FAULT_KINDS`` but ``not_found``; None clears it."""
        self._check_fault(kind, listing=True)
        key = (account_id or self.account_id, app_id or self.app_id)
        with self._lock:
            if key not in self._apps:
                raise KeyError(f"unknown app {key[0]}/{key[1]}")
            if kind is None:
                self._listing_faults.pop(key, None)
            else:
                self._listing_faults[key] = kind

    def session(self, meeting_id: str) -> dict[str, Any] | None:
        """The meeting's current session object as it would be served, or None."""
        with self._lock:
            m, _ = self._touch(meeting_id)
            return None if m.session is None else self._session_json(m, m.session)

    def request_count(self, token: str | None = None) -> int:
        """API requests received (control and health endpoints excluded), total or per token."""
        with self._lock:
            return self._total if token is None else self._per_token.get(token, 0)

    def status_counts(self) -> dict[int, int]:
        """HTTP statuses answered so far; 0 counts connections reset without an answer."""
        with self._lock:
            return dict(self._statuses)

    def request_log(self) -> list[tuple[float, str, int]]:
        """(clock time received, request target with query, status) of the last 100k requests."""
        with self._lock:
            return list(self._log)

    def live_session_count(self, account_id: str | None = None, app_id: str | None = None) -> int:
        """LIVE sessions of an app (default: the constructor's) right now."""
        key = (account_id or self.account_id, app_id or self.app_id)
        with self._lock:
            self._advance_due(self._sim_now())
            return len(self._index[key].live.items())

    def _session_json(self, m: _Meeting, s: _Session) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": s.id,
            "associated_id": m.id,
            "created_at": _iso(s.created),
            "live_participants": s.live,
            "max_concurrent_participants": s.peak,
            "meeting_display_name": m.name,
            "minutes_consumed": round(s.minutes, 3),
            "organization_id": m.app[1],
            "started_at": _iso(s.created),
            "status": "LIVE" if s.ended is None else "ENDED",
            "type": "meeting",
            "updated_at": _iso(s.updated),
            "breakout_rooms": [],
            "meta": {},
        }
        if s.ended is not None:
            d["ended_at"] = _iso(s.ended)
        return d

    # -- server lifecycle -------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stop.clear()
        self._server = _Server((host, port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        if self._hooks is not None:
            self._hooks.start()

    def stop(self) -> None:
        """Stop serving, end waiting and streaming answers, close open connections and wait (up
        to 5 s) for their threads to finish (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stop.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._idle.wait_for(lambda: not self._conns, timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._hooks is not None:
            self._hooks.stop()

    def __enter__(self) -> Simulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        host = str(self._server.server_address[0])
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/client/v4"

    @property
    def webhook_key_url(self) -> str:
        """Where the simulator serves its webhook public key (``/.well-known/webhooks.json``)."""
        if self._well_known is None:
            raise RuntimeError("simulator has no webhook key")
        return self.base_url.removesuffix("/client/v4") + WELL_KNOWN_PATH

    def webhook_stats(self) -> dict[str, Any]:
        """Webhook deliveries: ``delivered``, ``failed`` (not 2xx after the retries, or a 4xx),
        ``retried`` (attempts after the first), ``dropped`` (queue full), ``queued`` now, and
        ``last_error``; as under ``"webhooks"`` in ``GET /_sim/stats``."""
        if self._hooks is None:
            raise RuntimeError("simulator has no webhook_url")
        return self._hooks.stats()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- request handling -------------------------------------------------------------------

    def _dispatch(self, h: _Handler, method: str) -> None:
        length = h.fields.get("content-length", "")
        body = h.rfile.read(int(length)) if length.isdigit() else b""
        if "transfer-encoding" in h.fields:
            h.close_connection = True
        target = h.path
        path = target.partition("?")[0]
        if path.startswith("/_sim/"):
            ans = self._control(method, path, body)
        elif path == "/-/healthy":
            ans = _Answer(200, b"ok", "text/plain; charset=utf-8")
        elif path == WELL_KNOWN_PATH:
            ans = self._well_known_answer(method)
        else:
            now, token = self._clock(), _bearer(h.fields.get("authorization"))
            with self._lock:
                self._total += 1
                self._per_token[token] = self._per_token.get(token, 0) + 1
            ans = self._answer(method, target, token, now)
            if self._faults.latency_seconds > 0:
                self._stop.wait(self._faults.latency_seconds)
            with self._lock:  # record before answering so callers see it once they have the answer
                status = 0 if ans.reset else ans.status
                self._statuses[status] = self._statuses.get(status, 0) + 1
                self._log.append((now, target, status))
        h.send_answer(ans)

    def _well_known_answer(self, method: str) -> _Answer:
        if method != "GET":
            return _Answer(
                405, _dumps({"ok": False, "error": "use GET"}), headers=[("Allow", "GET")]
            )
        if self._well_known is None:
            return _Answer(404, _dumps({"ok": False, "error": "no webhook key"}))
        return _Answer(200, self._well_known)

    def _answer(self, method: str, target: str, token: str, now: float) -> _Answer:
        path, _, query = target.partition("?")
        route = _route(path)
        if route is None:
            return _cf_error(404, 7000, "No route for that URI")
        kind, account, app_id, meeting_id = route
        if method != "GET":
            ans = _cf_error(405, 10405, f"Method {method} not allowed")
            ans.headers.append(("Allow", "GET"))
            return ans
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            return _cf_error(401, 10000, "Authentication error")
        rl_headers, retry_after = self._rate_check(token, now)
        if retry_after is not None:
            ans = self._too_many(retry_after)
        else:
            ans = self._serve(kind, (account, app_id), meeting_id, path, query)
        ans.headers.extend(rl_headers)
        return ans

    def _too_many(self, retry_after: int) -> _Answer:
        limit, window = self._rate_limit or (1200, 300.0)
        ans = _cf_error(429, 971, f"More than {limit} requests per {window:g} seconds reached")
        ans.headers.append(("Retry-After", str(retry_after)))
        return ans

    def _rate_check(self, token: str, now: float) -> tuple[list[tuple[str, str]], int | None]:
        if self._rate_limit is None:
            return [], None
        limit, window = self._rate_limit
        with self._lock:
            start, count = self._windows.get(token, (-math.inf, 0))
            if now >= start + window:
                start, count = now, 0
            count += 1
            self._windows[token] = (start, count)
        left = max(1, math.ceil(start + window - now))
        headers = [
            ("Ratelimit", f'"default";r={max(0, limit - count)};t={left}'),
            ("Ratelimit-Policy", f'"default";q={limit};w={window:g}'),
        ]
        return headers, (left if count > limit else None)

    def _draw_fault(self) -> str | None:
        f, r = self._faults, self._fault_rng.random()
        for kind, p in (
            ("reset", f.reset),
            ("timeout", f.timeout),
            ("500", f.error_500),
            ("503", f.error_503),
            ("non_json", f.non_json),
            ("wrong_types", f.wrong_types),
        ):
            if r < p:
                return kind
            r -= p
        return None

    def _serve(
        self, kind: str, app: tuple[str, str], meeting_id: str, path: str, query: str
    ) -> _Answer:
        with self._lock:
            if app not in self._apps:
                msg = f"Could not route to {path}, perhaps your object identifier is invalid?"
                return _cf_error(404, 7003, msg)
            if kind == "active":
                m = self._meetings.get(meeting_id)
                forced = m.fault if m is not None and m.app == app else None
            else:
                forced = self._listing_faults.get(app)
            fault = forced if forced is not None else self._draw_fault()
            status_503 = 503 if fault == "503" and self._fault_rng.random() < 0.5 else 502
        ans = self._fault_answer(fault, status_503, kind)
        if ans is not None:
            return ans
        if kind == "active":
            ans = self._active_session(app, meeting_id, fault)
        else:
            ans, page = self._sessions(app, query, fault)
            if page is not None:
                self._after_page(page)
        return self._dress(ans, fault)

    def _fault_answer(self, fault: str | None, status_503: int, kind: str) -> _Answer | None:
        """The answer a fault puts in place of the real one (None: serve it, maybe changed)."""
        if fault == "timeout":
            self._stop.wait(self._faults.slow_seconds)
            return None
        if fault == "reset":
            return _Answer(0, reset=True)
        if fault == "503":
            page = f"<html><body><h1>{status_503} Service Unavailable</h1></body></html>"
            return _Answer(status_503, page.encode(), _HTML)
        if fault == "endless":
            opening = b'{"success":true,"data":' + (b'{"sessions":[' if kind == "sessions" else b"")
            return _Answer(200, stream=self._endless(opening))
        if fault == "gzip_bomb":
            gzip = [("Content-Encoding", "gzip")]
            return _Answer(200, headers=gzip, stream=_gzip_bomb_chunks(), length=_gzip_bomb()[3])
        simple: dict[str, Callable[[], _Answer]] = {
            "500": lambda: _rtk_error(500, "Internal Server Error"),
            "401": lambda: _cf_error(401, 10000, "Authentication error"),
            "429": lambda: self._too_many(5),
            "retry_after_huge": lambda: self._too_many(1_000_000_000),
            "not_found": lambda: _rtk_error(404, "Meeting not found"),
            "non_json": lambda: _Answer(200, b"<html>oops</html>", _HTML),
        }
        return simple[fault]() if fault in simple else None

    def _dress(self, ans: _Answer, fault: str | None) -> _Answer:
        """Faults that deliver a valid answer in a hostile way."""
        if fault == "huge_header":
            ans.headers.append(("Ratelimit", _huge_ratelimit()))
        elif fault == "trickle":
            ans.stream, ans.length, ans.body = self._trickle(ans.body), len(ans.body), b""
        return ans

    def _trickle(self, body: bytes) -> Iterator[bytes]:
        for i in range(len(body)):
            if i and self._stop.wait(self._faults.trickle_seconds):
                return
            yield body[i : i + 1]

    def _endless(self, opening: bytes) -> Iterator[bytes]:
        yield opening
        while not self._stop.wait(self._faults.trickle_seconds):
            yield b" " * 16  # JSON whitespace: the document stays open for ever

    def _active_session(self, app: tuple[str, str], meeting_id: str, fault: str | None) -> _Answer:
        change = _FIELD_FAULTS.get(fault or "")
        with self._lock:
            m = self._meetings.get(meeting_id)
            data: dict[str, Any] | None = None
            if m is None or m.app != app:
                if self._unknown_meeting == "not_found":
                    return _rtk_error(404, "Meeting not found")
            else:
                self._advance(m, self._sim_now())
                if m.session is not None:
                    data = self._session_json(m, m.session)
                elif change is not None:
                    data = self._session_json(m, _Session("x", self._t0, self._t0, 1, 1))
        if data is None:
            return _rtk_error(404, f"No active session found for meeting_id {meeting_id}")
        if change is not None:
            data = change(data)
        return _Answer(200, _envelope({"success": True, "data": data}))

    def _sessions(
        self, app: tuple[str, str], query: str, fault: str | None
    ) -> tuple[_Answer, PageServed | None]:
        q = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            page_no = int(q.get("page_no") or self._page_base)
            per_page = min(self._per_page_cap, max(1, int(q.get("per_page") or 20)))
        except ValueError:
            return _rtk_error(400, "page_no and per_page must be integers"), None
        start = max(0, page_no - self._page_base) * per_page
        status, assoc = (q.get("status") or "").upper(), q.get("associated_id")
        search = (q.get("search") or "").casefold()
        with self._lock:
            now = self._sim_now()
            self._advance_due(now)
            keys = self._matching(app, status, assoc, search)
            page = [self._render(key, now) for key in keys[start : start + per_page]]
            total = len(keys)
        wrong = fault == "wrong_types"
        change = _FIELD_FAULTS.get(fault or "")
        if wrong:
            page = [_break_types(d) for d in page]
        elif change is not None and page:
            page[0] = change(page[0])
        payload: dict[str, Any] = {"success": True, "data": {"sessions": page}}
        if not self._paging_absent:
            payload["paging"] = self._paging(total, start, len(page), wrong)
        served = PageServed(app[0], app[1], page_no, per_page, len(page), total)
        return _Answer(200, _envelope(payload)), served

    def _paging(self, total: int, start: int, served: int, wrong: bool) -> dict[str, Any]:
        paging: dict[str, Any] = {
            "total_count": str(total) if wrong else total,
            "start_offset": start + 1 if served else 0,
            "end_offset": start + served if served else 0,
        }
        for name in self._paging_drop:
            del paging[name]
        return paging

    def _matching(
        self, app: tuple[str, str], status: str, assoc: str | None, search: str
    ) -> list[_Key]:
        """Listing keys of the app's sessions that match the filters, in listing order."""
        keys = self._index[app].by_status(status)
        if keys is None:
            return []
        if assoc is not None:
            m = self._meetings.get(assoc)
            if m is None or m.app != app or m.session is None:
                return []
            key = m.key()
            items = keys.items()
            i = bisect_left(items, key)
            found = [key] if i < len(items) and items[i] == key else []
        else:
            found = keys.items()
        if search:  # rare: a scan of the app's sessions
            found = [k for k in found if search in self._meetings[k[2]].name.casefold()]
        return found

    def _render(self, key: _Key, now: float) -> dict[str, Any]:
        m = self._meetings[key[2]]
        self._advance(m, now)
        return self._session_json(m, cast(_Session, m.session))

    def _after_page(self, page: PageServed) -> None:
        """Churn, then the test hook, once a page is built and before it is sent."""
        if self._churn_per_page:
            with self._lock:
                self._churn((page.account_id, page.app_id))
        if self._on_page is not None:
            self._on_page(page)

    def _churn(self, app: tuple[str, str]) -> None:
        """`churn_per_page` LIVE sessions end and are cleared; as many new meetings go LIVE."""
        now, k = self._sim_now(), self._churn_per_page
        live = self._index[app].live.items()
        for key in self._churn_rng.sample(live, min(k, len(live))):
            m = self._meetings[key[2]]
            self._end(m, now)
            self._clear(m, now)
        self._add_meetings(app, [self._new_uuid() for _ in range(k)], 1)

    def _control(self, method: str, path: str, body: bytes) -> _Answer:
        if path == "/_sim/stats":
            if method != "GET":
                return _Answer(405, _dumps({"ok": False, "error": "use GET"}))
            return _Answer(200, _dumps(self._stats()))
        for prefix, act in (
            ("/_sim/meetings/", self._control_meeting),
            ("/_sim/apps/", self._control_app),
        ):
            if path.startswith(prefix) and len(path) > len(prefix):
                if method != "POST":
                    return _Answer(405, _dumps({"ok": False, "error": "use POST"}))
                target = unquote(path[len(prefix) :])
                try:
                    cmd = json.loads(body or b"{}")
                    if not isinstance(cmd, dict):
                        raise ValueError("body must be a JSON object")
                    return _Answer(200, _dumps({"ok": True, **act(target, cmd)}))
                except KeyError as exc:
                    return _Answer(404, _dumps({"ok": False, "error": str(exc.args[0])}))
                except (ValueError, TypeError) as exc:
                    return _Answer(400, _dumps({"ok": False, "error": str(exc)}))
        return _Answer(404, _dumps({"ok": False, "error": "unknown control endpoint"}))

    def _stats(self) -> dict[str, Any]:
        with self._lock:
            self._advance_due(self._sim_now())
            return {
                "requests": self._total,
                "status_counts": {str(k): v for k, v in sorted(self._statuses.items())},
                "meetings": len(self._meetings),
                "live_sessions": sum(len(i.live.items()) for i in self._index.values()),
            } | ({} if self._hooks is None else {"webhooks": self._hooks.stats()})

    def _control_meeting(self, meeting_id: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/meetings/{id} {"fault", "participants", "end", "clear"}: the session."""
        if meeting_id not in self._meetings:
            raise KeyError(f"unknown meeting {meeting_id}")
        if "fault" in cmd:
            self.set_fault(meeting_id, cmd["fault"])
        if "participants" in cmd:
            n = cmd["participants"]
            if not isinstance(n, int) or isinstance(n, bool):
                raise ValueError("participants must be an integer")
            self.set_participants(meeting_id, n)
        if cmd.get("end"):
            self.end_session(meeting_id)
        if cmd.get("clear"):
            self.clear_session(meeting_id)
        return {"session": self.session(meeting_id)}

    def _control_app(self, target: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/apps/{account}/{app} {"fault": kind or null}: the listing's fault."""
        account, _, app = target.partition("/")
        if not account or not app or "/" in app:
            raise ValueError("expected /_sim/apps/{account_id}/{app_id}")
        if "fault" in cmd:
            self.set_listing_fault(cmd["fault"], account, app)
        with self._lock:
            return {"fault": self._listing_faults.get((account, app))}

    def _register(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)
                self._idle.notify_all()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "realtimekit-simulator"
    sys_version = ""
    wbufsize = 1 << 16  # headers and body leave in one send() at flush
    disable_nagle_algorithm = True
    fields: dict[str, str]
    raw_requestline: bytes

    def _sim(self) -> Simulator:
        return cast(_Server, self.server).sim

    def setup(self) -> None:
        super().setup()
        self._sim()._register(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._sim()._register(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def parse_request(self) -> bool:
        """Lean stand-in for the stdlib parser, which runs the email package on every request."""
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "latin-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            self.request_version = "HTTP/1.0"
            self.send_error(400, "Bad request line")
            return False
        self.command, self.path, self.request_version = words
        fields: dict[str, str] = {}
        while True:
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, sep, value = str(line, "latin-1").partition(":")
            if not sep or len(line) > 65536 or len(fields) > 100:
                self.send_error(400, "Bad header")
                return False
            fields[name.strip().lower()] = value.strip()
        self.fields = fields
        keep = words[2] == "HTTP/1.1" and fields.get("connection", "").lower() != "close"
        self.close_connection = not keep
        return True

    def do_GET(self) -> None:
        self._sim()._dispatch(self, self.command)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def send_answer(self, ans: _Answer) -> None:
        if ans.reset:  # abrupt close: linger 0 turns close() into a RST
            self.close_connection = True
            with contextlib.suppress(OSError):
                linger = struct.pack("ii", 1, 0)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            self.connection.close()
            return
        try:
            self.send_response(ans.status)
            self.send_header("Content-Type", ans.content_type)
            if ans.stream is not None and ans.length is None:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                length = len(ans.body) if ans.stream is None else ans.length
                self.send_header("Content-Length", str(length))
            for name, value in ans.headers:
                self.send_header(name, value)
            self.end_headers()
            if ans.stream is None:
                self.wfile.write(ans.body)
            else:
                self._send_stream(ans.stream, chunked=ans.length is None)
            self.wfile.flush()
        except OSError:  # the client went away (e.g. it timed out first)
            self.close_connection = True

    def _send_stream(self, stream: Iterable[bytes], chunked: bool) -> None:
        """Write each piece as it comes; an answer cut short by stop() closes the connection."""
        self.wfile.flush()
        for piece in stream:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            self.wfile.flush()
        if self._sim().stopping:
            self.close_connection = True
        elif chunked:
            self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sim = sim
        super().__init__(address, _Handler)

    def server_bind(self) -> None:  # skip HTTPServer's reverse DNS lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"probability must be within 0..1: {text}")
    return value


def _rate_limit(text: str) -> tuple[int, float]:
    n, sep, w = text.partition("/")
    try:
        limit, window = int(n), float(w)
    except ValueError:
        limit, window = -1, 0.0
    if not sep or limit < 0 or window <= 0:
        raise argparse.ArgumentTypeError(f"expected N/W such as 1200/300, got {text!r}")
    return limit, window


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _fields(text: str) -> tuple[str, ...]:
    names = tuple(f.strip() for f in text.split(",") if f.strip())
    if bad := [f for f in names if f not in PAGING_FIELDS]:
        raise argparse.ArgumentTypeError(f"unknown paging fields {bad}; known: {PAGING_FIELDS}")
    return names


def _private_key_file(path: str) -> rsa.RSAPrivateKey:
    try:
        pem = Path(path).read_bytes()
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {err.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise argparse.ArgumentTypeError(
            f"{path}: not an unencrypted PEM private key ({err})"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise argparse.ArgumentTypeError(f"{path}: a {type(key).__name__}, RSA expected")
    return key


def _epilog() -> str:
    kinds = ", ".join(sorted(FAULT_KINDS))
    return "\n".join(
        [
            "controls (no token needed):",
            '  POST /_sim/meetings/ID {"participants": N} | {"end": true} | {"clear": true}',
            '  POST /_sim/meetings/ID {"fault": KIND}      force a fault on its active-session',
            '  POST /_sim/apps/ACCOUNT/APP {"fault": KIND} on its /sessions (but not_found)',
            '  {"fault": null} clears; GET /_sim/stats; GET /-/healthy',
            textwrap.fill(f"fault kinds: {kinds}", 96, subsequent_indent="  "),
        ]
    )


_GENERAL_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--listen", {"type": _listen, "default": "127.0.0.1:8080",
        "help": "HOST:PORT to serve on; port 0 picks a free port (default: %(default)s)"}),
    ("--token", {"default": None,
        "help": "API token clients must send as 'Authorization: Bearer TOKEN' (default: "
        f"$CLOUDFLARE_API_TOKEN if set, else {DEMO_TOKEN!r})"}),
    ("--account-id", {"default": DEFAULT_ACCOUNT_ID, "help": "account id (default: %(default)s)"}),
    ("--app-id", {"default": DEFAULT_APP_ID, "help": "app id (default: %(default)s)"}),
    ("--meetings", {"type": int, "default": 5,
        "help": "number of meetings of the app (default: %(default)s)"}),
    ("--speed", {"type": float, "default": 1.0,
        "help": "simulated seconds per real second: 10 plays meetings' lives ten times faster "
        "(default: %(default)s)"}),
    ("--seed", {"type": int, "default": None,
        "help": "seed for reproducible ids and meeting lives (default: none, random)"}),
    ("--auto", {"action": argparse.BooleanOptionalAction, "default": True,
        "help": "meetings start, change and end on their own; with --no-auto only the control "
        "endpoints change them (default: %(default)s)"}),
    ("--all-live", {"action": "store_true",
        "help": "start every meeting with a LIVE session of one participant (default: off)"}),
    ("--rate-limit", {"type": _rate_limit, "default": None, "metavar": "N/W",
        "help": "at most N requests per W seconds per token, e.g. 1200/300 (default: none)"}),
]  # fmt: skip
_CONVENTION_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--page-base", {"type": int, "choices": (0, 1), "default": 1,
        "help": "number of the first /sessions page; with 1, page_no 0 is read as 1; with 0, "
        "page_no 1 is the second page (default: %(default)s)"}),
    ("--per-page-cap", {"type": int, "default": 100, "metavar": "N",
        "help": "serve at most N sessions per page whatever per_page asks (default: %(default)s)"}),
    ("--paging", {"choices": PAGING_MODES, "default": "full",
        "help": "the paging object: full; partial (without the --paging-drop fields); absent "
        "(default: %(default)s)"}),
    ("--paging-drop", {"type": _fields, "default": ("total_count",), "metavar": "FIELDS",
        "help": "comma-separated paging fields that --paging partial leaves out (default: "
        "total_count)"}),
    ("--unknown-meeting", {"choices": UNKNOWN_MEETING_MODES, "default": "no_session",
        "help": "active-session answer for a meeting id the app lacks: no_session = 404 'No "
        "active session found for meeting_id ID', not_found = 404 'Meeting not found' (default: "
        "%(default)s)"}),
    ("--churn-per-page", {"type": int, "default": 0, "metavar": "K",
        "help": "after each /sessions page, K LIVE sessions end and K new meetings go LIVE "
        "(default: %(default)s)"}),
]  # fmt: skip
_WEBHOOK_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--webhook-url", {"default": None, "metavar": "URL",
        "help": "POST signed meeting events here; {account_id} and {app_id} are replaced, e.g. "
        "http://127.0.0.1:9101/webhooks/{account_id}/{app_id} (default: none, no events)"}),
    ("--webhook-key-file", {"type": _private_key_file, "default": None, "metavar": "PEM",
        "help": "RSA private key to sign with; its public key is served at "
        f"{WELL_KNOWN_PATH} (default: a new 2048-bit key when --webhook-url is set)"}),
    ("--webhook-retries", {"type": int, "default": 3, "metavar": "N",
        "help": "retries of a delivery answered 5xx or failed on the network, after "
        f"{', '.join(f'{d:g}' for d in WEBHOOK_RETRY_DELAYS)} s (the last repeats) "
        "(default: %(default)s)"}),
]  # fmt: skip
_FAULT_FLAGS = (
    ("500", "HTTP 500"),
    ("503", "a 502 or 503 HTML page"),
    ("timeout", "an answer that comes after --slow-seconds"),
    ("reset", "a connection reset without an answer"),
    ("non-json", "a 200 HTML body"),
    ("wrong-types", "a 200 body with fields of the wrong JSON types"),
)
_PACE_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--latency", {"default": 0.0, "help": "added to every API answer (default: %(default)s)"}),
    ("--slow-seconds", {"default": 30.0,
        "help": "wait of a timeout fault (default: %(default)s)"}),
    ("--trickle-seconds", {"default": 1.0,
        "help": "pace of trickle (per byte) and endless (per chunk) answers (default: "
        "%(default)s)"}),
]  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description="A simulated Cloudflare RealtimeKit API on a real HTTP server, for demos, "
        "tests and benchmarks.\nOn start it prints its base_url, where the token came from and "
        "the meeting ids.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, options in _GENERAL_FLAGS:
        ap.add_argument(flag, **options)
    conventions = ap.add_argument_group("API conventions the spec leaves open")
    for flag, options in _CONVENTION_FLAGS:
        conventions.add_argument(flag, **options)
    hooks = ap.add_argument_group("webhooks")
    for flag, options in _WEBHOOK_FLAGS:
        hooks.add_argument(flag, **options)
    faults = ap.add_argument_group("random faults of API requests")
    for name, what in _FAULT_FLAGS:
        faults.add_argument(
            f"--fault-{name}",
            type=_probability,
            default=0.0,
            metavar="P",
            help=f"probability (0..1) of {what} (default: %(default)s)",
        )
    for flag, options in _PACE_FLAGS:
        faults.add_argument(flag, type=float, metavar="SECONDS", **options)
    return ap


def _token(flag: str | None) -> tuple[str, str]:
    """(token, where it came from): --token, else $CLOUDFLARE_API_TOKEN, else the demo token."""
    if flag:
        return flag, "--token"
    if env := os.environ.get("CLOUDFLARE_API_TOKEN"):
        return env, "$CLOUDFLARE_API_TOKEN"
    return DEMO_TOKEN, "built-in"


def _simulator(args: argparse.Namespace, token: str) -> Simulator:
    faults = FaultConfig(
        error_500=args.fault_500,
        error_503=args.fault_503,
        timeout=args.fault_timeout,
        reset=args.fault_reset,
        non_json=args.fault_non_json,
        wrong_types=args.fault_wrong_types,
        latency_seconds=args.latency,
        slow_seconds=args.slow_seconds,
        trickle_seconds=args.trickle_seconds,
    )
    return Simulator(
        token=token,
        account_id=args.account_id,
        app_id=args.app_id,
        meetings=args.meetings,
        auto=args.auto,
        live=args.all_live,
        speed=args.speed,
        seed=args.seed,
        faults=faults,
        rate_limit=args.rate_limit,
        page_base=args.page_base,
        per_page_cap=args.per_page_cap,
        paging=args.paging,
        paging_drop=args.paging_drop,
        unknown_meeting=args.unknown_meeting,
        churn_per_page=args.churn_per_page,
        webhook_url=args.webhook_url,
        webhook_key=args.webhook_key_file,
        webhook_retries=args.webhook_retries,
    )


def main(argv: list[str] | None = None) -> int:
    """Run a standalone simulator until SIGINT/SIGTERM."""
    args = _parser().parse_args(argv)
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    token, source = _token(args.token)
    try:
        sim = _simulator(args, token)
        sim.start(*args.listen)
    except (ValueError, OSError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    shown = f" token={token}" if source == "built-in" else ""  # only the public demo token
    if sim.webhook_key is not None:
        shown += f" webhook_key_url={sim.webhook_key_url}"
    print(
        f"RealtimeKit simulator: base_url={sim.base_url} token_source={source}{shown} "
        f"account_id={sim.account_id} app_id={sim.app_id} meetings={','.join(sim.meeting_ids)}",
        flush=True,
    )
    try:
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
