"""RealtimeKit's signed webhooks: verify, de-duplicate, parse, and hand the event on.

    >>> receiver = WebhookReceiver(keys=KeySource(key), apps=lambda: {("acc", "app")},
    ...                            on_event=sink, stats=WebhookStats())
    >>> # POST /webhooks/acc/app, header rtk-signature: base64(RSA-SHA256(raw body))
    >>> # → 200 "accepted", and sink(("acc", "app"), Event(name="meeting.started", ...))

A webhook only *triggers* work; polling stays the source of truth and corrects what push missed.
The receiver is a WSGI app for its own listener. For each request, in this order:

==============================  ======  ===================================================
check                           status  result (``realtimekit_webhook_requests_total``)
==============================  ======  ===================================================
path not ``/webhooks/{a}/{b}``  404     (not counted)
method not ``POST``             405     (not counted)
app another shard's             200     (not counted, nothing forwarded)
app not configured              404     ``unknown_app``
body over ``max_body_bytes``    413     ``too_large``
signature missing or bad        401     ``bad_signature`` (checked before anything is parsed)
body or delivery id seen        200     ``duplicate`` (no effect)
JSON malformed, event unknown   400     ``malformed`` (RealtimeKit does not retry a 4xx)
otherwise                       200     ``accepted``: ``on_event(app, event)`` is called
==============================  ======  ===================================================

The signature covers the body only, not the path, and the delivery id (``rtk-uuid``) is not signed:
a genuine delivery could be replayed to another app's path, or with a new id. Deliveries are
therefore remembered by a hash of the signed body (and by their id) across all apps, so a replay
is a duplicate however it is dressed.

Depends only on the standard library, ``cryptography`` and the exporter's own modules.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from exporter.errors import ConfigError, ExporterError
from exporter.events import Event, MalformedEvent, WebhookHealth, parse_event
from exporter.files import parse_public_key
from exporter.model import SAFE_ID, AppKey

if TYPE_CHECKING:  # imported with the first key (parse_public_key): ~7 MiB a process without
    # webhooks does not need
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey as PublicKey

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]

DEFAULT_MAX_BODY_BYTES: Final = 1 << 20
#: A failed signature triggers at most one key re-fetch per this many seconds.
REFETCH_INTERVAL_SECONDS: Final = 600.0

#: Values of the ``result`` label of ``realtimekit_webhook_requests_total``.
RESULTS: Final = ("accepted", "duplicate", "bad_signature", "malformed", "unknown_app", "too_large")

#: A signature header longer than this is bad (a 4096-bit signature is 684 base64 characters).
MAX_SIGNATURE_CHARS: Final = 2048
#: Distinct unknown (account_id, app_id) pairs counted under their own labels; the rest, and
#: every unsafe pair, are counted under ``("", "")`` so forged paths cannot grow the series.
MAX_UNKNOWN_APP_LABELS: Final = 10
UNLABELLED: Final = ("", "")


# --- Keys and signatures -------------------------------------------------------------------


def parse_well_known(body: bytes, *, source: str = "webhooks.json") -> PublicKey:
    """The key of a ``{"success": true, "data": {"publicKey": "<PEM>"}}`` document."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise ConfigError([f"{source}: not valid JSON ({err})"]) from None
    data = doc.get("data") if isinstance(doc, dict) else None
    pem = data.get("publicKey") if isinstance(data, dict) else None
    if not isinstance(pem, str) or not pem:
        raise ConfigError([f"{source}: field data.publicKey is missing or not a string"])
    return parse_public_key(pem.encode(), source=f"{source} data.publicKey")


def verify(key: PublicKey, body: bytes, signature_b64: str) -> bool:
    """Whether ``signature_b64`` signs exactly ``body``; anything malformed is ``False``."""
    if not signature_b64 or len(signature_b64) > MAX_SIGNATURE_CHARS:
        return False
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        raw = base64.b64decode(signature_b64.strip(), validate=True)
        key.verify(raw, body, padding.PKCS1v15(), hashes.SHA256())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


class KeySource:
    """The current public key, and its re-fetch when a signature fails.

    ``fetch`` (supplied by the caller) returns the well-known JSON document and raises an
    :class:`~exporter.errors.ExporterError` when it cannot. Re-fetching after failures is limited to
    once per ``min_interval`` seconds of ``clock`` (10 minutes), so forged requests cannot make the
    exporter hammer the key URL. Thread-safe: the receiver's threads read and claim, the event loop
    fetches.
    """

    def __init__(
        self,
        key: PublicKey | None = None,
        *,
        fetch: Callable[[], Awaitable[bytes]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = REFETCH_INTERVAL_SECONDS,
    ) -> None:
        self._key = key
        self._fetch = fetch
        self._clock = clock
        self._min_interval = min_interval
        self._last_attempt: float | None = None
        self._lock = threading.Lock()

    @property
    def key(self) -> PublicKey | None:
        return self._key

    def verify(self, body: bytes, signature_b64: str) -> bool:
        """:func:`verify` with the current key; ``False`` while there is none."""
        key = self._key
        return key is not None and verify(key, body, signature_b64)

    async def refresh(self) -> None:
        """Fetch the key now (at start-up). Raises ``ConfigError`` for an unusable document and
        whatever ``fetch`` raises; the old key stays in use on failure."""
        if self._fetch is None:
            raise ConfigError(["webhooks: no public key URL to fetch the key from"])
        with self._lock:
            self._last_attempt = self._clock()
        self._key = parse_well_known(await self._fetch())

    def claim_refetch(self) -> bool:
        """``True`` at most once per ``min_interval`` (and never without ``fetch``): the caller
        may then run :meth:`refetch`. Counts :meth:`refresh` as an attempt."""
        with self._lock:
            now = self._clock()
            due = self._last_attempt is None or now - self._last_attempt >= self._min_interval
            if self._fetch is None or not due:
                return False
            self._last_attempt = now
            return True

    async def refetch(self) -> bool:
        """Re-fetch after :meth:`claim_refetch` said yes. Never raises: a failure is logged and the
        old key kept. ``True`` when the key changed."""
        if self._fetch is None:
            return False
        old = self._key
        try:
            new = parse_well_known(await self._fetch())
        except ExporterError as err:
            log.warning("webhook public key re-fetch failed, keeping the old key: %s", err)
            return False
        self._key = new
        changed = old is None or old.public_numbers() != new.public_numbers()
        log.info("webhook public key re-fetched (%s)", "changed" if changed else "unchanged")
        return changed


# --- De-duplication, counters, health ------------------------------------------------------


class Deduper:
    """Deliveries seen in the last ``ttl_seconds`` (24 h), remembered by a hash of their signed
    body and of their delivery id: at most ``max_ids`` hashes (the oldest is forgotten first),
    16 bytes each, so memory stays bounded (about 35 MB when full). Thread-safe."""

    def __init__(
        self,
        *,
        ttl_seconds: float = 86_400.0,
        max_ids: int = 200_000,  # 100,000 deliveries with an id
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_ids
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def seen_before(self, *keys: str | bytes) -> bool:
        """Whether any of ``keys`` (a delivery id, a body) was seen within the window;
        remembers them all either way."""
        hashes = [_digest(key) for key in keys]
        with self._lock:
            now = self._clock()
            while self._seen and next(iter(self._seen.values())) <= now - self._ttl:
                self._seen.popitem(last=False)
            seen = any(h in self._seen for h in hashes)
            for h in hashes:
                self._seen[h] = self._seen.get(h, now)  # keeps its place: forgotten 24 h after
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)
            return seen


def _digest(key: str | bytes) -> bytes:
    """16 bytes standing for a delivery id (``str``) or a body (``bytes``), never both."""
    data = b"body\0" + key if isinstance(key, bytes) else b"id\0" + key.encode()
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class WebhookCounts:
    """One reading of :class:`WebhookStats`, as plain dicts."""

    requests: dict[tuple[str, str, str], int]  # (account_id, app_id, result) → count
    events: dict[tuple[str, str, str], int]  # (account_id, app_id, event) → count
    last_event: dict[AppKey, float]  # Unix time of the last accepted event
    refreshes: dict[AppKey, int]  # polls asked for by events


class WebhookStats:
    """Counters of the receiver, for the collector. Thread-safe; one per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str, str]] = Counter()
        self._events: Counter[tuple[str, str, str]] = Counter()
        self._last: dict[AppKey, float] = {}
        self._unknown: set[AppKey] = set()
        self._refreshes: Counter[AppKey] = Counter()

    def request(self, app: AppKey, result: str) -> None:
        if result not in RESULTS:
            raise ValueError(f"unknown webhook result {result!r}")
        with self._lock:
            self._requests[(*app, result)] += 1

    def unknown_app(self, app: AppKey) -> None:
        """An ``unknown_app`` request: under its own labels only while they are safe ids and
        fewer than :data:`MAX_UNKNOWN_APP_LABELS` pairs have been seen."""
        safe = all(SAFE_ID.fullmatch(part) for part in app)
        with self._lock:
            if safe and (app in self._unknown or len(self._unknown) < MAX_UNKNOWN_APP_LABELS):
                self._unknown.add(app)
            else:
                app = UNLABELLED
            self._requests[(*app, "unknown_app")] += 1

    def event(self, app: AppKey, name: str, wall: float) -> None:
        with self._lock:
            self._events[(*app, name)] += 1
            self._last[app] = wall

    def refreshed(self, app: AppKey) -> None:
        with self._lock:
            self._refreshes[app] += 1

    def snapshot(self) -> WebhookCounts:
        with self._lock:
            return WebhookCounts(
                dict(self._requests), dict(self._events), dict(self._last), dict(self._refreshes)
            )


# --- The WSGI app --------------------------------------------------------------------------


class _Answer(NamedTuple):
    status: str
    text: str
    headers: tuple[tuple[str, str], ...] = ()


_ANSWERS: Final = {
    "accepted": _Answer("200 OK", "accepted"),
    "duplicate": _Answer("200 OK", "duplicate"),
    "bad_signature": _Answer("401 Unauthorized", "missing or invalid signature"),
    "malformed": _Answer("400 Bad Request", "malformed event"),
    "unknown_app": _Answer("404 Not Found", "unknown app"),
    "too_large": _Answer("413 Content Too Large", "body too large"),
}
_NOT_FOUND: Final = _Answer("404 Not Found", "not found")
_ELSEWHERE: Final = _Answer("200 OK", "not this shard")
_NOT_POST: Final = _Answer("405 Method Not Allowed", "method not allowed", (("Allow", "POST"),))


class _TooLarge(Exception):
    pass


def route(path: str) -> AppKey | None:
    """``(account_id, app_id)`` of ``/webhooks/{account_id}/{app_id}``, else ``None``."""
    parts = path.split("/")
    if len(parts) == 4 and parts[:2] == ["", "webhooks"] and parts[2] and parts[3]:
        return (parts[2], parts[3])
    return None


def read_body(environ: dict[str, Any], max_bytes: int) -> bytes:
    """The request body, at most ``max_bytes`` of it (``_TooLarge`` beyond).

    Content-Length is checked first. Only a server that ends the stream itself
    (``wsgi.input_terminated``) is read past it; elsewhere, reading more than Content-Length would
    wait for bytes an honest client never sends (PEP 3333), so a lying length only truncates.
    """
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared and not declared.strip().isdigit():
        raise MalformedEvent(f"Content-Length {declared[:20]!r} is not a number")
    length = int(declared) if declared else 0
    if length > max_bytes:
        raise _TooLarge
    stream = environ["wsgi.input"]
    want = max_bytes + 1 if environ.get("wsgi.input_terminated") else length
    chunks: list[bytes] = []
    got = 0
    while got < want:  # each read returns data or b"" at the end, so at most `want` rounds
        chunk = stream.read(want - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    if got > max_bytes:
        raise _TooLarge
    return b"".join(chunks)


def _header(environ: dict[str, Any], name: str) -> str:
    """``rtk-NAME``, or Dyte's ``dyte-NAME``."""
    value = environ.get(f"HTTP_RTK_{name}") or environ.get(f"HTTP_DYTE_{name}") or ""
    return str(value)


class WebhookReceiver:
    """The WSGI app of the webhook listener (see the module docstring for the checks).

    ``apps`` gives the apps with webhooks enabled (read on every request, so a reload applies at
    once). ``on_event(app, event)`` runs in the request's thread and must not block: the runtime's
    sink hands the event to the event loop with ``loop.call_soon_threadsafe`` and returns, so the
    answer goes out at once and the work is done after answering. ``schedule(coroutine)`` runs a
    key re-fetch on the loop without waiting (``lambda c: asyncio.run_coroutine_threadsafe(c,
    loop)``); it is called at most once per 10 minutes, after a bad signature. The request that
    failed is still answered 401: RealtimeKit does not retry it, and polling reconciles.
    """

    def __init__(
        self,
        *,
        keys: KeySource,
        apps: Callable[[], Collection[AppKey]],
        on_event: Callable[[AppKey, Event], None],
        stats: WebhookStats,
        health: WebhookHealth | None = None,
        deduper: Deduper | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        schedule: Callable[[Coroutine[Any, Any, bool]], object] | None = None,
        wall: Callable[[], float] = time.time,
        elsewhere: Callable[[], Collection[AppKey]] | None = None,
    ) -> None:
        self.keys = keys
        self.stats = stats
        self.health = health
        self.deduper = deduper if deduper is not None else Deduper()
        self._apps = apps
        self._on_event = on_event
        self._max = max_body_bytes
        self._schedule = schedule
        self._wall = wall
        self._elsewhere = elsewhere

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        answer = self._answer(environ)
        body = (answer.text + "\n").encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *answer.headers,
        ]
        start_response(answer.status, headers)
        return [body]

    def _answer(self, environ: dict[str, Any]) -> _Answer:
        app = route(environ.get("PATH_INFO") or "/")
        if app is None:
            return _NOT_FOUND
        if environ.get("REQUEST_METHOD") != "POST":
            return _NOT_POST
        if app not in self._apps():
            if self._elsewhere is not None and app in self._elsewhere():
                log.debug("webhook for %s/%s: another shard's app, not forwarded", *app)
                return _ELSEWHERE  # 2xx: RealtimeKit does not retry a 404
            self.stats.unknown_app(app)
            return _ANSWERS["unknown_app"]
        result = self._deliver(app, environ)
        self.stats.request(app, result)
        log.debug("webhook for %s/%s: %s", app[0], app[1], result)
        return _ANSWERS[result]

    def _deliver(self, app: AppKey, environ: dict[str, Any]) -> str:
        try:
            body = read_body(environ, self._max)
        except _TooLarge:
            return "too_large"
        except MalformedEvent as err:
            log.info("webhook for %s/%s rejected: %s", app[0], app[1], err)
            return "malformed"
        if not self.keys.verify(body, _header(environ, "SIGNATURE")):
            self._bad_signature(app)
            return "bad_signature"
        delivery = _header(environ, "UUID")  # not signed: the body's hash is what counts
        if self.deduper.seen_before(body, *([delivery] if delivery else [])):
            if self.health is not None:
                self.health.verified(app)
            return "duplicate"
        try:
            event = parse_event(body)
        except MalformedEvent as err:
            log.info("webhook for %s/%s rejected: %s", app[0], app[1], err)
            if self.health is not None:
                self.health.verified(app)
            return "malformed"
        self.stats.event(app, event.name, self._wall())
        if self.health is not None:
            self.health.accepted(app)
        self._on_event(app, event)
        return "accepted"

    def _bad_signature(self, app: AppKey) -> None:
        if self.health is not None:
            self.health.bad_signature(app)
        if self._schedule is not None and self.keys.claim_refetch():
            self._schedule(self.keys.refetch())
