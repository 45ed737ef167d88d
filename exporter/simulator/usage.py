"""Usage per UTC day, as ``GET /analytics/daywise?start_date=…&end_date=…`` serves it.

Sessions count on the day they start; their minutes on that same day (LIVE sessions with the
minutes so far). Recordings count on the day they were invoked, their minutes being their
duration so far. :meth:`Usage.add` books usage of any day (yesterday, last week) without waiting
for it; :meth:`Usage.day` and :meth:`Usage.period` say what the simulator counts, so a test can
compare the exporter's gauges with them. The ``usage_day_format`` option decides whether ``day``
is ``2027-01-15`` (``date``) or ``2027-01-15T00:00:00.000Z`` (``datetime``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from exporter.simulator.answers import Answer, ok, rtk_error
from exporter.simulator.options import SimOptions
from exporter.simulator.recordings import Recorder
from exporter.simulator.sessions import query_first
from exporter.simulator.world import AppKey, Meeting, Session, World

FIELDS = ("sessions", "session_minutes", "recordings", "recording_minutes")
DEFAULT_DAYS = 30
MAX_DAYS = 366
DayLike = str | date | None


def utc_day(t: float) -> date:
    return datetime.fromtimestamp(t, UTC).date()


class Usage:
    """The world's observer that books sessions per day; control methods are thread-safe."""

    def __init__(self, world: World, recorder: Recorder, options: SimOptions) -> None:
        self._world, self._recorder = world, recorder
        self._main = (options.account_id, options.app_id)
        self.day_format = options.usage_day_format
        self._booked: dict[AppKey, dict[date, list[float]]] = {}

    # -- control ----------------------------------------------------------------------------

    def add(
        self,
        day: DayLike,
        *,
        sessions: int = 0,
        session_minutes: float = 0.0,
        recordings: int = 0,
        recording_minutes: float = 0.0,
        account_id: str | None = None,
        app_id: str | None = None,
    ) -> None:
        """Book usage on a UTC day (``YYYY-MM-DD``, a date, or None: today)."""
        values = (sessions, session_minutes, recordings, recording_minutes)
        if any(not v >= 0 for v in values):
            raise ValueError("usage must be >= 0")
        with self._world.lock:
            self._book(self._app(account_id, app_id), self._day(day), values)

    def day(
        self, day: DayLike = None, account_id: str | None = None, app_id: str | None = None
    ) -> dict[str, float]:
        """What the simulator counts for one UTC day (default: today): ``sessions``,
        ``session_minutes``, ``recordings``, ``recording_minutes``."""
        with self._world.lock:
            d = self._day(day)
            return self._totals(self._app(account_id, app_id), d, d)

    def period(
        self, start: DayLike, end: DayLike, account_id: str | None = None, app_id: str | None = None
    ) -> dict[str, float]:
        """Totals over the UTC days ``start`` to ``end`` (both included)."""
        with self._world.lock:
            return self._totals(self._app(account_id, app_id), self._day(start), self._day(end))

    # -- observer (the caller holds the world's lock) ---------------------------------------

    def started(self, m: Meeting, t: float, n: int) -> None:
        self._book(m.app, utc_day(self._world.real(t)), (1, 0.0, 0, 0.0))

    def changed(self, m: Meeting, change: int, t: float) -> None:
        return

    def ended(self, m: Meeting, t: float, reason: str) -> None:
        s = cast(Session, m.session)
        self._book(m.app, utc_day(s.created), (0, s.minutes, 0, 0.0))

    # -- inside (the caller holds the world's lock) -----------------------------------------

    def daily(self, app: AppKey, start: date, end: date) -> dict[date, list[float]]:
        """Each day from ``start`` to ``end`` with any usage: its four numbers."""
        days: dict[date, list[float]] = {}

        def add(d: date, values: tuple[float, ...] | list[float]) -> None:
            if start <= d <= end:
                row = days.setdefault(d, [0.0] * 4)
                for i, v in enumerate(values):
                    row[i] += v

        for d, row in self._booked.get(app, {}).items():
            add(d, row)
        now = self._world.sim_now()
        self._world.advance_due(now)
        for key in self._world.index[app].live.items() if app in self._world.index else []:
            m = self._world.meetings[key[2]]
            self._world.advance(m, now)
            s = cast(Session, m.session)
            add(utc_day(s.created), (0, s.minutes, 0, 0.0))
        self._recorder.advance(now)
        for rec in self._recorder.shelf.of_app(app):
            add(utc_day(rec.invoked), (0, 0.0, 1, rec.seconds(self._clock()) / 60))
        return days

    def today(self) -> date:
        return utc_day(self._clock())

    def _clock(self) -> float:
        return self._world.clock()

    def _totals(self, app: AppKey, start: date, end: date) -> dict[str, float]:
        rows = self.daily(app, start, end).values()
        sums = [sum(row[i] for row in rows) for i in range(4)]
        values = (round(sums[0]), round(sums[1], 3), round(sums[2]), round(sums[3], 3))
        return dict(zip(FIELDS, values, strict=True))

    def _book(self, app: AppKey, d: date, values: tuple[float, ...]) -> None:
        row = self._booked.setdefault(app, {}).setdefault(d, [0.0] * 4)
        for i, v in enumerate(values):
            row[i] += v

    def _app(self, account_id: str | None, app_id: str | None) -> AppKey:
        app = (account_id or self._main[0], app_id or self._main[1])
        if app not in self._world.apps:
            raise KeyError(f"unknown app {app[0]}/{app[1]}")
        return app

    def _day(self, day: DayLike) -> date:
        if day is None:
            return self.today()
        if isinstance(day, date):
            return day
        return parse_date(day, "day")


def parse_date(text: str, name: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} must be a date YYYY-MM-DD, got {text[:40]!r}") from None


class UsageEndpoints:
    """``GET …/analytics/daywise``."""

    def __init__(self, usage: Usage, world: World) -> None:
        self._usage, self._world = usage, world

    def daywise(self, app: AppKey, _arg: str, query: str, fault: str | None) -> Answer:
        q = query_first(query)
        try:
            end = parse_date(q["end_date"], "end_date") if q.get("end_date") else None
            start = parse_date(q["start_date"], "start_date") if q.get("start_date") else None
        except ValueError as err:
            return rtk_error(400, str(err))
        with self._world.lock:
            end = end or self._usage.today()
            start = start or end - timedelta(days=DEFAULT_DAYS - 1)
            if start > end or (end - start).days >= MAX_DAYS:
                return rtk_error(400, f"start_date must be on or before end_date, at most "
                                      f"{MAX_DAYS} days before it")  # fmt: skip
            days = sorted(self._usage.daily(app, start, end).items())
        data = _stats(days, self._usage.day_format)
        if fault == "wrong_types":
            data["session_stats"]["sessions_count"] = str(data["session_stats"]["sessions_count"])
        return ok({"success": True, "data": data})


def _stats(days: list[tuple[date, list[float]]], day_format: str) -> dict[str, Any]:
    def day(d: date) -> str:
        return d.isoformat() + ("T00:00:00.000Z" if day_format == "datetime" else "")

    sessions = [(d, r) for d, r in days if r[0] or r[1]]
    recordings = [(d, r) for d, r in days if r[2] or r[3]]
    return {
        "session_stats": {
            "sessions_count": round(sum(r[0] for _, r in days)),
            "sessions_minutes_consumed": round(sum(r[1] for _, r in days), 3),
            "day_stats": [
                {
                    "day": day(d),
                    "total_sessions": round(r[0]),
                    "total_session_minutes": round(r[1], 3),
                }
                for d, r in sessions
            ],
        },
        "recording_stats": {
            "recording_count": round(sum(r[2] for _, r in days)),
            "recording_minutes_consumed": round(sum(r[3] for _, r in days), 3),
            "day_stats": [
                {
                    "day": day(d),
                    "total_recordings": round(r[2]),
                    "total_recording_minutes": round(r[3], 3),
                }
                for d, r in recordings
            ],
        },
    }
