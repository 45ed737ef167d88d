"""The latest poll result of every exported meeting: written by the poller, read by the collector.

Each meeting's state is an immutable :class:`MeetingState` that a poll replaces whole, under a lock,
so a scrape always sees a consistent picture. The store also decides what is still fresh:
:meth:`MeetingState.fresh_answer` returns the last valid answer until it is older than
``stale_after`` seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from exporter.errors import REASONS, ApiError
from exporter.model import Answer, MeetingKey, Session

Labels = tuple[tuple[str, str], ...]
Recorded = tuple[MeetingKey, "Answer | ApiError | None", float, float]  # key, outcome, seconds, now
_NO_ERRORS: Final = (0,) * len(REASONS)


@dataclass(frozen=True, slots=True)
class MeetingState:
    """What is known about one meeting. ``None`` fields: not known yet."""

    labels: Labels = ()
    up: bool | None = None  # None until the first poll finished
    answer: Answer | None = None  # the last valid answer: a Session or NO_ACTIVE_SESSION
    last_success: float | None = None  # Unix time of that answer
    poll_duration: float | None = None
    errors: tuple[int, ...] = field(default=_NO_ERRORS)  # failed polls, indexed like REASONS

    def fresh_answer(self, now: float, stale_after: float) -> Answer | None:
        """The last valid answer while it is at most ``stale_after`` seconds old."""
        if self.last_success is None or now - self.last_success > stale_after:
            return None
        return self.answer


class Store:
    """Thread-safe map of :class:`MeetingKey` to :class:`MeetingState`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[MeetingKey, MeetingState] = {}
        self._version = 0
        self.writes = 0  # write operations (each one lock, one version bump), for tests

    def set_targets(self, targets: Mapping[MeetingKey, Labels]) -> None:
        """Export exactly these meetings: new ones start empty, gone ones are dropped at once,
        the others keep their state (and take the new labels)."""
        with self._lock:
            old = self._states
            self._states = {
                key: replace(old[key], labels=labels) if key in old else MeetingState(labels=labels)
                for key, labels in targets.items()
            }
            self._version += 1

    def size(self) -> int:
        """How many meetings are exported."""
        return len(self._states)

    def get(self, key: MeetingKey) -> MeetingState | None:
        with self._lock:
            return self._states.get(key)

    def record(
        self, key: MeetingKey, outcome: Answer | ApiError | None, duration: float, now: float
    ) -> None:
        """Store a poll's outcome: a valid answer, an API failure, or ``None`` for a failure that
        is not the API's (a bug, logged by the poller). Unknown keys are ignored: the meeting was
        removed while its poll was in flight."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return
            self._states[key] = _recorded(state, outcome, duration, now)
            self._version += 1
            self.writes += 1

    def merge(
        self,
        *,
        add: Mapping[MeetingKey, Labels] | None = None,
        record: Iterable[Recorded] = (),
        remove: Iterable[MeetingKey] = (),
    ) -> None:
        """A whole discovery cycle as one write: export the meetings of ``add`` (kept as they
        are if exported already), store the outcomes of ``record``, stop exporting ``remove``.

        The new states are built outside the lock (states are immutable, and only one writer
        records a given meeting); the lock is held only to merge them, so a scrape or a poll
        never waits for a large cycle. Meetings not named keep their state objects (and so
        their cached render fragments)."""
        states = self._states
        new = {k: MeetingState(labels=v) for k, v in (add or {}).items() if k not in states}
        for key, outcome, duration, now in record:
            state = new.get(key) or states.get(key)
            if state is not None:
                new[key] = _recorded(state, outcome, duration, now)
        gone = list(remove)
        with self._lock:
            states = self._states
            kept = {k: v for k, v in new.items() if k in states or k in (add or {})}
            states.update(kept)
            for key in gone:
                states.pop(key, None)
            self._version += 1
            self.writes += 1

    def load(self, states: Mapping[MeetingKey, MeetingState]) -> None:
        """Take these states (another replica's, from the mirror) for the meetings exported
        here, keeping this store's labels; one write."""
        with self._lock:
            mine = self._states
            for key, state in states.items():
                if key in mine:
                    mine[key] = replace(state, labels=mine[key].labels)
            self._version += 1
            self.writes += 1

    def push(self, key: MeetingKey, answer: Answer, now: float) -> bool:
        """A valid answer that came without a poll (a webhook said a session started or
        ended): the poll's own numbers (duration, errors) stay. False for an unknown key."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return False
            self._states[key] = replace(state, up=True, answer=answer, last_success=now)
            self._version += 1
            self.writes += 1
        return True

    def app_summary(self) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """The apps with a meeting whose last answer is a LIVE session, and those with a
        meeting whose last poll failed."""
        with self._lock:
            states = list(self._states.items())
        live = {key.app for key, state in states if _is_live(state.answer)}
        return live, {key.app for key, state in states if state.up is False}

    def last_live(self, keys: Iterable[MeetingKey]) -> set[MeetingKey]:
        """Those of ``keys`` whose last poll got a LIVE session (the meetings a listing that
        misses them must not simply call idle)."""
        out = set()
        with self._lock:
            states = self._states
            for key in keys:
                state = states.get(key)
                if state is not None and state.up is not False and _is_live(state.answer):
                    out.add(key)
        return out

    def snapshot(self) -> tuple[int, dict[MeetingKey, MeetingState]]:
        """A consistent copy of every state, with a version number that changes on every write."""
        with self._lock:
            return self._version, dict(self._states)

    def polled_all(self) -> bool:
        """True once every exported meeting has been polled at least once."""
        with self._lock:
            return all(state.up is not None for state in self._states.values())


def _recorded(
    state: MeetingState, outcome: Answer | ApiError | None, duration: float, now: float
) -> MeetingState:
    """``state`` after a poll with this outcome."""
    if isinstance(outcome, ApiError):
        errors = list(state.errors)
        errors[REASONS.index(outcome.reason)] += 1
        return replace(state, up=False, poll_duration=duration, errors=tuple(errors))
    if outcome is None:
        return replace(state, up=False, poll_duration=duration)
    return replace(state, up=True, answer=outcome, last_success=now, poll_duration=duration)


def _is_live(answer: Answer | None) -> bool:
    return isinstance(answer, Session) and answer.status == "LIVE"
