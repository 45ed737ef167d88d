"""Livestreams: INVOKED → LIVE → IDLE (or ERRORED), the ``livestreaming.statusUpdate`` webhook,
``GET /livestreams`` and ``GET /meetings/{meeting_id}/active-livestream``.

On demand (``Simulator.livestreams``): :meth:`Streamer.start` invokes one for a meeting,
:meth:`Streamer.set_status` puts it in any state. In auto mode a session that starts is
livestreamed with ``livestream_chance``: LIVE 2-6 simulated seconds later, IDLE when the session
ends, or ERRORED 10-60 s into the stream (``livestream_error_rate``).

The webhook's ``status`` is RealtimeKit's: ``LIVE``, ``OFFLINE`` for IDLE, and ``ERRORED`` (not in
the published list, which has no word for it); nothing is sent for INVOKED. The listing's shape
is the ``livestream_shape`` option: ``list`` (``data`` a list, ``paging`` beside it, under the
``paging`` convention) or ``object`` (the published type: ``data`` one livestream with ``paging``
inside it, so one livestream per page).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from exporter.simulator.answers import Answer, iso, ok, rtk_error
from exporter.simulator.events import Sink, meeting_json
from exporter.simulator.media import SECRET, Shelf, break_first, statuses
from exporter.simulator.options import SimOptions
from exporter.simulator.sessions import BAD_PAGE, Page, query_lists
from exporter.simulator.world import AppKey, Meeting, World, seeded, uuid4

STATUSES = ("LIVE", "IDLE", "ERRORED", "INVOKED")
ACTIVE = frozenset({"INVOKED", "LIVE"})
PLANS = ("manual", "live", "errored")
_WEBHOOK_STATUS = {"LIVE": "LIVE", "IDLE": "OFFLINE", "ERRORED": "ERRORED"}


@dataclass(slots=True, eq=False)
class Livestream:
    id: str
    app: AppKey
    meeting_id: str
    name: str
    status: str
    created: float  # clock (epoch) times
    updated: float
    plan: str = "manual"
    due: float = math.inf

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "meeting_id": self.meeting_id,
            "status": self.status,
            "created_at": iso(self.created),
            "updated_at": iso(self.updated),
            "disabled": False,
            # secrets, recognisable fakes containing SECRET
            "stream_key": f"{SECRET}-stream-key-{self.id}",
            "ingest_server": f"rtmps://{SECRET}-ingest.invalid:443/live",
            "playback_url": f"https://{SECRET}-playback.invalid/{self.id}/index.m3u8",
        }


class Streamer:
    """Every app's livestreams; control methods take the world's lock themselves."""

    def __init__(self, world: World, options: SimOptions, sink: Sink | None) -> None:
        self._world, self._sink = world, sink
        self._chance, self._error_rate = options.livestream_chance, options.livestream_error_rate
        self._rng = seeded(options.seed, "livestreams")
        self.shelf: Shelf[Livestream] = Shelf()

    def start(self, meeting_id: str, *, status: str = "INVOKED", plan: str = "manual") -> str:
        """Invoke a livestream of the meeting in ``status``; ``plan`` (``live``, ``errored``)
        lets it go on by itself as in auto mode. Returns its id."""
        _check(status, STATUSES, "status")
        _check(plan, PLANS, "plan")
        with self._world.lock:
            m, now = self._world.touch(meeting_id)
            stream = self._invoke(m, now, plan)
            if status != "INVOKED":
                self._move(stream, status, now)
            return stream.id

    def set_status(self, stream_id: str, status: str) -> None:
        """Put a livestream in any state now."""
        _check(status, STATUSES, "status")
        with self._world.lock:
            stream, now = self._touch(stream_id)
            stream.due = math.inf
            self._move(stream, status, now)

    def get(self, stream_id: str) -> dict[str, Any]:
        with self._world.lock:
            return self._touch(stream_id)[0].json()

    def ids(self, meeting_id: str | None = None) -> list[str]:
        """Ids of every app's livestreams (or one meeting's), oldest first."""
        with self._world.lock:
            streams = sorted(self.shelf.by_id.values(), key=lambda s: (s.created, s.id))
            return [s.id for s in streams if meeting_id in (None, s.meeting_id)]

    # -- lifecycle (the caller holds the lock) ----------------------------------------------

    def advance(self, now: float) -> None:
        self._world.advance_due(now)
        for stream, t in self.shelf.due(now):
            if stream.status == "INVOKED":
                self._move(stream, "LIVE", t)
            elif stream.status == "LIVE" and stream.plan == "errored":
                self._move(stream, "ERRORED", t)

    def started(self, m: Meeting, t: float, n: int) -> None:
        if self._chance > 0 and self._rng.random() < self._chance:
            plan = "errored" if self._rng.random() < self._error_rate else "live"
            self._invoke(m, t, plan)

    def changed(self, m: Meeting, change: int, t: float) -> None:
        return

    def ended(self, m: Meeting, t: float, reason: str) -> None:
        for stream in self.shelf.of_app(m.app):
            if stream.meeting_id == m.id and stream.plan != "manual" and stream.status in ACTIVE:
                stream.due = math.inf
                self._move(stream, "IDLE", t)

    def _invoke(self, m: Meeting, t: float, plan: str) -> Livestream:
        real = self._world.real(t)
        stream = Livestream(
            uuid4(self._rng), m.app, m.id, f"{m.name} (live)", "INVOKED", real, real, plan
        )
        self.shelf.add(stream)
        if plan != "manual":
            self.shelf.schedule(stream, t + self._rng.uniform(2.0, 6.0))
        return stream

    def _move(self, stream: Livestream, status: str, t: float) -> None:
        stream.status, stream.updated = status, self._world.real(t)
        if status == "LIVE" and stream.plan == "errored":
            self.shelf.schedule(stream, t + self._rng.uniform(10.0, 60.0))
        self._tell(stream)

    def _touch(self, stream_id: str) -> tuple[Livestream, float]:
        now = self._world.sim_now()
        self.advance(now)
        return self.shelf.get(stream_id), now

    def _tell(self, stream: Livestream) -> None:
        status = _WEBHOOK_STATUS.get(stream.status)
        if self._sink is None or status is None:
            return
        m = self._world.meetings.get(stream.meeting_id)
        if m is not None and m.session is not None:
            meeting = meeting_json(m, m.session)
        else:
            meeting = {"id": stream.meeting_id}
        event = {
            "event": "livestreaming.statusUpdate",
            "meeting": meeting,
            "streamId": stream.id,
            "status": status,
        }
        self._sink.submit(stream.app, event)


def _check(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


class LivestreamEndpoints:
    """``GET …/livestreams`` and ``GET …/meetings/{meeting_id}/active-livestream``."""

    def __init__(self, streamer: Streamer, world: World, options: SimOptions) -> None:
        self._streamer, self._world, self._options = streamer, world, options

    def listing(self, app: AppKey, _arg: str, query: str, fault: str | None) -> Answer:
        q = query_lists(query)
        first = {k: v[0] for k, v in q.items()}
        as_object = self._options.livestream_shape == "object"
        try:
            page = Page.asked(first, self._options)
        except ValueError:
            return rtk_error(400, BAD_PAGE)
        if as_object:  # one livestream per page: data holds one
            page = Page(page.page_no, 1, max(0, page.page_no - self._options.page_base))
        try:
            wanted = statuses(q.get("status", []), STATUSES)
        except ValueError as err:
            return rtk_error(400, str(err))
        with self._world.lock:
            self._streamer.advance(self._world.sim_now())
            found = [
                s for s in self._streamer.shelf.of_app(app) if not wanted or s.status in wanted
            ]
            items = [s.json() for s in found[page.start : page.start + page.per_page]]
        break_first(items, fault, "created_at")
        paging = page.paging(len(found), len(items), self._options)
        if as_object:
            data: dict[str, Any] = items[0] if items else {}
            if paging is not None:
                data = data | {"paging": paging}
            return ok({"success": True, "data": data})
        payload: dict[str, Any] = {"success": True, "data": items}
        if paging is not None:
            payload["paging"] = paging
        return ok(payload)

    def active(self, app: AppKey, meeting_id: str, _query: str, fault: str | None) -> Answer:
        with self._world.lock:
            self._streamer.advance(self._world.sim_now())
            streams = [
                s
                for s in self._streamer.shelf.of_app(app)
                if s.meeting_id == meeting_id and s.status in ACTIVE
            ]
            latest = max(streams, key=lambda s: (s.created, s.id), default=None)
            items = [] if latest is None else [latest.json()]
        if not items:
            return rtk_error(404, f"No active livestream found for meeting_id {meeting_id}")
        break_first(items, fault, "created_at")
        return ok({"success": True, "data": items[0]})
