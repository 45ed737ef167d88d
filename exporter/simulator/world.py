"""The simulated world: apps, their meetings and each meeting's current session, moving through
idle → LIVE → ENDED → idle in simulated time.

State is advanced lazily, from the clock, when a meeting is touched or its next change falls due
(a heap of due times); there is no ticking thread, so a fake clock makes everything deterministic.
Every method expects the caller to hold :attr:`World.lock`. What happens to sessions is told to
an :class:`Observer` (the webhook events), when there is one.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
import uuid
from bisect import bisect_left, insort
from dataclasses import dataclass, field
from typing import Protocol, cast

from exporter.simulator.options import SimOptions

AppKey = tuple[str, str]
Key = tuple[float, str, str]  # (session created, session id, meeting id): listing order
IDLE, LIVE, ENDED = 0, 1, 2
HOST_ENDED, ALL_LEFT = "HOST_ENDED_MEETING", "ALL_PARTICIPANTS_LEFT"
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


def uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def seeded(seed: int | None, name: str) -> random.Random:
    """A random stream of its own for one purpose, reproducible when there is a seed."""
    return random.Random(None if seed is None else f"{name}:{seed}")


@dataclass(slots=True)
class Session:
    id: str
    created: float  # clock (epoch) times
    updated: float
    live: int
    peak: int
    minutes: float = 0.0
    ended: float | None = None


@dataclass(slots=True, eq=False)
class Meeting:
    id: str
    name: str
    app: AppKey
    rng: random.Random | None = None  # made on first use (World.rng): ~3 KB each
    session: Session | None = None
    phase: int = IDLE
    phase_until: float = math.inf  # simulated seconds
    next_change: float = math.inf
    last: float = 0.0  # simulated time up to which minutes are integrated
    due: float = math.inf  # the time queued for it in World.due
    fault: str | None = None

    def key(self) -> Key:
        s = cast(Session, self.session)
        return (s.created, s.id, self.id)


class SortedKeys:
    """Listing keys kept sorted; additions wait in a batch that is merged on the next read."""

    __slots__ = ("_items", "_pending")

    def __init__(self) -> None:
        self._items: list[Key] = []
        self._pending: list[Key] = []

    def add(self, key: Key) -> None:
        self._pending.append(key)

    def remove(self, key: Key) -> None:
        items = self.items()
        i = bisect_left(items, key)
        if i < len(items) and items[i] == key:
            del items[i]

    def items(self) -> list[Key]:
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
class AppIndex:
    """An app's current sessions in listing order: all of them, the LIVE and the ENDED ones."""

    all: SortedKeys = field(default_factory=SortedKeys)
    live: SortedKeys = field(default_factory=SortedKeys)
    ended: SortedKeys = field(default_factory=SortedKeys)

    def by_status(self, status: str) -> SortedKeys | None:
        return {"": self.all, "LIVE": self.live, "ENDED": self.ended}.get(status)


class Observer(Protocol):
    """Told, with the lock held, what happens to sessions (simulated time ``t``)."""

    def started(self, m: Meeting, t: float, n: int) -> None: ...

    def changed(self, m: Meeting, change: int, t: float) -> None: ...

    def ended(self, m: Meeting, t: float, reason: str) -> None: ...


class World:
    """Every app's meetings and sessions; the caller holds ``lock`` around every call."""

    def __init__(self, options: SimOptions) -> None:
        self.auto, self.speed, self.seed = options.auto, float(options.speed), options.seed
        self.clock = options.clock
        self.t0 = self.clock()
        self.lock = threading.Lock()
        self.ids_rng = random.Random(self.seed)
        self.churn_rng = seeded(self.seed, "churn")
        self.apps: dict[AppKey, list[Meeting]] = {}
        self.index: dict[AppKey, AppIndex] = {}
        self.meetings: dict[str, Meeting] = {}
        self.due: list[tuple[float, int, Meeting]] = []  # heap of (due, seq, meeting)
        self._seq = itertools.count()
        self.observers: list[Observer] = []

    # -- meetings ---------------------------------------------------------------------------

    def create(self, key: AppKey, meetings: int | list[str], live: int) -> list[str]:
        """Check and add ``meetings`` (a number of new ones, or their ids): their ids."""
        if isinstance(meetings, int):
            if meetings < 0:
                raise ValueError("meetings must be >= 0")
            ids = [self.new_uuid() for _ in range(meetings)]
        else:
            ids = list(meetings)
        if any(not isinstance(i, str) or not i for i in ids) or len(set(ids)) != len(ids):
            raise ValueError("meeting ids must be unique non-empty strings")
        if clash := [i for i in ids if i in self.meetings]:
            raise ValueError(f"meeting ids already exist: {clash}")
        self.add_meetings(key, ids, live)
        return ids

    def add_meetings(self, key: AppKey, ids: list[str], live: int) -> None:
        """Create meetings; ``live`` > 0 starts each with that many participants."""
        app = self.apps.setdefault(key, [])
        self.index.setdefault(key, AppIndex())
        now = self.sim_now()
        for mid in ids:
            n = len(app) + 1
            m = Meeting(mid, f"Meeting {n} – {_TOPICS[(n - 1) % len(_TOPICS)]}", key, last=now)
            if live:
                self.start_session(m, now, live, self.new_uuid())
            else:
                self._init_auto(m, now)
            app.append(m)
            self.meetings[mid] = m

    def new_uuid(self) -> str:
        return uuid4(self.ids_rng)

    def rng(self, m: Meeting) -> random.Random:
        if m.rng is None:
            m.rng = random.Random(None if self.seed is None else f"{self.seed}:{m.id}")
        return m.rng

    def _init_auto(self, m: Meeting, now: float) -> None:
        if not self.auto:
            return
        rng = self.rng(m)
        if rng.random() < 0.5:  # already LIVE for a while
            age, n = rng.uniform(10.0, 300.0), rng.randint(1, 8)
            s = self.start_session(m, now - age, n)
            s.minutes, s.peak = n * age / 60.0, n + rng.randint(0, 3)
            s.updated = self.real(now - rng.uniform(0.0, min(age, 15.0)))
            m.phase_until, m.next_change = now + rng.uniform(30.0, 480.0), now + rng.uniform(1, 15)
        else:
            m.phase_until = now + rng.uniform(0.0, 120.0)
        self._schedule(m)

    def touch(self, meeting_id: str) -> tuple[Meeting, float]:
        """The meeting brought up to now, and now (simulated); KeyError if unknown."""
        m = self.meetings.get(meeting_id)
        if m is None:
            raise KeyError(f"unknown meeting {meeting_id!r}")
        now = self.sim_now()
        self.advance(m, now)
        return m, now

    # -- simulated time ---------------------------------------------------------------------

    def sim_now(self) -> float:
        return (self.clock() - self.t0) * self.speed

    def real(self, sim_t: float) -> float:
        return self.t0 + sim_t / self.speed

    @staticmethod
    def _next_event(m: Meeting) -> float:
        return min(m.phase_until, m.next_change) if m.phase == LIVE else m.phase_until

    def advance(self, m: Meeting, now: float) -> None:
        """Bring a meeting up to simulated time `now`."""
        if self.auto:
            while (t := self._next_event(m)) <= now:
                self._integrate(m, t)
                self._step(m, t)
            self._schedule(m)
        self._integrate(m, now)

    def _schedule(self, m: Meeting) -> None:
        """Queue the meeting's next change in the heap of due times (auto mode only)."""
        t = self._next_event(m) if self.auto else math.inf
        if t != m.due:
            m.due = t
            if t < math.inf:
                heapq.heappush(self.due, (t, next(self._seq), m))

    def advance_due(self, now: float) -> None:
        """Apply every change due by `now`, in any meeting: then listings are current."""
        events = self.due
        while events and events[0][0] <= now:
            due, _, m = heapq.heappop(events)
            if m.due == due:  # not superseded since it was queued
                self.advance(m, now)

    @staticmethod
    def _integrate(m: Meeting, t: float) -> None:
        if t <= m.last:
            return
        s = m.session
        if s is not None and s.ended is None:
            s.minutes += s.live * (t - m.last) / 60.0
        m.last = t

    def _step(self, m: Meeting, t: float) -> None:
        rng, s = self.rng(m), m.session
        if m.phase == IDLE or s is None:
            self.start_session(m, t, rng.randint(1, 4))
        elif m.phase == LIVE and m.next_change < m.phase_until:
            step = rng.choice((-2, -1, -1, 1, 1, 2))
            self.set_live(m, t, max(1, min(12, s.live + step)))
            m.next_change = t + rng.uniform(5.0, 15.0)
        elif m.phase == LIVE:
            self.end(m, t)
        else:
            self.clear(m, t)

    # -- sessions ---------------------------------------------------------------------------

    def start_session(self, m: Meeting, t: float, n: int, session_id: str | None = None) -> Session:
        if session_id is None:
            session_id = uuid4(self.rng(m))
        self._unindex(m)
        real = self.real(t)
        m.session = Session(session_id, real, real, n, n)
        index = self.index[m.app]
        index.all.add(m.key())
        index.live.add(m.key())
        m.phase = LIVE
        if self.auto or m.rng is not None:
            # phase times matter in auto mode only; they are drawn whenever the meeting has its
            # random stream so that its later session ids stay what they always were
            rng = self.rng(m)
            m.phase_until, m.next_change = t + rng.uniform(120.0, 600.0), t + rng.uniform(5, 15)
        self._schedule(m)
        for observer in self.observers:
            observer.started(m, t, n)
        return m.session

    def set_live(self, m: Meeting, t: float, n: int) -> None:
        s = cast(Session, m.session)
        if n != s.live:
            for observer in self.observers:
                observer.changed(m, n - s.live, t)
            s.live, s.peak, s.updated = n, max(s.peak, n), self.real(t)

    def end(self, m: Meeting, t: float, reason: str = ALL_LEFT) -> None:
        if m.session is not None and m.session.ended is None:
            self.tell_ended(m, t, reason)
            index = self.index[m.app]
            index.live.remove(m.key())
            index.ended.add(m.key())
            real = self.real(t)
            m.session.live, m.session.ended, m.session.updated = 0, real, real
        m.phase, m.next_change = ENDED, math.inf
        m.phase_until = t + self.rng(m).uniform(50.0, 70.0)
        self._schedule(m)

    def tell_ended(self, m: Meeting, t: float, reason: str) -> None:
        for observer in self.observers:
            observer.ended(m, t, reason)

    def clear(self, m: Meeting, t: float) -> None:
        self._unindex(m)
        m.session, m.phase, m.next_change = None, IDLE, math.inf
        m.phase_until = t + self.rng(m).uniform(20.0, 120.0)
        self._schedule(m)

    def _unindex(self, m: Meeting) -> None:
        if m.session is not None:
            index = self.index[m.app]
            index.all.remove(m.key())
            (index.live if m.session.ended is None else index.ended).remove(m.key())

    def churn(self, app: AppKey, k: int) -> None:
        """``k`` LIVE sessions end and are cleared; as many new meetings go LIVE."""
        now = self.sim_now()
        live = self.index[app].live.items()
        for key in self.churn_rng.sample(live, min(k, len(live))):
            m = self.meetings[key[2]]
            self.end(m, now)
            self.clear(m, now)
        self.add_meetings(app, [self.new_uuid() for _ in range(k)], 1)
