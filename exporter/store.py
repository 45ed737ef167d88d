"""The latest poll result of every exported meeting: written by the poller, read by the collector.

Each meeting's state is an immutable :class:`MeetingState` that a poll replaces whole, under a lock,
so a scrape always sees a consistent picture. The store also decides what is still fresh:
:meth:`MeetingState.fresh_answer` returns the last valid answer until it is older than the
meeting's staleness window.

A meeting's values vanish only when the exporter no longer knows them. Its window is measured
against the interval at which it is really polled (budget stretching and the webhook reconcile
interval included): ``poll.stale_after_seconds`` scaled by ``effective / poll.interval_seconds``,
never shorter than ``stale_after_seconds`` itself (:func:`stale_windows`). With the default
(3 × the interval) a meeting polled every 300 s while its app's webhooks are healthy keeps its
values for 900 s. A longer window applies at once to what is already known (the next poll is
further away); a shorter one from the meeting's next poll, so a flip back to fast polling never
drops values that were fresh a moment before.

Webhook events never move ``last_success`` (the last valid *API* answer): a state an event
implies is fresh from ``event_at`` until the meeting's next poll, whose outcome supersedes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from exporter.errors import REASONS, ApiError
from exporter.model import Answer, MeetingKey, Session

Labels = tuple[tuple[str, str], ...]
AppKey = tuple[str, str]
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
    stale_after: float | None = None  # this meeting's staleness window (None: the configured)
    event_at: float | None = None  # Unix time of a state a webhook event implied, until a poll

    def fresh_answer(self, now: float, stale_after: float) -> Answer | None:
        """The last valid answer while it is at most ``stale_after`` seconds old, or the
        meeting's own window when that is longer; measured from the last valid API answer, or
        from the event that implied the answer when no poll has finished since."""
        known = self.last_success
        if self.event_at is not None and (known is None or self.event_at > known):
            known = self.event_at
        window = stale_after if self.stale_after is None else max(stale_after, self.stale_after)
        if known is None or now - known > window:
            return None
        return self.answer


class Store:
    """Thread-safe map of :class:`MeetingKey` to :class:`MeetingState`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[MeetingKey, MeetingState] = {}
        self._version = 0
        self._windows: dict[AppKey, float] = {}  # each app's staleness window (stale_windows)
        self.writes = 0  # write operations (each one lock, one version bump), for tests

    def set_targets(self, targets: Mapping[MeetingKey, Labels]) -> None:
        """Export exactly these meetings: new ones start empty, gone ones are dropped at once,
        the others keep their state (and take the new labels)."""
        with self._lock:
            old = self._states
            self._states = {
                key: replace(old[key], labels=labels) if key in old else self._new(key, labels)
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
            self._states[key] = _recorded(state, outcome, duration, now, self._window(key))
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
        new = {k: self._new(k, v) for k, v in (add or {}).items() if k not in states}
        for key, outcome, duration, now in record:
            state = new.get(key) or states.get(key)
            if state is not None:
                new[key] = _recorded(state, outcome, duration, now, self._window(key))
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
        """An answer that came without a poll (a webhook said a session started or ended),
        fresh from ``now`` until the meeting's next poll. The last valid API answer's time and
        the poll's own numbers (up, duration, errors) stay; only a meeting never polled yet
        counts as up. False for an unknown key."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return False
            up = True if state.up is None else state.up
            window = self._window(key)
            self._states[key] = replace(
                state, up=up, answer=answer, event_at=now, stale_after=window
            )
            self._version += 1
            self.writes += 1
        return True

    def set_windows(self, windows: Mapping[AppKey, float]) -> None:
        """Each app's staleness window from now on (:func:`stale_windows`): one write. A longer
        window applies at once to the meetings of the app, a shorter one from their next poll
        (their values were to be kept that long when they were recorded)."""
        with self._lock:
            old, self._windows = self._windows, dict(windows)
            changed = {a for a in {*old, *windows} if old.get(a) != windows.get(a)}
            if not changed:
                return
            states = self._states
            for key, state in states.items():
                window = windows.get(key.app)
                if key.app not in changed or window is None:
                    continue
                if state.stale_after is None or window > state.stale_after:
                    states[key] = replace(state, stale_after=window)
            self._version += 1
            self.writes += 1

    def _window(self, key: MeetingKey) -> float | None:
        return self._windows.get(key.app)

    def _new(self, key: MeetingKey, labels: Labels) -> MeetingState:
        return MeetingState(labels=labels, stale_after=self._window(key))

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

    @property
    def version(self) -> int:
        """The version :meth:`snapshot` would give now (a scrape that finds it unchanged needs
        no copy of 10,000 states)."""
        with self._lock:
            return self._version

    def snapshot(self) -> tuple[int, dict[MeetingKey, MeetingState]]:
        """A consistent copy of every state, with a version number that changes on every write."""
        with self._lock:
            return self._version, dict(self._states)

    def polled_all(self) -> bool:
        """True once every exported meeting has been polled at least once."""
        with self._lock:
            return all(state.up is not None for state in self._states.values())


def _recorded(
    state: MeetingState,
    outcome: Answer | ApiError | None,
    duration: float,
    now: float,
    window: float | None,
) -> MeetingState:
    """``state`` after a poll with this outcome; the app's window ``window`` applies from now
    on, and a state an event implied is superseded (by the answer, or by the failure)."""
    if window is None:
        window = state.stale_after
    if isinstance(outcome, ApiError):
        errors = list(state.errors)
        errors[REASONS.index(outcome.reason)] += 1
        return replace(
            state,
            up=False,
            poll_duration=duration,
            errors=tuple(errors),
            stale_after=window,
            event_at=None,
        )
    if outcome is None:
        return replace(state, up=False, poll_duration=duration, stale_after=window, event_at=None)
    return replace(
        state,
        up=True,
        answer=outcome,
        last_success=now,
        poll_duration=duration,
        stale_after=window,
        event_at=None,
    )


def stale_windows(
    intervals: Mapping[AppKey, float], stale_after: float, interval: float
) -> dict[AppKey, float]:
    """Each app's staleness window: ``stale_after`` scaled by how much longer than the
    configured ``interval`` the app is really polled (``intervals``: effective seconds between
    polls or discovery cycles), never shorter than ``stale_after``.

    >>> stale_windows({("a", "b"): 300.0}, stale_after=90, interval=30)
    {('a', 'b'): 900.0}
    """
    scale = stale_after / interval
    return {app: max(stale_after, scale * every) for app, every in intervals.items()}


def _is_live(answer: Answer | None) -> bool:
    return isinstance(answer, Session) and answer.status == "LIVE"
