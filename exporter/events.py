"""RealtimeKit's webhook events: what a (verified) payload says, whether an app's events can be
trusted, and what an accepted event does.

    >>> effects = EventEffects(ports, count_refresh=stats.refreshed, clock=time.time)
    >>> effects.handle(("acc", "app"), parse_event(body))  # on the event loop
    >>> # meeting.started: the meeting LIVE at once (adopted first by a discovering app), and one
    >>> # prompt poll asked for; meeting.ended: ENDED with nobody in it; participants: a prompt poll

The effects touch the rest of the exporter only through :class:`EventPorts`, a handful of narrow
callables (find an app's client, read and push a meeting's state, adopt, ask a refresh) that the
runtime supplies: this module knows nothing of the scheduler, the Service or the receiver.
The receiver (:mod:`exporter.webhooks`) imports the parsing from here, never the other way round.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from exporter.client import ApiClient
from exporter.errors import ExporterError
from exporter.model import SAFE_ID, Answer, AppKey, MeetingKey, Session, _label, parse_timestamp
from exporter.store import MeetingState

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
#: Events whose payload an app-level pull keeps (recordings, livestreams, call quality).
PULLED: Final = frozenset(
    {"recording.statusUpdate", "livestreaming.statusUpdate", "meeting.participantLeft"}
)
#: JSON nesting deeper than this is malformed (real payloads are 3 levels deep).
MAX_DEPTH: Final = 32
#: Integer literals longer than this are malformed (no field needs more than a Unix time in ms).
MAX_INT_DIGITS: Final = 20


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
    # the whole payload, for events a pull keeps (PULLED); not part of what the event says
    body: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


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
        title=_label(_text(meeting, "title", "meeting.")),  # cut like the API's titles
        status=_text(meeting, "status", "meeting."),
        started_at=parse_timestamp(meeting.get("startedAt")),
        ended_at=parse_timestamp(meeting.get("endedAt")),
        reason=_text(doc, "reason", ""),
        peer_id=_text(participant, "peerId", "participant."),
        body=doc if name in PULLED else None,
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


#: Events after which the meeting's numbers are asked for again (one prompt, coalesced poll).
REFRESHING: Final = frozenset(
    {"meeting.started", "meeting.participantJoined", "meeting.participantLeft"}
)


def implied_answer(event: Event, previous: Answer | None) -> Answer | None:
    """The state a start or end event sets at once (``None``: the event sets nothing; the
    numbers always come from the REST API). A start is a LIVE session (the participants of the
    same session kept, else 0 until the prompt poll); an end is the session ENDED with nobody
    in it, as the API itself shows a session that just ended.

    An event about another session than the meeting's current one changes nothing: a late
    ``meeting.ended`` of an older session never ends the live one, and a late start of a
    session older than the current one never replaces it (polling reconciles either way)."""
    old = previous if isinstance(previous, Session) else None
    if old is not None and _stale(event, old):
        return None
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


def _stale(event: Event, current: Session) -> bool:
    """Whether ``event`` is about another session than ``current`` and must not replace it."""
    if event.session_id is None or event.session_id == current.id:
        return False
    if event.name == "meeting.ended":
        return True
    started, now = event.started_at, current.started_at
    return started is not None and now is not None and started < now


@dataclass(frozen=True)
class EventPorts:
    """What an event may touch, as narrow callables supplied by the runtime."""

    client_of: Callable[[AppKey], ApiClient | None]  # None: an app this process does not poll
    state_of: Callable[[MeetingKey], MeetingState | None]  # None: a meeting not exported here
    push: Callable[[MeetingKey, Answer, float], bool]  # a state an event implies, and when
    adopt: Callable[[MeetingKey, str | None], bool]  # export (title: for the app's filters)
    refresh: Callable[[MeetingKey, ApiClient], bool]  # ask for a prompt poll; False: coalesced
    pulled: Callable[[AppKey, Event], None] = lambda app, event: None  # an event a pull keeps


class EventEffects:
    """What accepted events do (on the event loop): a start or end changes the meeting at once,
    participant changes ask for a prompt poll. ``count_refresh(app)`` counts each prompt poll
    asked for; ``clock`` is the Unix time a pushed state is stamped with."""

    def __init__(
        self,
        ports: EventPorts,
        *,
        count_refresh: Callable[[AppKey], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ports = ports
        self._count_refresh = count_refresh
        self._clock = clock

    def handle(self, app_key: AppKey, event: Event) -> None:
        """Carry out what one accepted event changes."""
        ports = self._ports
        client = ports.client_of(app_key)
        if event.body is not None and client is not None:
            ports.pulled(app_key, event)
        if event.meeting_id is None or client is None:
            return
        key = MeetingKey(*app_key, event.meeting_id)
        state = ports.state_of(key)
        if state is None and event.name == "meeting.started" and ports.adopt(key, event.title):
            state = ports.state_of(key)
        if state is None:
            return  # not a meeting this process exports
        answer = implied_answer(event, state.answer)
        if answer is not None:
            ports.push(key, answer, self._clock())
        if event.name in REFRESHING and ports.refresh(key, client):
            self._count_refresh(app_key)
