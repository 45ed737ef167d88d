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
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final

from exporter.errors import ApiError

SESSION_STATUSES: Final = ("LIVE", "ENDED")


@dataclass(frozen=True, slots=True, order=True)
class MeetingKey:
    """One exported meeting: the ids that place it in the API and on every series."""

    account_id: str
    app_id: str
    meeting_id: str

    @property
    def app(self) -> tuple[str, str]:
        return (self.account_id, self.app_id)


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


@dataclass(frozen=True, slots=True)
class InvalidSession:
    """A session of a listing that could not be read: where it was, and what was wrong."""

    index: int  # position in its page
    page: int  # page_no
    meeting_id: str | None  # its associated_id, when readable and a safe id
    message: str  # names the field


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


def _number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _string(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _invalid(data: dict[str, Any], key: str, expected: str) -> ApiError:
    if key not in data:
        return ApiError("invalid_response", f"required field data.{key} is missing")
    shown = repr(data[key])[:40]
    return ApiError("invalid_response", f"required field data.{key} is not {expected}: {shown}")


def parse_session(data: Any) -> Session:
    """Build a :class:`Session` from the ``data`` object of a 200 answer.

    Unknown fields are ignored, optional ones may be missing (or of a wrong type: then they count as
    missing); a missing or mistyped required field (``id``, ``status``, ``live_participants``)
    raises ``ApiError("invalid_response")`` naming the field.
    """
    if not isinstance(data, dict):
        raise ApiError("invalid_response", "field data is not an object")
    session_id = _string(data, "id")
    if not session_id:
        raise _invalid(data, "id", "a non-empty string")
    status = _string(data, "status")
    if not status:
        raise _invalid(data, "status", "a non-empty string")
    live = _number(data, "live_participants")
    if live is None:
        raise _invalid(data, "live_participants", "a non-negative number")
    return Session(
        id=session_id,
        status=status,
        live_participants=live,
        max_concurrent_participants=_number(data, "max_concurrent_participants"),
        minutes_consumed=_number(data, "minutes_consumed"),
        started_at=parse_timestamp(data.get("started_at")),
        type=_string(data, "type"),
        meeting_display_name=_string(data, "meeting_display_name"),
        associated_id=_string(data, "associated_id"),
    )


def error_message(body: Any) -> str | None:
    """The message of either error envelope: RealtimeKit ``error{code,message}`` or Cloudflare
    ``errors[{code,message}]``. ``None`` when the body is neither."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])
    errs = body.get("errors")
    if isinstance(errs, list) and errs and isinstance(errs[0], dict):
        msg = errs[0].get("message")
        code = errs[0].get("code")
        if isinstance(msg, str):
            return f"{msg} (code {code})" if code is not None else msg
    return None


def is_no_active_session(body: Any) -> bool:
    """True for RealtimeKit's 404 envelope ``{"success": false, "error": {...}}``.

    Cloudflare's own edge answers 404 for unknown routes or apps in its ``errors[]`` shape; that
    is a misconfiguration, not an empty meeting, so it is not accepted here.
    """
    return (
        isinstance(body, dict)
        and body.get("success") is False
        and isinstance(body.get("error"), dict)
        and "errors" not in body
    )


def decode_json(content_type: str, body: bytes) -> Any:
    """Parse a JSON body, insisting on a JSON content type."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError("invalid_response", f"content type is {media or 'missing'!r}, not JSON")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError("invalid_response", f"body is not valid JSON: {err}") from None


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
    """The :class:`ApiError` for a non-200 answer whose (possibly absent) JSON body is ``doc``."""
    detail = error_message(doc) or "no error message"
    if status in (401, 403):
        return ApiError("auth", f"HTTP {status}: {detail}", status=status)
    if status == 429:
        return ApiError("rate_limited", f"HTTP 429: {detail}", status=status)
    if 400 <= status < 500:
        return ApiError("http_4xx", f"HTTP {status}: {detail}", status=status)
    if status >= 500:
        return ApiError("http_5xx", f"HTTP {status}: {detail}", status=status)
    return ApiError("invalid_response", f"unexpected HTTP {status}", status=status)


@dataclass(frozen=True, slots=True)
class Paging:
    total_count: int
    start_offset: int
    end_offset: int


def _paging(doc: dict[str, Any]) -> Paging | None:
    """``paging`` at the top level (``/sessions``) or inside ``data`` (participants); ``None``
    when absent. Present but malformed is an error: a count we cannot read is not "no count"."""
    raw = doc.get("paging")
    if raw is None and isinstance(doc.get("data"), dict):
        raw = doc["data"].get("paging")
    if raw is None:
        return None
    fields = ("total_count", "start_offset", "end_offset")
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(f), int) and not isinstance(raw.get(f), bool) for f in fields
    ):
        raise ApiError("invalid_response", f"field paging is malformed: {str(raw)[:80]}")
    return Paging(raw["total_count"], raw["start_offset"], raw["end_offset"])


def parse_sessions_page(
    status: int, content_type: str, body: bytes
) -> tuple[list[Session], Paging | None]:
    """Interpret one page of ``GET …/sessions``: its sessions and its paging (if any).

    Any session that fails :func:`parse_session` makes the whole page ``invalid_response``: a
    page we can only half read must not pass for "fewer meetings are live".
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
    sessions = []
    for index, item in enumerate(items):
        try:
            sessions.append(parse_session(item))
        except ApiError as err:
            raise ApiError("invalid_response", f"data.sessions[{index}]: {err}") from None
    return sessions, _paging(doc)
