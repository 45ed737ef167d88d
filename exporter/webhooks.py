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
app not configured              404     ``unknown_app``
body over ``max_body_bytes``    413     ``too_large``
signature missing or bad        401     ``bad_signature`` (checked before anything is parsed)
delivery id seen before         200     ``duplicate`` (no effect)
JSON malformed, event unknown   400     ``malformed`` (RealtimeKit does not retry a 4xx)
otherwise                       200     ``accepted``: ``on_event(app, event)`` is called
==============================  ======  ===================================================

The signature covers the body only, not the path: a genuine delivery could be replayed to another
app's path. Delivery ids are therefore remembered across all apps, so a replay is a duplicate.

Depends only on the standard library, ``cryptography`` and the exporter's own modules.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from exporter.errors import ConfigError, ExporterError
from exporter.health import AppKey
from exporter.model import Answer, Session, parse_timestamp

log = logging.getLogger(__name__)

PublicKey = rsa.RSAPublicKey
StartResponse = Callable[..., Any]

DEFAULT_PUBLIC_KEY_URL: Final = "https://api.realtime.cloudflare.com/.well-known/webhooks.json"
DEFAULT_MAX_BODY_BYTES: Final = 1 << 20
#: A failed signature triggers at most one key re-fetch per this many seconds.
REFETCH_INTERVAL_SECONDS: Final = 600.0

EVENTS: Final = (
    "meeting.started",
    "meeting.ended",
    "meeting.participantJoined",
    "meeting.participantLeft",
    "recording.statusUpdate",
    "livestreaming.statusUpdate",
    "meeting.chatSynced",
    "meeting.transcript",
    "meeting.summary",
)
#: Values of the ``result`` label of ``realtimekit_webhook_requests_total``.
RESULTS: Final = ("accepted", "duplicate", "bad_signature", "malformed", "unknown_app", "too_large")

SAFE_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: JSON nesting deeper than this is malformed (real payloads are 3 levels deep).
MAX_DEPTH: Final = 32
#: Integer literals longer than this are malformed (no field needs more than a Unix time in ms).
MAX_INT_DIGITS: Final = 20
#: A signature header longer than this is bad (a 4096-bit signature is 684 base64 characters).
MAX_SIGNATURE_CHARS: Final = 2048
#: Distinct unknown (account_id, app_id) pairs counted under their own labels; the rest, and
#: every unsafe pair, are counted under ``("", "")`` so forged paths cannot grow the series.
MAX_UNKNOWN_APP_LABELS: Final = 10
UNLABELLED: Final = ("", "")


# --- Keys and signatures -------------------------------------------------------------------


def load_public_key(pem: bytes, *, source: str = "public key") -> PublicKey:
    """An RSA public key from PEM bytes; ``ConfigError`` naming ``source`` when unusable."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ConfigError([f"{source}: not a PEM public key ({err})"]) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError([f"{source}: a {type(key).__name__} key, RSA expected"])
    return key


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
    return load_public_key(pem.encode(), source=f"{source} data.publicKey")


def verify(key: PublicKey, body: bytes, signature_b64: str) -> bool:
    """Whether ``signature_b64`` signs exactly ``body``; anything malformed is ``False``."""
    if not signature_b64 or len(signature_b64) > MAX_SIGNATURE_CHARS:
        return False
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


# --- Events --------------------------------------------------------------------------------


class MalformedEvent(ExporterError):
    """A verified body that is not a usable event; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Event:
    """What the effects need of one webhook payload. Times are Unix seconds."""

    name: str  # one of EVENTS
    meeting_id: str | None  # always set for meeting.* events
    session_id: str | None = None
    title: str | None = None
    status: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    reason: str | None = None  # meeting.ended: HOST_ENDED_MEETING | ALL_PARTICIPANTS_LEFT
    peer_id: str | None = None  # participant events


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer with {len(text)} digits is too large")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:30]} is out of range")
    return value


def _reject_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def _check_depth(doc: Any) -> None:
    """Raise when ``doc`` nests deeper than :data:`MAX_DEPTH` (stops at the first too deep)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise MalformedEvent(f"JSON nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children)


def _load(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(
            body,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_reject_constant,
        )
    except RecursionError:
        raise MalformedEvent(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError and the hooks above
        raise MalformedEvent(f"body is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise MalformedEvent("body is not a JSON object")
    _check_depth(doc)
    return doc


def _text(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MalformedEvent(f"field {where}{key} is not a string: {repr(value)[:40]}")


def _safe_id(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = _text(obj, key, where)
    if value is not None and not SAFE_ID.fullmatch(value):
        raise MalformedEvent(f"field {where}{key} is not a safe id: {value[:40]!r}")
    return value


def _object(doc: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = doc.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise MalformedEvent(f"field {key} is not an object")


def parse_event(body: bytes) -> Event:
    """An :class:`Event` from a (verified) camelCase payload; :class:`MalformedEvent` otherwise.

    >>> parse_event(b'{"event": "meeting.ended", "reason": "ALL_PARTICIPANTS_LEFT",'
    ...     b' "meeting": {"id": "m1", "sessionId": "s1", "endedAt": "2025-01-01T10:00:00Z"}}')
    Event(name='meeting.ended', meeting_id='m1', session_id='s1', ..., ended_at=1735725600.0, ...)

    ``meeting`` (with a safe ``id``) is required for ``meeting.*`` events; other events may lack it.
    Unusable optional values (a timestamp that is not ISO-8601) count as missing.
    """
    doc = _load(body)
    name = doc.get("event")
    if name not in EVENTS:
        raise MalformedEvent(f"field event is not a known event: {repr(name)[:60]}")
    meeting = _object(doc, "meeting")
    participant = _object(doc, "participant") or {}
    if meeting is None:
        if name.startswith("meeting."):
            raise MalformedEvent(f"field meeting is missing in a {name} event")
        meeting = {}
    meeting_id = _safe_id(meeting, "id", "meeting.")
    if meeting_id is None and name.startswith("meeting."):
        raise MalformedEvent(f"field meeting.id is missing in a {name} event")
    return Event(
        name=name,
        meeting_id=meeting_id,
        session_id=_safe_id(meeting, "sessionId", "meeting."),
        title=_text(meeting, "title", "meeting."),
        status=_text(meeting, "status", "meeting."),
        started_at=parse_timestamp(meeting.get("startedAt")),
        ended_at=parse_timestamp(meeting.get("endedAt")),
        reason=_text(doc, "reason", ""),
        peer_id=_text(participant, "peerId", "participant."),
    )


# --- De-duplication, counters, health ------------------------------------------------------


class Deduper:
    """Delivery ids seen in the last ``ttl_seconds`` (24 h), at most ``max_ids`` of them (the oldest
    is forgotten first). Ids longer than 64 characters are kept as their SHA-256. Thread-safe."""

    def __init__(
        self,
        *,
        ttl_seconds: float = 86_400.0,
        max_ids: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_ids
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def seen_before(self, delivery_id: str) -> bool:
        """Whether ``delivery_id`` was seen within the window; remembers it either way."""
        key = (
            delivery_id
            if len(delivery_id) <= 64
            else hashlib.sha256(delivery_id.encode()).hexdigest()
        )
        with self._lock:
            now = self._clock()
            while self._seen and next(iter(self._seen.values())) <= now - self._ttl:
                self._seen.popitem(last=False)
            if key in self._seen:
                return True
            self._seen[key] = now
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)
            return False


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


class WebhookHealth:
    """Whether an app's webhooks can be trusted to report changes, so its routine polling may slow
    down to ``reconcile_interval_seconds``.

    The rule, per app:

    - unknown (not healthy) until the first accepted event;
    - unhealthy while the last ``max_bad_signatures`` (5) or more requests to its path failed
      verification in a row; any verified request ends the streak;
    - unhealthy when it has live sessions (as polling saw them; the caller passes
      ``has_live_sessions``) and no event was accepted for ``quiet_seconds`` (suggested: twice the
      reconcile interval). Without live sessions silence is expected and does not count.

    Failing is always safe: an unhealthy app is polled at its normal interval. A forger can make
    an app unhealthy with bad signatures, which costs budget but never changes a metric.
    Thread-safe; the only time source is ``clock``.
    """

    def __init__(
        self,
        *,
        quiet_seconds: float,
        max_bad_signatures: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._quiet = quiet_seconds
        self._max_bad = max_bad_signatures
        self._clock = clock
        self._lock = threading.Lock()
        self._streak: dict[AppKey, int] = {}
        self._last_accepted: dict[AppKey, float] = {}

    def verified(self, app: AppKey) -> None:
        with self._lock:
            self._streak[app] = 0

    def accepted(self, app: AppKey) -> None:
        with self._lock:
            self._streak[app] = 0
            self._last_accepted[app] = self._clock()

    def bad_signature(self, app: AppKey) -> None:
        with self._lock:
            self._streak[app] = self._streak.get(app, 0) + 1

    def healthy(self, app: AppKey, *, has_live_sessions: bool) -> bool:
        with self._lock:
            last = self._last_accepted.get(app)
            if last is None or self._streak.get(app, 0) >= self._max_bad:
                return False
            return not has_live_sessions or self._clock() - last <= self._quiet


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
        delivery = _header(environ, "UUID")
        if delivery and self.deduper.seen_before(delivery):
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


#: Events after which the meeting's numbers are asked for again (one prompt, coalesced poll).
REFRESHING: Final = frozenset(
    {"meeting.started", "meeting.participantJoined", "meeting.participantLeft"}
)


def implied_answer(event: Event, previous: Answer | None) -> Answer | None:
    """The state a start or end event sets at once (``None``: the event sets nothing; the
    numbers always come from the REST API). A start is a LIVE session (the participants of the
    same session kept, else 0 until the prompt poll); an end is the session ENDED with nobody
    in it, as the API itself shows a session that just ended."""
    old = previous if isinstance(previous, Session) else None
    same = old is not None and (event.session_id is None or old.id == event.session_id)
    if event.name == "meeting.started":
        return Session(
            id=event.session_id or (old.id if old is not None else "unknown"),
            status="LIVE",
            live_participants=old.live_participants if same and old is not None else 0.0,
            max_concurrent_participants=old.max_concurrent_participants if same and old else None,
            minutes_consumed=old.minutes_consumed if same and old is not None else None,
            started_at=event.started_at,
            type=old.type if old is not None else None,
            meeting_display_name=event.title or (old.meeting_display_name if old else None),
            associated_id=event.meeting_id,
        )
    if event.name == "meeting.ended":
        base = old if same and old is not None else None
        return Session(
            id=event.session_id or (old.id if old is not None else "unknown"),
            status="ENDED",
            live_participants=0.0,
            max_concurrent_participants=base.max_concurrent_participants if base else None,
            minutes_consumed=base.minutes_consumed if base else None,
            started_at=event.started_at or (base.started_at if base else None),
            type=base.type if base else None,
            meeting_display_name=event.title or (base.meeting_display_name if base else None),
            associated_id=event.meeting_id,
        )
    return None
