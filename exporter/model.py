"""Typed results of a poll and the pure functions that turn API answers into them.

    >>> parse_active_session(200, "application/json", b'{"success": true, "data": {"id": "s1", '
    ...     b'"status": "LIVE", "live_participants": 3}}')
    Session(id='s1', status='LIVE', live_participants=3.0, ...)
    >>> parse_active_session(404, "application/json",
    ...     b'{"success": false, "error": {"code": 404, "message": "No active session found"}}')
    NO_ACTIVE_SESSION

Nothing here does I/O: the client hands over status, content type and body, and gets a
:class:`Session`, :data:`NO_ACTIVE_SESSION`, or an :class:`~exporter.errors.ApiError`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, TypeAlias

from exporter.errors import ApiError

SESSION_STATUSES: Final = ("LIVE", "ENDED")

#: Label values (session id, type, display name) longer than this are cut, and end in the marker.
MAX_LABEL_CHARS: Final = 1024
TRUNCATED: Final = "…[truncated]"
#: Sane upper bounds: a value beyond them is not a measurement.
MAX_PARTICIPANTS: Final = 10**7
MAX_MINUTES: Final = 10**12 / 60  # consumed minutes, so that the seconds stay below 10^12
MAX_COUNT: Final = 10**9  # paging counts and offsets
#: The fields of ``paging`` that are read, in :class:`Paging`'s order.
PAGING_FIELDS: Final = ("total_count", "start_offset", "end_offset", "per_page", "page_no")
#: What an id (account, app, meeting) must look like to be used as a label value or in a request
#: path: the one rule of the config, listings and webhooks.
SAFE_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: API error messages are cut to this length before they reach a log line or an error.
MAX_MESSAGE_CHARS: Final = 300


#: One app: ``(account_id, app_id)``.
AppKey: TypeAlias = tuple[str, str]
#: Identity of a token, as :attr:`exporter.config.TokenRef.source`: ``(env, None)`` or
#: ``(None, file)``; apps naming the same one share one request budget.
TokenSource: TypeAlias = tuple[str | None, str | None]


@dataclass(frozen=True, slots=True, order=True)
class MeetingKey:
    """One exported meeting: the ids that place it in the API and on every series."""

    account_id: str
    app_id: str
    meeting_id: str

    @property
    def app(self) -> AppKey:
        return (self.account_id, self.app_id)


def meeting_path(key: MeetingKey) -> str:
    """A meeting as one string, ``"account/app/meeting"`` (job ids, shard hashing, the HA
    mirror); :func:`parse_meeting_path` reads it back.

    >>> meeting_path(MeetingKey("acc", "app", "m-1"))
    'acc/app/m-1'
    """
    return f"{key.account_id}/{key.app_id}/{key.meeting_id}"


def parse_meeting_path(text: str) -> MeetingKey:
    """The inverse of :func:`meeting_path`. Raises ValueError unless ``text`` is three safe
    ids (:data:`SAFE_ID`)."""
    parts = text.split("/")
    if len(parts) != 3 or not all(SAFE_ID.fullmatch(p) for p in parts):
        shown = repr(text) if len(text) <= 60 else repr(text[:60]) + "…"
        raise ValueError(f"invalid meeting path {shown}: want account/app/meeting of safe ids")
    return MeetingKey(*parts)


@dataclass(frozen=True, slots=True)
class Session:
    """The parts of an active-session answer the exporter uses. Optional fields may be ``None``."""

    id: str
    status: str
    live_participants: float
    max_concurrent_participants: float | None = None
    minutes_consumed: float | None = None
    started_at: float | None = None  # Unix time
    type: str | None = None
    meeting_display_name: str | None = None
    associated_id: str | None = None
    created_at: float | None = None  # Unix time


def active_rank(session: Session) -> tuple[bool, float]:
    """Orders a meeting's live sessions as its active-session endpoint answers: the one of type
    ``meeting`` before ``livestream`` or ``participant`` ones, then the newest (``started_at``,
    else ``created_at``). A listing may hold several sessions of one meeting; the largest rank
    is the one exported and counted."""
    return (session.type == "meeting", session.started_at or session.created_at or 0.0)


@dataclass(frozen=True, slots=True)
class InvalidSession:
    """A session of a listing that could not be read; the listing's other sessions still count."""

    index: int  # position in its page
    page: int  # page_no of that page
    meeting_id: str | None  # its associated_id, when readable and a safe id
    message: str  # what is wrong, naming the field


class _NoActiveSession(Enum):
    NO_ACTIVE_SESSION = "NO_ACTIVE_SESSION"

    def __repr__(self) -> str:
        return self.value


#: The valid answer "nobody is in the meeting" (HTTP 404 in RealtimeKit's error envelope).
NO_ACTIVE_SESSION: Final = _NoActiveSession.NO_ACTIVE_SESSION
NoActiveSession = _NoActiveSession

Answer = Session | _NoActiveSession


def parse_timestamp(value: Any) -> float | None:
    """ISO-8601 string to Unix time; ``None`` for anything unusable (missing, ``"null"``, garbage).

    A timestamp without a zone is taken as UTC, which is what the API speaks.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _number(data: dict[str, Any], key: str, limit: float) -> float | None:
    """A finite number in ``[0, limit]``; ``None`` for anything else (huge integers included)."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return number if math.isfinite(number) and 0 <= number <= limit else None


def _string(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _label(value: str | None) -> str | None:
    """A label value, cut to :data:`MAX_LABEL_CHARS` with a visible marker."""
    if value is None or len(value) <= MAX_LABEL_CHARS:
        return value
    return value[:MAX_LABEL_CHARS] + TRUNCATED


def _show(value: Any) -> str:
    """A short, safe rendering of a bad value for an error message."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int too long to print, or nested too deep
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:40] + "…"


def _invalid(data: dict[str, Any], key: str, expected: str, where: str) -> ApiError:
    if key not in data:
        return ApiError("invalid_response", f"required field {where}.{key} is missing")
    shown = _show(data[key])
    return ApiError("invalid_response", f"required field {where}.{key} is not {expected}: {shown}")


def _required_number(data: dict[str, Any], key: str, limit: float, where: str) -> float:
    number = _number(data, key, limit)
    if number is not None:
        return number
    if _number(data, key, math.inf) is None:
        raise _invalid(data, key, "a non-negative number", where)
    raise _invalid(data, key, f"a number up to {limit:g}", where)


def parse_session(data: Any, where: str = "data") -> Session:
    """Build a :class:`Session` from the ``data`` object of a 200 answer.

    Unknown fields are ignored, optional ones may be missing (or of a wrong type or out of range:
    then they count as missing); a missing, mistyped or out-of-range required field (``id``,
    ``status`` — ``LIVE`` or ``ENDED`` —, ``live_participants``) raises
    ``ApiError("invalid_response")`` naming the field (``where`` is its parent's path). Label
    values longer than :data:`MAX_LABEL_CHARS` are cut, ending in :data:`TRUNCATED`.
    """
    if not isinstance(data, dict):
        raise ApiError("invalid_response", f"field {where} is not an object")
    session_id = _string(data, "id")
    if not session_id:
        raise _invalid(data, "id", "a non-empty string", where)
    status = _string(data, "status")
    if status not in SESSION_STATUSES:
        raise _invalid(data, "status", "LIVE or ENDED", where)
    live = _required_number(data, "live_participants", MAX_PARTICIPANTS, where)
    return Session(
        id=_label(session_id) or session_id,
        status=status,
        live_participants=live,
        max_concurrent_participants=_number(data, "max_concurrent_participants", MAX_PARTICIPANTS),
        minutes_consumed=_number(data, "minutes_consumed", MAX_MINUTES),
        started_at=parse_timestamp(data.get("started_at")),
        type=_label(_string(data, "type")),
        meeting_display_name=_label(_string(data, "meeting_display_name")),
        associated_id=_string(data, "associated_id"),
        created_at=parse_timestamp(data.get("created_at")),
    )


def _cut(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[:MAX_MESSAGE_CHARS] + TRUNCATED


def error_message(body: Any) -> str | None:
    """The message of either error envelope: RealtimeKit ``error{code,message}`` or Cloudflare
    ``errors[{code,message}]``, cut to :data:`MAX_MESSAGE_CHARS`. ``None`` when the body is
    neither."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return _cut(str(err["message"]))
    errs = body.get("errors")
    if isinstance(errs, list) and errs and isinstance(errs[0], dict):
        msg = errs[0].get("message")
        code = errs[0].get("code")
        if isinstance(msg, str):
            return _cut(f"{msg} (code {_show(code)})" if code is not None else msg)
    return None


def is_no_active_session(body: Any) -> bool:
    """True for RealtimeKit's 404 envelope ``{"success": false, "error": {...}}`` whose message
    says "no active session" (in any case; the documented text is ``No active session found for
    meeting_id …``).

    Other not-founds (an unknown meeting, Cloudflare's own ``errors[]`` for unknown routes or
    apps) are failures, not an empty meeting, so they are not accepted here.
    """
    return (
        isinstance(body, dict)
        and body.get("success") is False
        and isinstance(body.get("error"), dict)
        and "errors" not in body
        and "no active session" in (error_message(body) or "").lower()
    )


def decode_json(content_type: str, body: bytes) -> Any:
    """Parse a JSON body, insisting on a JSON content type."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError("invalid_response", f"content type is {_show(media or 'missing')}, not JSON")
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError("invalid_response", "body is not valid JSON: nested too deep") from None
    except (ValueError, UnicodeDecodeError) as err:  # also integers of more than 4300 digits
        raise ApiError("invalid_response", f"body is not valid JSON: {_cut(str(err))}") from None


def parse_active_session(status: int, content_type: str, body: bytes) -> Answer:
    """Interpret one answer of ``GET …/meetings/{id}/active-session``."""
    if status == 200:
        doc = decode_json(content_type, body)
        if not isinstance(doc, dict):
            raise ApiError("invalid_response", "body is not a JSON object")
        if doc.get("success") is False:
            raise ApiError("invalid_response", f"success is false: {error_message(doc)}")
        if "data" not in doc:
            raise ApiError("invalid_response", "field data is missing")
        return parse_session(doc["data"])
    doc = _error_doc(content_type, body)
    if status == 404 and is_no_active_session(doc):
        return NO_ACTIVE_SESSION
    raise error_for_status(status, doc)


def _error_doc(content_type: str, body: bytes) -> Any:
    try:
        return decode_json(content_type, body)
    except ApiError:
        return None


def error_for_status(status: int, doc: Any) -> ApiError:
    """The :class:`ApiError` for a non-200 answer whose (possibly absent) JSON body is ``doc``.

    A 404 is ``not_found`` with the API's message (the caller has already ruled out "no active
    session")."""
    detail = error_message(doc) or "no error message"
    if status in (401, 403):
        return ApiError("auth", f"HTTP {status}: {detail}", status=status)
    if status == 404:
        return ApiError("not_found", detail, status=status)
    if status == 429:
        return ApiError("rate_limited", f"HTTP 429: {detail}", status=status)
    if 400 <= status < 500:
        return ApiError("http_4xx", f"HTTP {status}: {detail}", status=status)
    if status >= 500:
        return ApiError("http_5xx", f"HTTP {status}: {detail}", status=status)
    return ApiError("invalid_response", f"unexpected HTTP {status}", status=status)


@dataclass(frozen=True, slots=True)
class Paging:
    """A page's ``paging``; each field ``None`` when missing or unusable (1-based item offsets).
    ``per_page`` and ``page_no`` are the server's echo of the page it served, when it sends one."""

    total_count: int | None = None
    start_offset: int | None = None
    end_offset: int | None = None
    per_page: int | None = None
    page_no: int | None = None


@dataclass(frozen=True, slots=True)
class SessionsPage:
    """One page of ``GET …/sessions``, as read."""

    sessions: list[Session]  # the valid ones, in the API's order
    invalid: list[InvalidSession]  # the ones that could not be read
    paging: Paging | None  # None when the answer has no usable paging at all
    items: int  # how many items the page held, valid or not


def _count(raw: dict[str, Any], key: str) -> int | None:
    """A count or offset in ``[0, MAX_COUNT]``. Cloudflare's types make them numbers, so an
    integral float (``25.0``) is that integer; ``25.5``, ``true`` or a string is unusable."""
    value = raw.get(key)
    if isinstance(value, float) and value.is_integer():  # False for inf and nan
        value = int(value) if 0 <= value <= MAX_COUNT else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def _paging(doc: dict[str, Any]) -> Paging | None:
    """``paging`` at the top level (``/sessions``) or inside ``data`` (participants). Every field
    is optional; a mistyped or out-of-range one counts as missing; ``None`` when none is usable."""
    raw = doc.get("paging")
    if raw is None and isinstance(doc.get("data"), dict):
        raw = doc["data"].get("paging")
    if not isinstance(raw, dict):
        return None
    paging = Paging(*(_count(raw, name) for name in PAGING_FIELDS))
    return None if paging == Paging() else paging


def _invalid_session(item: Any, index: int, page: int, err: ApiError) -> InvalidSession:
    meeting = item.get("associated_id") if isinstance(item, dict) else None
    safe = isinstance(meeting, str) and SAFE_ID.fullmatch(meeting) is not None
    return InvalidSession(index, page, meeting if safe else None, str(err))


def parse_sessions_page(
    status: int, content_type: str, body: bytes, *, page_no: int = 1
) -> SessionsPage:
    """Interpret one page of ``GET …/sessions`` (the page asked for as ``page_no``).

    A session that fails :func:`parse_session` does not fail the page: it is returned among
    ``invalid`` with its index and what is wrong, and the page's other sessions still count. An
    answer that is not a readable page at all raises ``ApiError``.
    """
    if status != 200:
        raise error_for_status(status, _error_doc(content_type, body))
    doc = decode_json(content_type, body)
    if not isinstance(doc, dict) or doc.get("success") is False:
        raise ApiError("invalid_response", "body is not a successful JSON object")
    data = doc.get("data")
    items = data.get("sessions") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ApiError("invalid_response", "field data.sessions is missing or not a list")
    sessions, invalid = [], []
    for index, item in enumerate(items):
        try:
            sessions.append(parse_session(item, f"data.sessions[{index}]"))
        except ApiError as err:
            invalid.append(_invalid_session(item, index, page_no, err))
    return SessionsPage(sessions, invalid, _paging(doc), len(items))
