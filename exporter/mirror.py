"""The leader's meeting states mirrored in Redis, so that a standby that wins the lease serves
complete values at once.

Key (``P`` is ``key_prefix``)::

    P:state:<shard>    hash "account/app/meeting" → JSON of a MeetingState

What comes back from Redis is checked like an API answer before anything is exported from it:
safe ids, numbers finite and within :mod:`exporter.model`'s bounds (no negative participants,
NaN or 1e308), counters whole and not negative, ``last_success`` a finite time not in the
future (so a state can still go stale), label values as long as a parser would have left them
and encodable. An entry that fails is skipped and the others are used; one line per fetch
says how many were skipped and why the first was, and only when that changed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Final

from pydantic import TypeAdapter, ValidationError

from exporter.model import (
    MAX_LABEL_CHARS,
    MAX_MINUTES,
    MAX_PARTICIPANTS,
    SESSION_STATUSES,
    TRUNCATED,
    MeetingKey,
    Session,
    meeting_path,
    parse_meeting_path,
)
from exporter.redislink import RedisLink, log
from exporter.store import MeetingState

_STATE: Final = TypeAdapter(MeetingState)
MAX_ENTRY_BYTES: Final = 64 * 1024  # one encoded state; real ones are a few hundred bytes
MAX_DURATION: Final = 7 * 86400.0  # seconds of one poll (the config's bound on any time)
MAX_ERRORS: Final = 2**53  # a counter beyond this is not a count (and not exact as a float)
MAX_STALE: Final = 86400.0 * 3650  # a staleness window (the config allows 30 days × stretch)
FUTURE_SLACK: Final = 300.0  # replica clocks may disagree this much (they should use NTP)
_LABEL_CHARS: Final = MAX_LABEL_CHARS + len(TRUNCATED)


def encode_state(state: MeetingState) -> bytes:
    """A meeting state as compact JSON; fields at their defaults are left out.

    >>> encode_state(MeetingState(up=True))
    b'{"up":true}'
    """
    return _STATE.dump_json(state, exclude_defaults=True)


def decode_state(data: bytes | str, now: float | None = None) -> MeetingState:
    """The inverse of :func:`encode_state`, checked like an API answer (``now``: the Unix time
    ``last_success`` may not be after, give or take :data:`FUTURE_SLACK`; default the clock's).
    Raises ValueError naming what is wrong."""
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"invalid meeting state: {len(data)} bytes, more than {MAX_ENTRY_BYTES}")
    try:
        state = _STATE.validate_json(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"invalid meeting state: {problems}") from None
    if len(state.errors) != len(MeetingState().errors):
        raise ValueError(f"invalid meeting state: errors: {len(state.errors)} counts")
    found = _problems(state, time.time() if now is None else now)
    if found:
        raise ValueError(f"invalid meeting state: {'; '.join(found)}")
    return state


def _problems(state: MeetingState, now: float) -> list[str]:
    out = _session_problems(state.answer) if isinstance(state.answer, Session) else []
    for name in ("last_success", "event_at"):
        moment = getattr(state, name)
        if moment is not None and not (math.isfinite(moment) and 0 <= moment <= now + FUTURE_SLACK):
            out.append(f"{name}: not a finite Unix time up to now: {moment!r}")
    if state.stale_after is not None and not _within(state.stale_after, MAX_STALE):
        out.append(f"stale_after: not a number from 0 to {MAX_STALE:g}")
    if not _within(state.poll_duration, MAX_DURATION):
        out.append(f"poll_duration: not a number from 0 to {MAX_DURATION:g}")
    if not all(0 <= count <= MAX_ERRORS for count in state.errors):
        out.append("errors: every count must be a whole number from 0 to 2^53")
    if not all(_label_ok(v) for pair in state.labels for v in pair):
        out.append("labels: a value too long or not encodable")
    return out


def _session_problems(session: Session) -> list[str]:
    out = []
    numbers = (
        ("live_participants", session.live_participants, MAX_PARTICIPANTS),
        ("max_concurrent_participants", session.max_concurrent_participants, MAX_PARTICIPANTS),
        ("minutes_consumed", session.minutes_consumed, MAX_MINUTES),
    )
    for name, value, limit in numbers:
        if not _within(value, limit):
            out.append(f"answer.{name}: not a number from 0 to {limit:g}")
    started = session.started_at
    if started is not None and not (math.isfinite(started) and abs(started) < 1e11):
        out.append("answer.started_at: not a Unix time")
    if not session.id or session.status not in SESSION_STATUSES:
        out.append("answer: needs an id and a status LIVE or ENDED")
    texts = (session.id, session.type, session.meeting_display_name, session.associated_id)
    if not all(_label_ok(text) for text in texts):
        out.append("answer: a label value too long or not encodable")
    return out


def _within(value: float | None, limit: float) -> bool:
    return value is None or (math.isfinite(value) and 0 <= value <= limit)


def _label_ok(text: str | None) -> bool:
    if text is None:
        return True
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, which no exposition can write
        return False
    return len(text) <= _LABEL_CHARS


def _field(key: MeetingKey) -> str:
    return meeting_path(key)


def _key(field_name: bytes | str) -> MeetingKey:
    text = field_name.decode(errors="replace") if isinstance(field_name, bytes) else field_name
    return parse_meeting_path(text)


class StateMirror:
    """The leader's meeting states in ``P:state:<shard>``: the leader publishes after each
    change batch, every replica fetches them every few seconds. The key expires ``ttl_ms``
    after the last publish."""

    def __init__(
        self,
        link: RedisLink,
        shard: str,
        *,
        ttl_ms: int,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._link, self._wall = link, wall
        self._key = link.key("state", shard)
        self._ttl_ms = ttl_ms
        self._published: dict[MeetingKey, MeetingState] | None = None
        self._skipped = 0  # unreadable entries at the last fetch

    async def publish(self, states: Mapping[MeetingKey, MeetingState]) -> None:
        """Make the mirror equal ``states`` (only what changed since the last publish is sent;
        everything after a failure). Raises CoordinationError."""
        previous, self._published = self._published, None
        pipe = self._link.redis.pipeline(transaction=True)
        if previous is None:
            pipe.delete(self._key)
            previous = {}
        changed = {
            _field(k): encode_state(v) for k, v in states.items() if previous.get(k) is not v
        }
        gone = [_field(k) for k in previous if k not in states]
        if changed:
            pipe.hset(self._key, mapping=changed)  # type: ignore[arg-type]
        if gone:
            pipe.hdel(self._key, *gone)
        pipe.pexpire(self._key, self._ttl_ms)
        await self._link.call("publish", pipe.execute())
        self._published = dict(states)

    async def fetch(self) -> dict[MeetingKey, MeetingState]:
        """The mirrored states; entries that cannot be read or fail the checks are left out
        (one line says so when their number changed). Raises CoordinationError."""
        raw: dict[bytes | str, bytes | str] = await self._link.call(
            "fetch", self._link.redis.hgetall(self._key)
        )
        states, skipped, first = {}, 0, ""
        now = self._wall()
        for name, value in raw.items():
            try:
                states[_key(name)] = decode_state(value, now)
            except ValueError as err:
                skipped += 1
                first = first or str(err)
        if skipped != self._skipped:
            level = logging.WARNING if skipped else logging.INFO
            log.log(
                level,
                "coordination: %s: %d of %d mirrored meeting states skipped%s",
                self._key,
                skipped,
                len(raw),
                f" (the first: {first})" if first else "",
            )
        self._skipped = skipped
        return states
