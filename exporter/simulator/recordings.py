"""Recordings: their lifecycle INVOKED → RECORDING → UPLOADING → UPLOADED (or ERRORED, or an
upload that never finishes), the ``recording.statusUpdate`` webhook, ``GET /recordings`` and
``GET /recordings/active-recording/{meeting_id}``.

On demand (``Simulator.recordings``): :meth:`Recorder.start` invokes one for a meeting,
:meth:`Recorder.step` moves it one state along its path, :meth:`Recorder.set_status` puts it in
any state. In auto mode a session that starts is recorded with ``recording_chance``; the
recording starts after 2-8 simulated seconds, stops (UPLOADING) when the session ends and is
UPLOADED 5-30 s later — unless it errors (``recording_error_rate``: ERRORED 5-60 s into the
recording) or its upload never finishes (``recording_stuck_rate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from exporter.simulator.answers import Answer, iso, ok, rtk_error
from exporter.simulator.events import Sink, meeting_json
from exporter.simulator.media import SECRET, Shelf, break_first, parse_time, statuses
from exporter.simulator.options import SimOptions
from exporter.simulator.sessions import BAD_PAGE, Page, query_lists
from exporter.simulator.world import AppKey, Meeting, World, seeded, uuid4

STATUSES = ("INVOKED", "RECORDING", "UPLOADING", "UPLOADED", "ERRORED", "PAUSED")
ACTIVE = frozenset({"INVOKED", "RECORDING", "PAUSED"})  # what active-recording answers
PLANS = ("uploaded", "errored", "stuck", "manual")
_NEXT = {"INVOKED": "RECORDING", "PAUSED": "RECORDING", "RECORDING": "UPLOADING"}
_BYTES_PER_SECOND = 250_000


@dataclass(slots=True, eq=False)
class Recording:
    id: str
    app: AppKey
    meeting_id: str
    session_id: str | None
    status: str
    invoked: float  # clock (epoch) times
    started: float | None = None
    stopped: float | None = None
    plan: str = "manual"  # how it goes on by itself: uploaded, errored, stuck; manual: it doesn't
    due: float = math.inf  # simulated time of its next automatic step

    @property
    def duration(self) -> int | None:
        if self.started is None or self.stopped is None:
            return None
        return max(0, round(self.stopped - self.started))

    def seconds(self, now: float) -> float:
        """Seconds recorded so far (clock time ``now``)."""
        if self.started is None:
            return 0.0
        return max(0.0, (now if self.stopped is None else self.stopped) - self.started)

    @property
    def file_size(self) -> int | None:
        return None if self.status != "UPLOADED" else (self.duration or 1) * _BYTES_PER_SECOND

    def private(self) -> dict[str, Any]:
        """The fields no exporter may show: recognisable fakes containing ``SECRET``."""
        return {
            "download_url": f"https://storage.invalid/{SECRET}-download/{self.id}.mp4",
            "audio_download_url": f"https://storage.invalid/{SECRET}-audio/{self.id}.mp3",
            "output_file_name": f"{SECRET}-file-{self.id}.mp4",
            "storage_config": {
                "type": "aws",
                "bucket": f"{SECRET}-bucket",
                "region": "us-east-1",
                "path": f"{SECRET}-path/",
                "secret": f"{SECRET}-storage-key",
            },
        }

    def json(self, m: Meeting | None) -> dict[str, Any]:
        """As ``GET /recordings`` serves it."""
        d: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "invoked_time": iso(self.invoked),
            "session_id": self.session_id,
            "started_time": None if self.started is None else iso(self.started),
            "stopped_time": None if self.stopped is None else iso(self.stopped),
            "recording_duration": self.duration,
            "file_size": self.file_size,
            "meeting": {"id": self.meeting_id, "title": None if m is None else m.name},
        }
        return d | self.private()

    def event(self) -> dict[str, Any]:
        """The ``recording`` object of a ``recording.statusUpdate`` webhook (camelCase)."""
        private = self.private()
        size = self.file_size
        return {
            "id": self.id,
            "recordingId": self.id,
            "status": self.status,
            "invokedTime": iso(self.invoked),
            "startedTime": None if self.started is None else iso(self.started),
            "stoppedTime": None if self.stopped is None else iso(self.stopped),
            "fileSize": None if size is None else str(size),
            "recordingDuration": self.duration,
            "meetingId": self.meeting_id,
            "sessionId": self.session_id,
            "outputFileName": private["output_file_name"],
            "downloadUrl": private["download_url"],
        }


class Recorder:
    """Every app's recordings; control methods take the world's lock themselves."""

    def __init__(self, world: World, options: SimOptions, sink: Sink | None) -> None:
        self._world, self._sink = world, sink
        self._chance = options.recording_chance
        self._error_rate = options.recording_error_rate
        self._stuck_rate = options.recording_stuck_rate
        self._rng = seeded(options.seed, "recordings")
        self.shelf: Shelf[Recording] = Shelf()

    # -- control ----------------------------------------------------------------------------

    def start(
        self,
        meeting_id: str,
        *,
        status: str = "INVOKED",
        plan: str = "manual",
        invoked_at: float | None = None,
    ) -> str:
        """Invoke a recording of the meeting (its current session's, if any) now or at the clock
        time ``invoked_at``, in ``status``; ``plan`` (``uploaded``, ``errored``, ``stuck``) lets
        it go on by itself as in auto mode. Returns its id."""
        _check(status, STATUSES, "status")
        _check(plan, PLANS, "plan")
        with self._world.lock:
            m, now = self._world.touch(meeting_id)
            rec = self._invoke(m, now, plan, invoked_at)
            if status != "INVOKED":
                self._move(rec, status, now)
            return rec.id

    def step(self, recording_id: str) -> str:
        """Move a recording one state along INVOKED → RECORDING → UPLOADING → UPLOADED (PAUSED
        resumes); returns its new status. A finished recording stays as it is."""
        with self._world.lock:
            rec, now = self._touch(recording_id)
            nxt = _NEXT.get(rec.status, "UPLOADED" if rec.status == "UPLOADING" else rec.status)
            if nxt != rec.status:
                self._move(rec, nxt, now)
            return rec.status

    def set_status(self, recording_id: str, status: str) -> None:
        """Put a recording in any state now (its times follow: started, stopped)."""
        _check(status, STATUSES, "status")
        with self._world.lock:
            rec, now = self._touch(recording_id)
            rec.due = math.inf
            self._move(rec, status, now)

    def get(self, recording_id: str) -> dict[str, Any]:
        """The recording as ``GET /recordings`` serves it."""
        with self._world.lock:
            rec, _ = self._touch(recording_id)
            return rec.json(self._world.meetings.get(rec.meeting_id))

    def ids(self, meeting_id: str | None = None) -> list[str]:
        """Ids of every app's recordings (or one meeting's), oldest first."""
        with self._world.lock:
            recs = sorted(self.shelf.by_id.values(), key=lambda r: (r.invoked, r.id))
            return [r.id for r in recs if meeting_id in (None, r.meeting_id)]

    # -- lifecycle (the caller holds the lock) ----------------------------------------------

    def advance(self, now: float) -> None:
        """Take every automatic step due by simulated time ``now``."""
        self._world.advance_due(now)
        for rec, t in self.shelf.due(now):
            self._auto_step(rec, t)

    def started(self, m: Meeting, t: float, n: int) -> None:
        if self._chance > 0 and self._rng.random() < self._chance:
            r = self._rng.random()
            plan = "errored" if r < self._error_rate else "uploaded"
            if plan == "uploaded" and r < self._error_rate + self._stuck_rate:
                plan = "stuck"
            self._invoke(m, t, plan, None)

    def changed(self, m: Meeting, change: int, t: float) -> None:
        return

    def ended(self, m: Meeting, t: float, reason: str) -> None:
        for rec in self.shelf.of_app(m.app):
            if rec.meeting_id == m.id and rec.plan != "manual" and rec.status in ACTIVE:
                self._move(rec, "UPLOADING", t)

    def _invoke(self, m: Meeting, t: float, plan: str, invoked_at: float | None) -> Recording:
        session = None if m.session is None or m.session.ended is not None else m.session.id
        when = self._world.real(t) if invoked_at is None else invoked_at
        rec = Recording(uuid4(self._rng), m.app, m.id, session, "INVOKED", when, plan=plan)
        self.shelf.add(rec)
        self._tell(rec)
        if plan != "manual":
            self.shelf.schedule(rec, t + self._rng.uniform(2.0, 8.0))
        return rec

    def _auto_step(self, rec: Recording, t: float) -> None:
        if rec.status == "INVOKED":
            self._move(rec, "RECORDING", t)
        elif rec.status == "RECORDING" and rec.plan == "errored":
            self._move(rec, "ERRORED", t)
        elif rec.status == "UPLOADING" and rec.plan != "stuck":
            self._move(rec, "ERRORED" if rec.plan == "errored" else "UPLOADED", t)

    def _move(self, rec: Recording, status: str, t: float) -> None:
        real = self._world.real(t)
        if status != "INVOKED" and rec.started is None:
            rec.started = real
        if status in ("UPLOADING", "UPLOADED", "ERRORED") and rec.stopped is None:
            rec.stopped = real
        rec.status = status
        if rec.plan != "manual":
            self._plan_next(rec, t)
        self._tell(rec)

    def _plan_next(self, rec: Recording, t: float) -> None:
        if rec.status == "RECORDING" and rec.plan == "errored":
            self.shelf.schedule(rec, t + self._rng.uniform(5.0, 60.0))
        elif rec.status == "UPLOADING" and rec.plan != "stuck":
            self.shelf.schedule(rec, t + self._rng.uniform(5.0, 30.0))

    def _touch(self, recording_id: str) -> tuple[Recording, float]:
        now = self._world.sim_now()
        self.advance(now)
        return self.shelf.get(recording_id), now

    def _tell(self, rec: Recording) -> None:
        if self._sink is None:
            return
        m = self._world.meetings.get(rec.meeting_id)
        if m is not None and m.session is not None and m.session.id == rec.session_id:
            meeting = meeting_json(m, m.session)
        else:
            meeting = {"id": rec.meeting_id, "title": None if m is None else m.name}
        event = {"event": "recording.statusUpdate", "meeting": meeting, "recording": rec.event()}
        self._sink.submit(rec.app, event)


def _check(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


class RecordingEndpoints:
    """``GET …/recordings`` and ``GET …/recordings/active-recording/{meeting_id}``."""

    def __init__(self, recorder: Recorder, world: World, options: SimOptions) -> None:
        self._recorder, self._world, self._options = recorder, world, options

    def listing(self, app: AppKey, _arg: str, query: str, fault: str | None) -> Answer:
        q = query_lists(query)
        first = {k: v[0] for k, v in q.items()}
        try:
            page = Page.asked(first, self._options)
        except ValueError:
            return rtk_error(400, BAD_PAGE)
        try:
            wanted = statuses(q.get("status", []), STATUSES)
            since = parse_time(first["start_time"], "start_time") if "start_time" in first else None
            until = parse_time(first["end_time"], "end_time") if "end_time" in first else None
        except ValueError as err:
            return rtk_error(400, str(err))
        descending = (first.get("sort_order") or "DESC").upper() != "ASC"
        meeting = first.get("meeting_id")
        with self._world.lock:
            self._recorder.advance(self._world.sim_now())
            recs = [
                r
                for r in self._recorder.shelf.of_app(app)
                if (not wanted or r.status in wanted)
                and (meeting is None or r.meeting_id == meeting)
                and (since is None or r.invoked >= since)
                and (until is None or r.invoked <= until)
            ]
            recs.sort(key=lambda r: (r.invoked, r.id), reverse=descending)
            chosen = recs[page.start : page.start + page.per_page]
            items = [r.json(self._world.meetings.get(r.meeting_id)) for r in chosen]
        break_first(items, fault, "invoked_time")
        paging = {
            "total_count": len(recs),
            "start_offset": page.start + 1 if items else 0,
            "end_offset": page.start + len(items) if items else 0,
        }  # required in this answer: the paging convention does not drop it
        return ok({"success": True, "data": items, "paging": paging})

    def active(self, app: AppKey, meeting_id: str, _query: str, fault: str | None) -> Answer:
        with self._world.lock:
            self._recorder.advance(self._world.sim_now())
            recs = [
                r
                for r in self._recorder.shelf.of_app(app)
                if r.meeting_id == meeting_id and r.status in ACTIVE
            ]
            latest = max(recs, key=lambda r: (r.invoked, r.id), default=None)
            data = None if latest is None else latest.json(self._world.meetings.get(meeting_id))
        if data is None:
            if self._options.no_recording == "not_found":
                return rtk_error(404, "Recording not found")
            return rtk_error(404, f"No active recording found for meeting_id {meeting_id}")
        items = [data]
        break_first(items, fault, "invoked_time")
        return ok({"success": True, "data": items[0]})
